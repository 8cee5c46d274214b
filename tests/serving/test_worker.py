from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recstack.errors import CheckpointError
from recstack.events.parquet import ParquetEventLog
from recstack.features.stores import MemoryStore, RedisStore, SQLiteStore
from recstack.serving.state import FeedState
from recstack.serving.worker import STATE_KEY, FeedWorker, Position, load_state, sync_state


def _events(n_items: int, clicks: int) -> list[dict[str, object]]:
    items = [
        {"event_id": f"it{i}", "kind": "item", "timestamp": 1_000, "item_id": f"i{i}", "creator_id": "c"}
        for i in range(n_items)
    ]
    engagements = [
        {
            "event_id": f"c{n}",
            "kind": "click",
            "timestamp": 2_000 + n,
            "user_id": f"u{n % 7}",
            "item_id": f"i{n % n_items}",
        }
        for n in range(clicks)
    ]
    return items + engagements


def test_worker_killed_mid_stream_loses_nothing_and_counts_nothing_twice(tmp_path: Path) -> None:
    log = ParquetEventLog(tmp_path / "events")
    events = _events(20, 2_000)
    for start in range(0, len(events), 250):  # several files, so the kill falls between deliveries
        log.append(events[start : start + 250])
    store = SQLiteStore(tmp_path / "state.sqlite")
    worker = FeedWorker(log, FeedState(), store, snapshot_s=0.0)
    for _ in range(3):  # each poll snapshots, then acknowledges
        worker.poll(count=300)
    # the kill: a worker applies a batch in memory and dies before its snapshot and ack
    dying = FeedWorker(
        ParquetEventLog(tmp_path / "events"), load_state(store) or FeedState(), store, snapshot_s=3600
    )
    dying.poll(count=300)
    assert dying.pending  # applied in memory, not acknowledged
    del dying
    # restart from the store and the log as they are on disk
    restarted = FeedWorker(
        ParquetEventLog(tmp_path / "events"), load_state(store) or FeedState(), store, snapshot_s=0.0
    )
    restarted.drain()
    state = restarted.state
    expected = FeedState()
    expected.apply(ParquetEventLog(tmp_path / "events").replay())
    assert state.n_items == 20
    assert state.clicks.values.tolist() == expected.clicks.values.tolist()
    assert state.clicks.values.sum() == 2_000
    assert {u: list(s.history) for u, s in state.users.items()} == {
        u: list(s.history) for u, s in expected.users.items()
    }


def test_redelivered_events_are_applied_once() -> None:
    from recstack.schema import parse_event

    events = [parse_event(e) for e in _events(3, 10)]
    state = FeedState()
    assert state.apply(events) == 13
    assert state.apply(events) == 0
    assert state.clicks.values.sum() == 10


def test_snapshot_round_trip_and_corrupt_snapshot(tmp_path: Path) -> None:
    from recstack.schema import parse_event

    state = FeedState()
    state.apply(parse_event(e) for e in _events(5, 40))
    copy = FeedState.from_bytes(state.to_bytes(), state.catalog_bytes())
    assert copy.item_ids == state.item_ids and copy.applied == state.applied
    assert copy.trending.scores.tolist() == state.trending.scores.tolist()
    assert copy.clicks.values.tolist() == state.clicks.values.tolist()
    assert {u: list(s.history) for u, s in copy.users.items()} == {
        u: list(s.history) for u, s in state.users.items()
    }
    with pytest.raises(CheckpointError, match="corrupt"):
        FeedState.from_bytes(b"not a snapshot")
    with pytest.raises(CheckpointError, match="no catalog"):
        FeedState.from_bytes(state.to_bytes())
    stale = state.catalog_bytes()
    state.apply([parse_event({"event_id": "late", "kind": "item", "timestamp": 5, "item_id": "new"})])
    with pytest.raises(CheckpointError, match="does not match"):
        FeedState.from_bytes(state.to_bytes(), stale)


@pytest.mark.services
def test_worker_snapshots_to_redis(redis_url: str, unique: str, tmp_path: Path) -> None:
    log = ParquetEventLog(tmp_path / "events")
    log.append(_events(4, 30))
    store = RedisStore(redis_url, prefix=f"test:{unique}:")
    try:
        worker = FeedWorker(log, FeedState(), store)
        worker.drain()
        loaded = sync_state(store)
        assert loaded is not None and loaded[0].clicks.values.sum() == 30
        log.append(_events(4, 40)[4 + 30 :])  # ten more clicks: a delta
        worker.drain()
        assert worker.deltas == 1
        followed = sync_state(store, *loaded)
        assert followed is not None and followed[0] is loaded[0] and followed[1].deltas == 1
        assert loaded[0].clicks.values.sum() == 40
        restored = load_state(store)
        assert restored is not None and restored.clicks.values.sum() == 40
    finally:
        store.drop()


def test_served_impressions_count_once_across_a_crash_between_snapshot_and_ack(tmp_path: Path) -> None:
    log = ParquetEventLog(tmp_path / "events")
    log.append(_events(5, 0))
    store = SQLiteStore(tmp_path / "state.sqlite")
    worker = FeedWorker(log, FeedState(), store, snapshot_s=0.0)
    worker.drain()
    state = worker.state
    # the API serves items 0-2 (applied at once) and logs their impressions
    state.record_served("u1", [0, 1, 2], "req1", 10**15)
    log.append(
        [
            {
                "event_id": f"req1:{pos}",
                "kind": "impression",
                "timestamp": 3_000,
                "user_id": "u1",
                "item_id": f"i{pos}",
                "request_id": "req1",
                "position": pos,
            }
            for pos in range(3)
        ]
    )

    def crash(group: str, delivery_ids: list[str]) -> int:
        raise RuntimeError("killed between the snapshot and the acknowledgement")

    worker.log.ack = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        worker.poll()  # reads the impressions (skipped: already applied), snapshots, dies
    assert state.impressions.values[:3].tolist() == [1, 1, 1]
    restarted = FeedWorker(ParquetEventLog(tmp_path / "events"), load_state(store) or FeedState(), store)
    restarted.drain()  # the same impressions again: still known as served, skipped again
    assert restarted.state.impressions.values[:5].tolist() == [1, 1, 1, 0, 0]
    assert restarted.state.served == {}  # acknowledged now: forgotten


def _lists(users: dict[str, tuple[list[int], list[int], list[int]]]) -> dict[str, object]:
    """Snapshot-shaped lists (users in order, each list flat with offsets)."""
    import numpy as np

    out: dict[str, object] = {"users": list(users)}
    for k, name in enumerate(("history", "seen", "blocked")):
        per_user = [lists[k] for lists in users.values()]
        out[f"{name}_offsets"] = np.concatenate([[0], np.cumsum([len(x) for x in per_user])]).astype(np.int64)
        out[f"{name}_items"] = np.array([i for x in per_user for i in x], dtype=np.int64)
    return out


def test_changed_users_are_found_exactly() -> None:
    """Against a brute-force comparison on random edits: one item changed, grown, shrunk, emptied,
    users appended; a reordered user list makes every user changed."""
    import random

    from recstack.serving.state import _changed_users

    rng = random.Random(0)
    for _ in range(200):
        old = {
            f"u{n}": tuple([rng.randrange(50) for _ in range(rng.randrange(4))] for _ in range(3))
            for n in range(rng.randrange(8))
        }
        new = {u: tuple(list(x) for x in lists) for u, lists in old.items()}
        for user in list(new):
            if rng.random() < 0.3:
                which, edit = rng.randrange(3), rng.randrange(4)
                values = new[user][which]
                if edit == 0 and values:
                    values[rng.randrange(len(values))] += 1
                elif edit == 1:
                    values.append(rng.randrange(50))
                elif edit == 2 and values:
                    values.pop()
                else:
                    values.clear()
        for n in range(rng.randrange(3)):
            new[f"v{n}"] = ([1], [], [2])
        expected = [old.get(u) != lists for u, lists in new.items()]
        assert _changed_users(_lists(old), _lists(new)).tolist() == expected  # type: ignore[arg-type]
    reordered = {"b": ([1], [], []), "a": ([2], [], [])}
    assert _changed_users(_lists({"a": ([2], [], []), "b": ([1], [], [])}), _lists(reordered)).tolist() == [  # type: ignore[arg-type]
        True,
        True,
    ]


def test_a_snapshot_load_takes_over_unchanged_users_and_rebuilds_the_rest() -> None:
    from recstack.schema import parse_event

    worker = FeedState()
    worker.apply(parse_event(e) for e in _events(5, 40))
    api = FeedState.from_bytes(worker.to_bytes(), worker.catalog_bytes())
    before = dict(api.users)
    moved = next(iter(worker.users))
    worker.apply(  # one user hides an item
        [
            parse_event(
                {"event_id": "h", "kind": "hide", "timestamp": 2_000, "user_id": moved, "item_id": "i4"}
            )
        ]
    )
    fresh = FeedState.from_bytes(worker.to_bytes(), None, api)
    full = FeedState.from_bytes(worker.to_bytes(), worker.catalog_bytes())
    assert len(worker.users) > 1
    for user, state in fresh.users.items():
        assert (state is before[user]) == (user != moved)  # taken over unless changed
        expected = full.users[user]
        assert (list(state.history), list(state.seen), state.blocked) == (
            list(expected.history),
            list(expected.seen),
            expected.blocked,
        )


def _state_of(worker: FeedWorker) -> FeedState:
    whole = worker.state.snapshot()
    return FeedState.from_bytes(whole.state, whole.catalog)


def _same(a: FeedState, b: FeedState) -> bool:
    return (
        a.clicks.values.tolist() == b.clicks.values.tolist()
        and a.impressions.values.tolist() == b.impressions.values.tolist()
        and {u: list(s.history) for u, s in a.users.items()}
        == {u: list(s.history) for u, s in b.users.items()}
        and bool(np.allclose(a.trending.scores, b.trending.scores, rtol=1e-12))
    )


def test_worker_writes_deltas_between_whole_snapshots_and_a_follower_applies_them(tmp_path: Path) -> None:
    log = ParquetEventLog(tmp_path / "events")
    events = _events(10, 400)
    log.append(events[:110])
    store = MemoryStore()
    worker = FeedWorker(log, FeedState(), store, snapshot_s=0.0, full_s=3600)
    worker.poll()  # a new worker's first snapshot is whole, with the catalog
    loaded = sync_state(store)
    assert loaded is not None and worker.deltas == 0
    follower, at = loaded
    assert at.chain == worker.chain and _same(follower, _state_of(worker))
    for n, start in enumerate(range(110, 410, 100), start=1):
        log.append(events[start : start + 100])
        worker.poll()
        assert worker.deltas == n
        moved = sync_state(store, follower, at)
        assert moved is not None and moved[0] is follower  # applied in place
        at = moved[1]
        assert at.deltas == n and _same(follower, _state_of(worker))
        assert sync_state(store, follower, at) is None  # nothing newer
    # a restart reads the whole snapshot and every delta
    restored = load_state(store)
    assert restored is not None and _same(restored, _state_of(worker))
    assert restored.clicks.values.sum() == 400
    # the next whole snapshot starts a new chain; its bridge takes the follower across in place
    first = at.chain
    lagging = FeedState.from_bytes(*_whole_and_catalog(store))  # at the first chain's start
    lagging_at = Position(first, 0, lagging.version)
    worker.full_s = 0.0
    log.append(_events(10, 420)[410:])
    worker.poll()
    assert worker.deltas == 0 and worker.chain != first
    moved = sync_state(store, follower, at)
    assert (
        moved is not None
        and moved[0] is follower
        and moved[1] == Position(worker.chain, 0, worker.written_version)
    )
    assert follower.clicks.values.sum() == 420 and _same(follower, _state_of(worker))
    # a follower further behind applies the first chain's remaining deltas, then the bridge
    behind = sync_state(store, lagging, lagging_at)
    assert behind is not None and behind[0] is lagging and _same(lagging, _state_of(worker))
    # the chain after that: no bridge from the first chain any more, and its deltas are deleted
    log.append(_events(10, 430)[420:])
    worker.poll()
    assert store.get_many([f"{STATE_KEY}:delta:{first}:1"]) == [None]
    assert sync_state(store, follower, moved[1]) is not None
    assert follower.clicks.values.sum() == 430


def _whole_and_catalog(store: MemoryStore) -> tuple[bytes, bytes]:
    whole, catalog = store.get_many([STATE_KEY, STATE_KEY + ":catalog"])
    assert whole is not None and catalog is not None
    return whole, catalog


def _whole_then_delta(
    tmp_path: Path, events: list[dict[str, object]], first: int, second: int
) -> tuple[ParquetEventLog, MemoryStore, FeedWorker, tuple[FeedState, Position]]:
    """A worker that wrote a whole snapshot of ``events[:first]`` and a delta of the events up to
    ``second``, and a follower that read the whole one."""
    log = ParquetEventLog(tmp_path / "events")
    log.append(events[:first])
    store = MemoryStore()
    worker = FeedWorker(log, FeedState(), store, snapshot_s=0.0, full_s=3600)
    worker.poll()
    loaded = sync_state(store)
    assert loaded is not None
    log.append(events[first:second])
    worker.poll()
    assert worker.deltas == 1
    return log, store, worker, loaded


def test_a_missing_delta_falls_back_to_the_whole_snapshot_and_a_failed_write_to_a_whole_one(
    tmp_path: Path,
) -> None:
    events = _events(5, 100)
    log, store, worker, loaded = _whole_then_delta(tmp_path, events, 55, 80)
    store.delete_many([f"{STATE_KEY}:delta:{worker.chain}:1"])
    moved = sync_state(store, *loaded)
    assert moved is not None and moved[1].deltas == 0  # the whole snapshot, its deltas missing
    assert moved[0].clicks.values.sum() == 50
    # a write that fails loses the changes it captured: the next snapshot is whole again
    put = store.put_many
    calls = {"n": 0}

    def failing(items: object) -> None:
        calls["n"] += 1
        raise ConnectionError("store down")

    store.put_many = failing  # type: ignore[method-assign]
    log.append(events[80:])
    with pytest.raises(ConnectionError):
        worker.poll()
    assert calls["n"] == 1 and worker.lost
    chain = worker.chain
    store.put_many = put  # type: ignore[method-assign]
    worker.checkpoint()
    assert worker.deltas == 0 and worker.chain != chain and not worker.lost
    (bridge,) = store.get_many([f"{STATE_KEY}:bridge"])
    assert bridge is None  # no bridge over the lost changes
    restored = load_state(store)
    assert restored is not None and restored.clicks.values.sum() == 100


def test_a_damaged_delta_is_a_clear_error_and_the_next_whole_snapshot_recovers(tmp_path: Path) -> None:
    events = _events(5, 60)
    log, store, worker, (follower, at) = _whole_then_delta(tmp_path, events, 25, 45)
    (delta,) = store.get_many([f"{STATE_KEY}:delta:{worker.chain}:1"])
    assert delta is not None
    store.put_many({f"{STATE_KEY}:delta:{worker.chain}:1": delta[:-40]})  # damaged in the store
    with pytest.raises(CheckpointError, match="corrupt"):
        sync_state(store, follower, at)
    assert follower.clicks.values.sum() == 20  # unchanged: what it served from stays
    worker.full_s = 0.0  # the worker's next snapshot is whole
    log.append(events[45:])
    worker.poll()
    moved = sync_state(store, follower, at)
    assert moved is not None and moved[0].clicks.values.sum() == 60


def test_a_snapshot_of_other_features_is_rebuilt_from_the_log(tmp_path: Path) -> None:
    from recstack.config import load_settings
    from recstack.serving.api import Runtime

    log = ParquetEventLog(tmp_path / "events")
    log.append(_events(5, 12))
    store = SQLiteStore(tmp_path / "state.sqlite")
    settings = load_settings(None, {"RECSTACK_PATHS__STATE_DIR": str(tmp_path / "s")})
    old = FeedState(features=settings.features[:4])  # a worker that kept fewer features
    FeedWorker(log, old, store).drain()
    assert load_state(store) is not None
    runtime = Runtime(settings, log, store=store, bundle_source=lambda: None)
    assert runtime.worker is not None
    assert runtime.state.version == 0  # not resumed
    runtime.worker.drain()  # a new group: the whole log again
    state = runtime.state
    assert state.features.definitions == [f.model_dump(mode="json") for f in settings.features]
    assert state.n_items == old.n_items and set(state.users) == set(old.users)
    assert state.clicks.values.sum() == old.clicks.values.sum() == 12
    runtime.close()


def test_online_backend_picks_where_the_state_lives(tmp_path: Path) -> None:
    from recstack.config import load_settings
    from recstack.serving.worker import state_store

    def store(**env: str) -> object:
        base = {"RECSTACK_PATHS__STATE_DIR": str(tmp_path)}
        return state_store(load_settings(None, base | {f"RECSTACK_{k.upper()}": v for k, v in env.items()}))

    assert isinstance(store(), SQLiteStore)  # auto, embedded
    assert isinstance(store(event_log__backend="redis"), RedisStore)  # auto with the Redis bus
    assert isinstance(store(online__backend="memory"), MemoryStore)
    assert isinstance(store(online__backend="redis"), RedisStore)
    sqlite = store(online__backend="sqlite", online__sqlite_path=str(tmp_path / "mine.sqlite"))
    assert isinstance(sqlite, SQLiteStore) and (tmp_path / "mine.sqlite").exists()


def test_a_restarted_worker_goes_on_with_the_stored_chain(tmp_path: Path) -> None:
    """A worker started from the store's last snapshot writes deltas on that chain (no whole copy
    of the state at its first checkpoint), and a follower and a restart see every event."""
    log = ParquetEventLog(tmp_path / "events")
    events = _events(10, 300)
    log.append(events[:110])
    store = MemoryStore()
    first = FeedWorker(log, FeedState(), store, snapshot_s=0.0, full_s=3600)
    first.poll()
    log.append(events[110:200])
    first.poll()
    assert first.deltas == 1
    follower, at = sync_state(store) or (None, None)
    assert follower is not None and at is not None
    loaded = sync_state(store)
    assert loaded is not None
    second = FeedWorker(log, loaded[0], store, snapshot_s=0.0, full_s=3600, resume=loaded[1])
    log.append(events[200:])
    second.poll()
    assert second.chain == first.chain and second.deltas == 2
    moved = sync_state(store, follower, at)
    assert moved is not None and moved[0] is follower and follower.clicks.values.sum() == 300
    restored = load_state(store)
    assert restored is not None and _same(restored, _state_of(second))
    # a state that is not the store's last snapshot starts a new chain with a whole one
    stale = FeedWorker(log, FeedState(), store, snapshot_s=0.0, full_s=3600, resume=at)
    assert stale.chain is None


def test_a_poison_event_goes_to_the_dead_letters_and_the_rest_of_its_batch_is_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three poisons in the middle of one batch: a row no writer validated (unreadable), a click
    timed in 9999 (accepted by a log with a wide window, refused by the worker's), and an event
    whose application raises. Each is a dead letter with its reason, written with the snapshot that
    acknowledges it and listed by ``recstack events dead-letters``; every other event is applied."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from recstack.cli import app
    from recstack.config import load_settings
    from recstack.schema import TimeWindow, conform_table
    from recstack.serving.worker import dead_letters, state_store

    settings = load_settings(None, {"RECSTACK_PATHS__STATE_DIR": str(tmp_path / "state")})
    log = ParquetEventLog(tmp_path / "events", window=TimeWindow(ahead_s=1e12))
    good = _events(10, 60)
    log.append([*good[:30], {**good[30], "event_id": "future", "timestamp": "9999-12-31T00:00:00Z"}])
    damaged = conform_table(
        pa.table({"event_id": ["broken"], "kind": ["click"], "timestamp": [good[31]["timestamp"]]})
    )
    damaged = damaged.set_column(
        damaged.schema.get_field_index("timestamp"),
        "timestamp",
        pa.array([2_000_000_000], pa.timestamp("us", tz="UTC")),
    )
    folder = tmp_path / "events" / "day=1970-01-01"
    pq.write_table(damaged, folder / "part-000000000500.parquet")  # no user or item: not an event
    ParquetEventLog(tmp_path / "events").append(good[31:])
    original = FeedState._apply_one

    def failing(self: FeedState, event: object, *args: object) -> None:
        if getattr(event, "event_id", None) == "c40":
            raise ValueError("boom")
        original(self, event, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(FeedState, "_apply_one", failing)
    store = state_store(settings)
    worker = FeedWorker(ParquetEventLog(tmp_path / "events"), FeedState(), store, snapshot_s=3600)
    worker.drain()
    count, records = dead_letters(store)
    assert count == 3 and [r["event_id"] for r in records] == ["future", "broken", "c40"]
    assert "max_ahead_s" in records[0]["reason"] and records[0]["event"]["kind"] == "click"
    assert records[1]["reason"].startswith("unreadable") and records[1]["event"] is None
    assert records[2]["reason"] == "ValueError: boom"
    applied = worker.state.clicks.values.sum()
    assert applied == 60 - 2  # every click but the one timed in 9999 and the one that raised
    store.close()
    result = CliRunner().invoke(
        app, ["events", "dead-letters"], env={"RECSTACK_PATHS__STATE_DIR": str(tmp_path / "state")}
    )
    assert result.exit_code == 0, result.output
    assert "3 dead letters" in result.output and "c40: ValueError: boom" in result.output
