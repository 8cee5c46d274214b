"""Behaviour specific to the embedded Parquet log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recstack.errors import DataFormatError
from recstack.events import ParquetEventLog

from .test_contract import ev


def test_partitioned_by_day_and_atomic_files(tmp_path: Path) -> None:
    log = ParquetEventLog(tmp_path)
    log.append([ev(0, day=21), ev(1, day=22), ev(2, day=22)])
    days = sorted(p.name for p in tmp_path.glob("day=*"))
    assert days == ["day=2026-11-21", "day=2026-11-22"]
    assert not list(tmp_path.rglob("*.tmp"))


def test_compact_keeps_order_and_content(tmp_path: Path) -> None:
    log = ParquetEventLog(tmp_path)
    for i in range(6):
        log.append([ev(i)])
    assert log.compact() == 5
    assert [e.event_id for e in ParquetEventLog(tmp_path).replay()] == [f"e{i}" for i in range(6)]
    assert log.append([ev(2)]).duplicates == 1


def test_compact_spares_files_a_group_has_not_consumed(tmp_path: Path) -> None:
    log = ParquetEventLog(tmp_path)
    for i in range(4):
        log.append([ev(i)])
    deliveries = log.consume("g", "c", count=1)
    log.ack("g", [d.delivery_id for d in deliveries])
    log.compact()
    rest = [d.event.event_id for d in ParquetEventLog(tmp_path).consume("g", "c", count=10)]
    assert rest == ["e1", "e2", "e3"]


def test_dedupe_reads_back_evicted_days(tmp_path: Path) -> None:
    log = ParquetEventLog(tmp_path, dedupe_days_cached=1)
    log.append([ev(0, day=1), ev(1, day=2), ev(2, day=3)])
    assert log.append([ev(0, day=1)]).duplicates == 1


def test_corrupt_file_gives_clear_error(tmp_path: Path) -> None:
    log = ParquetEventLog(tmp_path)
    log.append([ev(0)])
    next(tmp_path.glob("day=*/part-*.parquet")).write_bytes(b"not parquet")
    with pytest.raises(DataFormatError, match="event log"):
        ParquetEventLog(tmp_path).table()


def test_day_ids_answer_membership_across_the_merge_into_the_sorted_part() -> None:
    from recstack.events.parquet import _DayIds

    rng = np.random.default_rng(0)
    values = rng.integers(-(2**62), 2**62, size=200_000)
    ids = _DayIds()
    for chunk in np.array_split(values[:150_000], 30):  # crosses the 65,536 merge threshold twice
        ids.add(chunk)
    assert len(ids.sorted) > 0 and np.all(np.diff(ids.sorted) > 0)  # merged, sorted, no repeats
    probe = np.concatenate([values[:150_000:7], values[150_000:]])
    expected = np.isin(probe, values[:150_000])
    assert np.array_equal(ids.contains(probe), expected)


def test_days_are_the_utc_dates_of_the_timestamps() -> None:
    import pyarrow as pa

    from recstack.events.parquet import _days

    stamps = pa.chunked_array(
        [pa.array([0, 86_399_999_999, 86_400_000_000, -1], type=pa.timestamp("us", tz="UTC"))]
    )
    assert list(_days(stamps)) == ["1970-01-01", "1970-01-01", "1970-01-02", "1969-12-31"]


def _click(event_id: str, day: int = 23) -> dict[str, object]:
    return {
        "event_id": event_id,
        "kind": "click",
        "timestamp": f"2026-11-{day:02d}T10:00:00Z",
        "user_id": "u",
        "item_id": "i",
    }


def _write(root: str, writer: int, batches: int, start: object) -> None:
    """One writer process: ``batches`` appends of 20 events of its own and 5 shared by every writer
    (each shared id must land once), waiting for ``start`` so the writers overlap."""
    start.wait()  # type: ignore[attr-defined]
    log = ParquetEventLog(Path(root))
    for b in range(batches):
        own = [_click(f"w{writer}-{b}-{k}", day=20 + b % 3) for k in range(20)]
        shared = [_click(f"shared-{b}-{k}", day=20 + b % 3) for k in range(5)]
        log.append(own + shared)


def test_two_writer_processes_lose_nothing_and_a_running_log_sees_both(tmp_path: Path) -> None:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    running = ParquetEventLog(tmp_path)  # opened before the writers, as a serving API is
    running.append([_click("before", day=20)])
    start = context.Event()
    writers = [context.Process(target=_write, args=(str(tmp_path), w, 30, start)) for w in range(2)]
    for process in writers:
        process.start()
    start.set()
    for process in writers:
        process.join(60)
        assert process.exitcode == 0
    expected = {"before"} | {f"w{w}-{b}-{k}" for w in range(2) for b in range(30) for k in range(20)}
    expected |= {f"shared-{b}-{k}" for b in range(30) for k in range(5)}
    fresh = ParquetEventLog(tmp_path)
    ids = fresh.table().column("event_id").to_pylist()
    assert len(ids) == len(expected) == 1 + 1200 + 150 and set(ids) == expected
    # the log that was open all along reads them, consumes them, and deduplicates against them
    assert running.count() == len(expected)
    consumed = []
    while batch := running.consume("g", "c", count=500):
        consumed += [d.event_id for d in batch]
    assert sorted(consumed) == sorted(expected)
    result = running.append([_click("w0-0-0", day=20), _click("after", day=21)])
    assert (result.accepted, result.duplicates) == (1, 1)


def test_the_configured_time_window_is_the_logs(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from recstack.config import load_settings
    from recstack.events import open_event_log

    settings = load_settings(
        None,
        {
            "RECSTACK_PATHS__STATE_DIR": str(tmp_path),
            "RECSTACK_EVENT_LOG__MAX_AHEAD_S": "60",
            "RECSTACK_EVENT_LOG__EARLIEST": "2020-01-01T00:00:00Z",
        },
    )
    log = open_event_log(settings)
    now = datetime.now(UTC).timestamp()
    result = log.append([_click("old", day=1) | {"timestamp": "2019-06-01T00:00:00Z"}])
    assert result.accepted == 0 and "2020-01-01" in result.rejected[0].error
    result = log.append([_click("ahead") | {"timestamp": now + 600}, _click("now") | {"timestamp": now}])
    assert result.accepted == 1 and [r.index for r in result.rejected] == [0]
