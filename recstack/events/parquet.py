"""The embedded event log: append-only Parquet files partitioned by day, read through DuckDB.

Layout::

    <root>/day=2026-11-23/part-000000000042.parquet   # one file per append call and day
    <root>/_groups/<group>.json                        # committed offset of each consumer group

Each append writes its files to a temporary name and renames them, so a crash never leaves a
half-written file. ``compact()`` merges a day's small files. Event ids are deduplicated within the
day partition of their timestamp (a retried event carries the same timestamp); the id sets of the
most recent ``dedupe_days_cached`` days stay in memory, older ones are read back on demand.

Several processes may write one log (the API, a ``recstack events ingest`` or ``recstack import``
beside it): each append holds an exclusive lock on ``<root>/_lock`` (``fcntl.flock``) while it
takes the next file sequence from ``<root>/_seq`` and writes its files, so no two writers ever
write the same file. Under that lock a writer first takes in the files others wrote since it last
looked (their ids join its deduplication index), and readers and consumers look for them too, so a
running API's worker applies events a CLI appended. Consumer groups of the embedded log serve
consumers in one process; use the Redis backend for consumers in several.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recstack.errors import DataFormatError
from recstack.events.base import AppendResult, Delivery, Rejected, validate_batch
from recstack.schema import (
    EVENT_SCHEMA,
    Event,
    TimeWindow,
    conform_table,
    events_to_table,
    row_to_event,
    validate_table,
)

_PART = re.compile(r"part-(\d{12})\.parquet$")


class _DayIds:
    """The event ids of one day as sorted 64-bit hashes (8 bytes an id instead of a Python string),
    with recent additions in a side set merged in when it grows (a binary search for the sorted
    part, a set lookup for the recent: no sort per append). A 64-bit collision, which would make a
    new event look like a duplicate, has probability about n^2 / 2^65 (3e-6 for 10M ids)."""

    def __init__(self) -> None:
        self.sorted = np.empty(0, dtype=np.int64)
        self.pending: set[int] = set()

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        found = np.zeros(len(hashes), dtype=bool)
        if len(self.sorted):
            idx = np.searchsorted(self.sorted, hashes)
            idx[idx == len(self.sorted)] = 0
            found = self.sorted[idx] == hashes
        if self.pending:
            pending = self.pending
            found |= np.fromiter((h in pending for h in hashes.tolist()), dtype=bool, count=len(hashes))
        return found

    def add(self, hashes: np.ndarray) -> None:
        self.pending.update(hashes.tolist())
        if len(self.pending) > max(65_536, len(self.sorted) // 4):
            new = np.sort(np.fromiter(self.pending, dtype=np.int64, count=len(self.pending)))
            self.sorted = np.insert(self.sorted, np.searchsorted(self.sorted, new), new)
            self.pending = set()


def _days(timestamps: pa.ChunkedArray) -> np.ndarray:
    """The UTC day (YYYY-MM-DD) of each timestamp, formatted once per distinct day."""
    micros = timestamps.cast(pa.int64()).to_numpy(zero_copy_only=False)
    numbers = micros // (86_400 * 1_000_000)
    distinct, inverse = np.unique(numbers, return_inverse=True)
    names = [datetime.fromtimestamp(int(d) * 86_400, tz=UTC).strftime("%Y-%m-%d") for d in distinct.tolist()]
    out: np.ndarray = np.asarray(names, dtype=object)[inverse]
    return out


def id_hashes(ids: list[str]) -> np.ndarray:
    """64-bit hashes of event ids (process-local: the index is rebuilt from the files at start)."""
    return np.fromiter((hash(i) for i in ids), dtype=np.int64, count=len(ids))


class _GroupState:
    """Read position and unacknowledged deliveries of one consumer group."""

    def __init__(self, committed: tuple[int, int]) -> None:
        self.next_pos = committed  # (file sequence, row) of the next event to deliver
        self.committed = committed
        self.outstanding: deque[tuple[int, int]] = deque()
        self.delivered: set[tuple[int, int]] = set()  # the outstanding positions, for lookups
        self.acked: set[tuple[int, int]] = set()


class ParquetEventLog:
    """Event log over day-partitioned Parquet files. See the module docstring."""

    def __init__(self, root: Path, dedupe_days_cached: int = 8, window: TimeWindow | None = None) -> None:
        self.root = Path(root)
        self.window = window or TimeWindow()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "_groups").mkdir(exist_ok=True)
        self._lock = threading.RLock()
        self._files: dict[int, Path] = {}
        self._file_cache: tuple[int, pa.Table] | None = None
        self._scan()
        self._next_seq = max(max(self._files, default=-1) + 1, self._shared_seq())
        self._ids: OrderedDict[str, _DayIds] = OrderedDict()  # day -> event ids (LRU)
        self._days_cached = dedupe_days_cached
        self._groups: dict[str, _GroupState] = {}
        self._count: int | None = None

    # ------------------------------------------------------------------ writers in other processes
    def _scan(self) -> list[int]:
        """Read which files are on disk (others' appends, a compaction's merges); returns the
        sequences this log did not know."""
        files: dict[int, Path] = {}
        for path in self.root.glob("day=*/part-*.parquet"):
            match = _PART.search(path.name)
            if match:
                files[int(match.group(1))] = path
        found = sorted(set(files) - set(self._files))
        if set(files) != set(self._files):
            self._file_cache = None
        self._files = files
        return found

    def _shared_seq(self) -> int:
        """The next file sequence as every writer sees it (``_seq``; -1 before the first append)."""
        try:
            return int((self.root / "_seq").read_text())
        except (FileNotFoundError, ValueError):
            return -1

    def _bump(self, seq: int) -> None:
        """Tell every process that files up to ``seq - 1`` moved (written, or merged)."""
        # written in place, under the file lock: a reader that catches it half written reads no
        # number and looks again at its next call
        (self.root / "_seq").write_text(str(seq))
        self._next_seq = seq

    def _catch_up(self) -> None:
        """Files other processes appended or merged since this log last looked: known from now on,
        and their event ids in the deduplication index (one small read when nothing moved)."""
        if self._shared_seq() <= self._next_seq:
            return
        found = self._scan()
        self._next_seq = max(self._next_seq, self._shared_seq(), max(self._files, default=-1) + 1)
        self._count = None
        for seq in found:
            day = self._files[seq].parent.name.removeprefix("day=")
            ids = self._ids.get(day)
            if ids is not None:  # a cached day: add what the other writer wrote to it
                written = self._read_file(self._files[seq], ["event_id"]).column("event_id")
                ids.add(id_hashes(written.to_pylist()))

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """This process's lock, then the log's file lock; everything others wrote taken in."""
        with self._lock, (self.root / "_lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self._catch_up()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ writing
    def _day_ids(self, day: str) -> _DayIds:
        ids = self._ids.get(day)
        if ids is None:
            ids = _DayIds()
            for path in sorted((self.root / f"day={day}").glob("part-*.parquet")):
                ids.add(id_hashes(self._read_file(path, ["event_id"]).column("event_id").to_pylist()))
            self._ids[day] = ids
        self._ids.move_to_end(day)
        while len(self._ids) > self._days_cached:
            self._ids.popitem(last=False)
        return ids

    def append(self, events: Sequence[Any]) -> AppendResult:
        valid, result = validate_batch(events, self.window)
        if valid:
            events_ok = [event for _, event in valid]
            written = self._append_valid(events_to_table(events_ok))
            result.accepted = written.accepted
            result.duplicates += written.duplicates
            keep = (
                set(written.accepted_table.column("event_id").to_pylist())
                if written.accepted_table
                else set()
            )
            result.accepted_events = [e for e in events_ok if e.event_id in keep]
        return result

    def append_table(self, table: pa.Table) -> AppendResult:
        table = conform_table(table)
        valid, problems = validate_table(table, self.window)
        written = self._append_valid(table.filter(pa.array(valid)))
        written.rejected = [Rejected(i, msg) for i, msg in problems]
        return written

    def _append_valid(self, table: pa.Table) -> AppendResult:
        """Drop ids already in the log (or earlier in the batch), write the rest by day."""
        days = _days(table.column("timestamp"))
        hashes = id_hashes(table.column("event_id").to_pylist())
        keep = np.zeros(len(hashes), dtype=bool)
        with self._writing():
            for day in sorted(set(days)):
                rows = np.flatnonzero(days == day)
                _, first = np.unique(hashes[rows], return_index=True)
                rows = rows[np.sort(first)]
                rows = rows[~self._day_ids(day).contains(hashes[rows])]
                if len(rows):
                    self._write(day, table.take(pa.array(rows)))
                    self._day_ids(day).add(hashes[rows])
                    keep[rows] = True
            if self._count is not None:
                self._count += int(keep.sum())
        accepted = table.filter(pa.array(keep))
        return AppendResult(
            accepted=accepted.num_rows, duplicates=int(len(keep) - keep.sum()), accepted_table=accepted
        )

    def _write(self, day: str, table: pa.Table) -> None:
        folder = self.root / f"day={day}"
        folder.mkdir(exist_ok=True)
        seq = max(self._next_seq, self._shared_seq())  # under the file lock (``_writing``)
        final = folder / f"part-{seq:012d}.parquet"
        tmp = folder / f".part-{seq:012d}.parquet.tmp"
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, final)
        self._files[seq] = final
        self._bump(seq + 1)

    def compact(self) -> int:
        """Merge each day's files into one (keeps append order). Returns the number of files removed.

        Consumer-group offsets point at file sequences, so compaction only runs when no group has
        unconsumed events in the files it would merge.
        """
        removed = 0
        with self._writing():
            lowest_open = min((g.committed[0] for g in self._groups.values()), default=None)
            for group_file in (self.root / "_groups").glob("*.json"):
                seq = json.loads(group_file.read_text())["committed"][0]
                lowest_open = seq if lowest_open is None else min(lowest_open, seq)
            by_day: dict[Path, list[int]] = {}
            for seq, path in sorted(self._files.items()):
                by_day.setdefault(path.parent, []).append(seq)
            for folder, seqs in by_day.items():
                if len(seqs) < 2 or (lowest_open is not None and seqs[-1] >= lowest_open):
                    continue
                merged = pa.concat_tables([self._read_file(self._files[s]) for s in seqs])
                keep = seqs[-1]
                tmp = folder / f".part-{keep:012d}.parquet.tmp"
                pq.write_table(merged, tmp, compression="zstd")
                os.replace(tmp, self._files[keep])
                for seq in seqs[:-1]:
                    self._files.pop(seq).unlink()
                    removed += 1
            self._file_cache = None
            if removed:
                self._bump(max(self._next_seq, self._shared_seq()) + 1)  # others read the files again
        return removed

    # ------------------------------------------------------------------ reading
    def _read_file(self, path: Path, columns: list[str] | None = None) -> pa.Table:
        try:
            return pq.read_table(path, columns=columns, schema=EVENT_SCHEMA)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataFormatError(path, None, f"unreadable Parquet file in the event log: {exc}") from exc

    def _glob(self) -> str:
        return str(self.root / "day=*" / "part-*.parquet")

    def table(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        kinds: Sequence[str] | None = None,
    ) -> pa.Table:
        with self._lock:
            self._catch_up()
            if not self._files:
                return EVENT_SCHEMA.empty_table()
            where, params = _where(start, end, kinds)
            con = duckdb.connect()
            try:
                sql = (
                    f"SELECT * EXCLUDE (filename, file_row_number) FROM read_parquet(?, "
                    f"filename=true, file_row_number=true, hive_partitioning=false, union_by_name=true) "
                    f"{where} ORDER BY filename, file_row_number"
                )
                table = con.sql(sql, params=[self._glob(), *params]).to_arrow_table()
            except duckdb.Error as exc:
                raise DataFormatError(self.root, None, f"cannot read the event log: {exc}") from exc
            finally:
                con.close()
        for name in EVENT_SCHEMA.names:  # files written before a column existed
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, EVENT_SCHEMA.field(name).type))
        return table.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA)

    def replay(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        kinds: Sequence[str] | None = None,
    ) -> Iterator[Event]:
        for batch in self.table(start, end, kinds).to_batches(max_chunksize=4096):
            for row in batch.to_pylist():
                yield row_to_event(row)

    def count(self) -> int:
        with self._lock:
            self._catch_up()
            if self._count is None:
                self._count = sum(pq.ParquetFile(p).metadata.num_rows for p in self._files.values())
            return self._count

    # ------------------------------------------------------------------ consumer groups
    def _group(self, group: str) -> _GroupState:
        state = self._groups.get(group)
        if state is None:
            path = self.root / "_groups" / f"{_safe(group)}.json"
            committed = (0, 0)
            if path.exists():
                seq, row = json.loads(path.read_text())["committed"]
                committed = (int(seq), int(row))
            state = self._groups[group] = _GroupState(committed)
        return state

    def _file_rows(self, seq: int) -> pa.Table:
        if self._file_cache is None or self._file_cache[0] != seq:
            self._file_cache = (seq, self._read_file(self._files[seq]))
        return self._file_cache[1]

    def consume(self, group: str, consumer: str, count: int = 100, block_ms: int = 0) -> list[Delivery]:
        del consumer, block_ms  # one process: consumers of a group share its position; no blocking
        out: list[Delivery] = []
        with self._lock:
            self._catch_up()
            state = self._group(group)
            seq, row = state.next_pos
            for file_seq in sorted(s for s in self._files if s >= seq):
                if len(out) >= count:
                    break
                table = self._file_rows(file_seq)
                start = row if file_seq == seq else 0
                stop = min(table.num_rows, start + count - len(out))
                part = table.slice(start, stop - start)
                rows = _Rows(part)  # converted to Python only if some delivery's event is read
                for offset, event_id in enumerate(part.column("event_id").to_pylist()):
                    pos = (file_seq, start + offset)
                    state.outstanding.append(pos)
                    state.delivered.add(pos)
                    out.append(Delivery(f"{pos[0]}-{pos[1]}", event_id, partial(rows.event, offset)))
                state.next_pos = (file_seq, stop) if stop < table.num_rows else (file_seq + 1, 0)
        return out

    def ack(self, group: str, delivery_ids: Sequence[str]) -> int:
        with self._lock:
            state = self._group(group)
            delivered, acked = state.delivered, state.acked  # pending: delivered, not yet acked
            newly = 0
            for delivery_id in delivery_ids:
                seq, _, row = delivery_id.partition("-")
                pos = (int(seq), int(row))
                if pos in delivered and pos not in acked:
                    acked.add(pos)
                    newly += 1
            while state.outstanding and state.outstanding[0] in acked:
                pos = state.outstanding.popleft()
                acked.discard(pos)
                delivered.discard(pos)
                state.committed = (pos[0], pos[1] + 1)
            path = self.root / "_groups" / f"{_safe(group)}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"committed": list(state.committed)}))
            os.replace(tmp, path)
        return newly

    def close(self) -> None:
        self._file_cache = None


class _Rows:
    """The rows of a consumed slice, turned into Python dicts on first need, all at once."""

    def __init__(self, table: pa.Table) -> None:
        self.table: pa.Table | None = table
        self.rows: list[dict[str, Any]] = []

    def event(self, offset: int) -> Event:
        if self.table is not None:
            self.rows, self.table = self.table.to_pylist(), None
        return row_to_event(self.rows[offset])


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _where(
    start: datetime | None, end: datetime | None, kinds: Sequence[str] | None
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if start is not None:
        clauses.append("timestamp >= ?")
        params.append(start)
    if end is not None:
        clauses.append("timestamp < ?")
        params.append(end)
    if kinds is not None:
        clauses.append("list_contains(?, kind)")
        params.append(list(kinds))
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params
