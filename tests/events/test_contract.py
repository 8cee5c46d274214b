"""One contract for every event-log backend: the embedded Parquet log and Redis Streams."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from recstack.events import EventLog, IdempotentConsumer, ParquetEventLog, RedisStreamLog

Reopen = Callable[[], EventLog]


@pytest.fixture(params=["parquet", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Iterator[tuple[EventLog, Reopen]]:
    """(log, reopen): reopen makes a new log object over the same storage, as a restart would."""
    if request.param == "parquet":

        def reopen() -> EventLog:
            return ParquetEventLog(tmp_path / "log")
    else:
        url = request.getfixturevalue("redis_url")

        def reopen() -> EventLog:
            return RedisStreamLog(url, stream=f"recstack-test:{unique}")

    log = reopen()
    yield log, reopen
    if isinstance(log, RedisStreamLog):
        log.drop()
    log.close()


def ev(i: int, kind: str = "impression", day: int = 23, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_id": f"e{i}",
        "kind": kind,
        "timestamp": f"2026-11-{day:02d}T10:00:{i % 60:02d}Z",
        "user_id": f"u{i % 3}",
        "item_id": f"i{i}",
    }
    if kind == "impression":
        base |= {"request_id": f"r{i // 5}", "position": i % 5}
    return base | extra


def test_append_and_replay_in_order(backend: tuple[EventLog, Reopen]) -> None:
    log, _ = backend
    result = log.append([ev(i) for i in range(10)])
    assert (result.accepted, result.duplicates, result.rejected) == (10, 0, [])
    assert log.count() == 10
    assert [e.event_id for e in log.replay()] == [f"e{i}" for i in range(10)]


def test_bad_event_rejected_with_index_and_good_ones_kept(backend: tuple[EventLog, Reopen]) -> None:
    log, _ = backend
    batch = [ev(0), ev(1, position=-2), ev(2), {"kind": "click"}, "junk", ev(5, timestamp="2026-11-23 10:00")]
    result = log.append(batch)
    assert result.accepted == 2
    assert [r.index for r in result.rejected] == [1, 3, 4, 5]
    assert "position" in result.rejected[0].error and "-2" in result.rejected[0].error
    assert "timezone" in result.rejected[3].error
    assert [e.event_id for e in log.replay()] == ["e0", "e2"]


def test_idempotent_by_event_id(backend: tuple[EventLog, Reopen]) -> None:
    log, reopen = backend
    log.append([ev(i) for i in range(5)])
    again = log.append([ev(3), ev(4), ev(5), ev(5)])
    assert (again.accepted, again.duplicates) == (1, 3)
    # a restarted writer still knows the ids already in the log
    restarted = reopen()
    assert restarted.append([ev(0), ev(6)]).accepted == 1
    assert restarted.count() == 7


def test_replay_selects_time_range_and_kinds(backend: tuple[EventLog, Reopen]) -> None:
    log, _ = backend
    log.append([ev(0, day=21), ev(1, day=22), ev(2, "click", day=22), ev(3, day=23)])
    start, end = datetime(2026, 11, 22, tzinfo=UTC), datetime(2026, 11, 23, tzinfo=UTC)
    assert [e.event_id for e in log.replay(start, end)] == ["e1", "e2"]
    assert [e.event_id for e in log.replay(kinds=["click"])] == ["e2"]
    table = log.table(start=start)
    assert table.column("event_id").to_pylist() == ["e1", "e2", "e3"]


def test_empty_log(backend: tuple[EventLog, Reopen]) -> None:
    log, _ = backend
    assert log.count() == 0
    assert list(log.replay()) == []
    assert log.table().num_rows == 0
    assert log.consume("g", "c") == []
    assert log.append([]).accepted == 0


def test_consumer_group_delivers_each_event_once_when_acked(backend: tuple[EventLog, Reopen]) -> None:
    log, _ = backend
    log.append([ev(i) for i in range(7)])
    seen: list[str] = []
    while deliveries := log.consume("workers", "c1", count=3):
        ids = [d.event_id for d in deliveries]  # known before (and without) parsing the event
        seen += [d.event.event_id for d in deliveries]
        assert seen[-len(ids) :] == ids
        assert log.ack("workers", [d.delivery_id for d in deliveries]) == len(deliveries)
    assert seen == [f"e{i}" for i in range(7)]
    log.append([ev(7)])
    assert [d.event.event_id for d in log.consume("workers", "c1")] == ["e7"]
    # another group reads the whole log independently
    assert len(log.consume("audit", "a1", count=100)) == 8


def test_unacked_events_are_redelivered_after_restart(backend: tuple[EventLog, Reopen]) -> None:
    log, reopen = backend
    log.append([ev(i) for i in range(6)])
    first = log.consume("g", "c1", count=4)
    log.ack("g", [d.delivery_id for d in first[:2]])  # crash before acking e2, e3
    restarted = reopen()
    ids = [d.event.event_id for d in restarted.consume("g", "c1", count=10)]
    ids += [d.event.event_id for d in restarted.consume("g", "c1", count=10)]
    assert "e0" not in ids and "e1" not in ids
    assert {"e2", "e3", "e4", "e5"} <= set(ids)


def test_idempotent_consumer_counts_each_event_once_across_a_crash(backend: tuple[EventLog, Reopen]) -> None:
    log, reopen = backend
    log.append([ev(i, "click") for i in range(20)])
    counts: dict[str, int] = {}
    processed: set[str] = set()  # the consumer's persistent record of applied ids

    def handle(event: Any) -> None:
        counts[event.item_id] = counts.get(event.item_id, 0) + 1

    # The first worker applies 8 events, then dies before acknowledging them.
    deliveries = log.consume("counter", "w", count=8)
    for d in deliveries:
        handle(d.event)
        processed.add(d.event.event_id)
    worker = IdempotentConsumer(reopen(), "counter", "w", handle, seen=processed)
    worker.drain(count=5)
    assert counts == {f"i{i}": 1 for i in range(20)}
    assert worker.skipped == 8


def test_tables_are_validated_like_single_events_and_round_trip(backend: tuple[EventLog, Reopen]) -> None:
    """The bulk path (Arrow tables, the served impressions' way in) rejects exactly the rows that
    parse_event would, with their indices, and what it keeps replays as the same events."""
    import pyarrow as pa

    from recstack.schema import events_to_table, parse_event

    log, _ = backend
    good = [
        ev(0, model_versions={"feed": "3"}, context={"device": "ios"}, features={"age_h": 1.5}),
        ev(1, "click", request_id="r0", surface="feed"),
        ev(2, "dwell", dwell_seconds=12.5),
        {
            "event_id": "e3",
            "kind": "item",
            "timestamp": 1_795_000_000,
            "item_id": "i3",
            "attributes": {"topic": "t1", "tags": ["a", "b"], "n": 2},
            "creator_id": "c1",
            "created_at": "2026-11-01T00:00:00Z",
            "text": 'a "quoted" \u00e9 title',
        },
        {"event_id": "e4", "kind": "user", "timestamp": "2026-11-23T10:00:04Z", "user_id": "u4"},
        {"event_id": "e5", "kind": "query", "timestamp": "2026-11-23T10:00:05Z", "query": "cats"},
    ]
    table = events_to_table([parse_event(e) for e in good])
    rows = table.to_pylist()
    impression, dwell = rows[0], rows[2]
    refused = [  # (the column its rejection names, a row the event models refuse)
        ("user_id", impression | {"user_id": "u" * 257}),
        ("position", impression | {"position": 100_001}),
        ("dwell_seconds", impression | {"dwell_seconds": 3.0}),  # not a field of impressions
        ("features", impression | {"features": '{"age_h": "old"}'}),  # not a number
        ("context", impression | {"context": '{"device": "ios"}, "event_id": "injected"'}),  # not one object
        ("model_versions", impression | {"model_versions": "[1, 2]"}),  # not an object
        ("dwell_seconds", dwell | {"dwell_seconds": float("nan")}),
    ]
    bad = [row | {"event_id": f"bad{n}"} for n, (_, row) in enumerate(refused)]
    result = log.append_table(pa.Table.from_pylist(rows + bad, schema=table.schema))
    assert result.accepted == len(good)
    assert [r.index for r in result.rejected] == list(range(len(good), len(good) + len(bad)))
    for rejected, (column, _) in zip(result.rejected, refused, strict=True):
        assert f"'{column}'" in rejected.error
    replayed = sorted(log.replay(), key=lambda e: e.event_id)  # the Parquet log replays by time
    assert replayed == [parse_event(e) for e in good]


def test_times_outside_the_window_are_rejected_by_row_and_table(backend: tuple[EventLog, Reopen]) -> None:
    """Before 1970 or more than a day past the clock (the defaults): a clear rejection naming the
    field, on both paths; one hour ahead (a client's clock running fast) is accepted."""
    import pyarrow as pa

    from recstack.schema import conform_table

    log, _ = backend
    soon = datetime.now(UTC).timestamp() + 3_600
    events = [
        ev(1, timestamp="9999-12-31T00:00:00Z"),
        ev(2, timestamp="1969-12-31T23:59:59Z"),
        {
            "event_id": "it",
            "kind": "item",
            "timestamp": soon,
            "item_id": "x",
            "created_at": "9999-12-31T00:00:00Z",
        },
        ev(3, timestamp=soon),
    ]
    result = log.append(events)
    assert result.accepted == 1 and [r.index for r in result.rejected] == [0, 1, 2]
    assert "'timestamp'" in result.rejected[0].error and "max_ahead_s" in result.rejected[0].error
    assert "'created_at'" in result.rejected[2].error
    rows = {
        "event_id": ["t1", "t2", "t3"],
        "kind": ["click"] * 3,
        "timestamp": [
            datetime(9999, 12, 31, tzinfo=UTC),
            datetime(1960, 1, 1, tzinfo=UTC),
            datetime.now(UTC),
        ],
        "user_id": ["u"] * 3,
        "item_id": ["i"] * 3,
    }
    bulk = log.append_table(conform_table(pa.table(rows)))
    assert bulk.accepted == 1 and [r.index for r in bulk.rejected] == [0, 1]
    assert "'timestamp'" in bulk.rejected[0].error
    assert log.count() == 2
