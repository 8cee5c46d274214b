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
