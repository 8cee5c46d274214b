"""``recstack import``: a team's own interaction, item and user files as events of the log.

Readers (``--format``, or by the file name): CSV and TSV with a header row (or ``columns`` named in
``[mapping]``), JSON lines, Parquet, and the MovieLens files (``u.data``, ``u.item``, ``u.user`` of
ml-100k; ``ratings.dat``, ``movies.dat``, ``users.dat`` of ml-1m, ``::``-separated).

Mapping (``[mapping]`` in ``recstack.toml``, each key also a flag): an interaction row names a user,
an item and a time; it becomes an impression (the item was shown: the rankers' negatives) and one
engagement per kind its value reaches (``engagements = { click = 4, like = 5 }``: rating >= 4 is a
click, 5 a like too), or the engagement its ``kind`` column names. Item rows become item upserts
(attributes from their other columns, ``text`` columns joined as the item's text) and user rows
user upserts, timed one second before the import's earliest interaction (``catalog_time`` sets it),
so the catalog exists before the history that uses it.

Every event id is derived from the row's content (user, item, time, kind; an upsert's id and
attributes), so importing the same file again adds nothing: the log keeps each id once. A row that
cannot be read is reported with its file, line and reason, once, and its events are not appended;
the rest of the file is.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from recstack.config import ImportFormat, MappingConfig, TimeUnit
from recstack.data.readers import GENRES_100K
from recstack.errors import DataFormatError
from recstack.events.base import EventLog
from recstack.schema import ENGAGEMENT_KINDS, conform_table

US = 1_000_000


# the MovieLens files by name: (separator, encoding, columns); a genre-flag block becomes a list
MOVIELENS: dict[str, tuple[str, str, list[str]]] = {
    "u.data": ("\t", "utf-8", ["user_id", "item_id", "rating", "timestamp"]),
    "ratings.dat": ("::", "latin-1", ["user_id", "item_id", "rating", "timestamp"]),
    "u.item": (
        "|",
        "latin-1",
        ["item_id", "title", "release_date", "video_release", "url", *(f"g:{g}" for g in GENRES_100K)],
    ),
    "movies.dat": ("::", "latin-1", ["item_id", "title", "genres"]),
    "u.user": ("|", "utf-8", ["user_id", "age", "gender", "occupation", "zip"]),
    "users.dat": ("::", "latin-1", ["user_id", "gender", "age", "occupation", "zip"]),
}


@dataclass
class ImportSummary:
    """What one file gave: rows read, events by kind, what the log accepted, and the bad lines."""

    path: Path
    rows: int = 0
    events: dict[str, int] = field(default_factory=dict)
    accepted: int = 0
    duplicates: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line, reason), each line once

    @property
    def bad_lines(self) -> int:
        return len(self.errors)


# ---------------------------------------------------------------------------- readers
Rows = Iterator[tuple[int, dict[str, Any]]]  # (line or row number, column -> value)


def detect_format(path: Path) -> ImportFormat:
    name = path.name.lower()
    if name in MOVIELENS:
        return ImportFormat.movielens
    for suffix, kind in (
        (".csv", ImportFormat.csv),
        (".tsv", ImportFormat.tsv),
        (".jsonl", ImportFormat.jsonl),
        (".ndjson", ImportFormat.jsonl),
        (".json", ImportFormat.jsonl),
        (".parquet", ImportFormat.parquet),
    ):
        if name.endswith(suffix):
            return kind
    raise DataFormatError(
        path,
        None,
        "cannot tell the format from the name: pass --format (csv, tsv, jsonl, parquet, movielens)",
    )


def count_rows(path: Path, fmt: ImportFormat) -> int:
    """How many rows a file holds (non-blank lines, or Parquet rows), for a progress bar."""
    if not path.is_file():
        raise DataFormatError(path, None, "no such file")
    fmt = detect_format(path) if fmt is ImportFormat.auto else fmt
    if fmt is ImportFormat.parquet:
        import pyarrow.parquet as pq

        try:
            return int(pq.ParquetFile(path).metadata.num_rows)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataFormatError(path, None, f"not a Parquet file: {exc}") from exc
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def read_rows(path: Path, fmt: ImportFormat, columns: list[str] | None = None) -> Rows:
    """The file's rows: (line or row number, column -> value)."""
    if not path.is_file():
        raise DataFormatError(path, None, "no such file")
    fmt = detect_format(path) if fmt is ImportFormat.auto else fmt
    if fmt is ImportFormat.parquet:
        import pyarrow.parquet as pq

        try:
            handle = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataFormatError(path, None, f"not a Parquet file: {exc}") from exc
        return _parquet_rows(handle)
    encoding = "utf-8"
    if fmt is ImportFormat.movielens:
        if path.name.lower() not in MOVIELENS:
            raise DataFormatError(path, None, f"a MovieLens file is one of {', '.join(MOVIELENS)}")
        sep, encoding, names = MOVIELENS[path.name.lower()]
        rows = _delimited(path, sep, names, encoding)
    elif fmt is ImportFormat.jsonl:
        rows = _jsonl(path)
    else:
        rows = _delimited(path, "," if fmt is ImportFormat.csv else "\t", columns, encoding)
    return rows


def _parquet_rows(handle: Any) -> Rows:
    number = 0
    for batch in handle.iter_batches(batch_size=65_536):
        for row in batch.to_pylist():
            number += 1
            yield number, row


def _jsonl(path: Path) -> Rows:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, {"__error__": f"invalid JSON ({exc.msg})"}
                continue
            yield number, row if isinstance(row, dict) else {"__error__": "a line must be a JSON object"}


def _delimited(path: Path, sep: str, names: list[str] | None, encoding: str) -> Rows:
    with path.open(encoding=encoding, newline="") as handle:
        lines: Iterator[tuple[int, list[str]]]
        if len(sep) == 1:
            lines = ((n, fields) for n, fields in enumerate(csv.reader(handle, delimiter=sep), start=1))
        else:
            lines = ((n, line.rstrip("\r\n").split(sep)) for n, line in enumerate(handle, start=1))
        header = names
        for number, fields in lines:
            if not fields or fields == [""]:
                continue
            if header is None:
                header = [f.strip() for f in fields]
                continue
            if len(fields) != len(header):
                yield (
                    number,
                    {"__error__": f"expected {len(header)} fields separated by {sep!r}, found {len(fields)}"},
                )
                continue
            row: dict[str, Any] = dict(zip(header, fields, strict=True))
            flags = [name for name in header if name.startswith("g:")]
            if flags:  # MovieLens genre flags -> the list of genres
                row["genres"] = [name[2:] for name in flags if row.pop(name) == "1"]
            elif "genres" in row and sep == "::":
                row["genres"] = row["genres"].split("|")
            yield number, row


# ---------------------------------------------------------------------------- rows -> columns
def _stable_id(*parts: object) -> str:
    digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=12).hexdigest()
    return digest


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def parse_time(value: Any, unit: TimeUnit) -> int:
    """Microseconds since the epoch; ValueError naming what was wrong."""
    if isinstance(value, datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=UTC)
        return int(stamp.timestamp() * US)
    if unit is TimeUnit.iso:
        text = str(value).strip().replace("Z", "+00:00")
        stamp = datetime.fromisoformat(text)
        return int((stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp() * US)
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    micros = round(number * {"s": US, "ms": 1_000, "us": 1}[unit.value])
    if not _FIRST_US <= micros <= _LAST_US:
        raise ValueError("outside the years 1 to 9999")
    return micros


_FIRST_US = int(datetime(1, 1, 2, tzinfo=UTC).timestamp() * US)
_LAST_US = int(datetime(9999, 12, 30, tzinfo=UTC).timestamp() * US)


def attribute_value(value: Any) -> Any:
    """A file's value as an item or user attribute: numbers from text that reads as one (not codes
    with a leading zero, such as zip codes), lists of strings, strings otherwise."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    text = str(value).strip()
    if not text:
        return None
    if not (len(text) > 1 and text[0] == "0" and text[1:2].isdigit()):
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
                return number if math.isfinite(number) else text
            except ValueError:
                pass
    return text


class _Columns:
    """Event columns built row by row (each event remembers its line, to report the log's
    rejections by line)."""

    def __init__(self) -> None:
        self.data: dict[str, list[Any]] = {}
        self.lines: list[int] = []
        self.n = 0

    def add(self, line: int, **values: Any) -> None:
        for key, value in values.items():
            column = self.data.get(key)
            if column is None:
                column = self.data[key] = [None] * self.n
            column.append(value)
        self.n += 1
        for column in self.data.values():
            if len(column) < self.n:
                column.append(None)
        self.lines.append(line)

    def table(self) -> pa.Table:
        columns = dict(self.data)
        for key in ("timestamp", "created_at"):
            if key in columns:
                columns[key] = pa.array(columns[key], pa.timestamp("us", tz="UTC"))
        if "position" in columns:
            columns["position"] = pa.array(columns["position"], pa.int32())
        return conform_table(pa.table(columns))


def _row_time(row: dict[str, Any], m: MappingConfig) -> int:
    """The row's time in µs from the ``timestamp`` column; ValueError with the reason."""
    raw_time = row.get(m.timestamp)
    if raw_time is None or raw_time == "":
        raise ValueError(f"column '{m.timestamp}' (the time) is missing or empty")
    try:
        return parse_time(raw_time, m.time_unit)
    except (ValueError, OverflowError, OSError) as exc:
        raise ValueError(
            f"column '{m.timestamp}': {raw_time!r} is not a time in {m.time_unit.value} ({exc})"
        ) from exc


def interaction_events(number: int, row: dict[str, Any], m: MappingConfig, out: _Columns) -> dict[str, int]:
    """The events of one interaction row, added to ``out``; ValueError with the reason when the row
    cannot become events. Returns the events by kind."""
    user, item = _text(row.get(m.user)), _text(row.get(m.item))
    if user is None:
        raise ValueError(f"column '{m.user}' (the user) is missing or empty")
    if item is None:
        raise ValueError(f"column '{m.item}' (the item) is missing or empty")
    t = _row_time(row, m)
    kinds: list[str] = []
    if m.kind is not None:
        kind = _text(row.get(m.kind))
        if kind is None:
            raise ValueError(f"column '{m.kind}' (the kind) is missing or empty")
        if kind not in ("impression", "view") and kind not in ENGAGEMENT_KINDS:
            raise ValueError(
                f"column '{m.kind}': {kind!r} is not impression, view or one of {', '.join(ENGAGEMENT_KINDS)}"
            )
        kinds = [kind] if kind in ENGAGEMENT_KINDS else []
    elif m.rating is not None:
        raw = row.get(m.rating)
        try:
            value = float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"column '{m.rating}': {raw!r} is not a number") from exc
        if not math.isfinite(value):
            raise ValueError(f"column '{m.rating}': {raw!r} is not a finite number")
        kinds = [kind for kind, least in m.engagements.items() if value >= least]
    else:
        kinds = list(m.engagements) or ["click"]  # implicit feedback: every row engages
    counts: dict[str, int] = {}
    key = _stable_id(user, item, t)
    if m.impressions:
        out.add(
            number,
            event_id=f"imp-{key}",
            kind="impression",
            timestamp=t,
            user_id=user,
            item_id=item,
            request_id=f"import-{_stable_id(user, t)}",
            position=0,
            surface=m.surface,
        )
        counts["impression"] = 1
    for kind in kinds:
        out.add(
            number,
            event_id=f"{kind}-{key}",
            kind=kind,
            timestamp=t,
            user_id=user,
            item_id=item,
            surface=m.surface,
        )
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def query_event(number: int, row: dict[str, Any], m: MappingConfig, out: _Columns) -> None:
    """The query event of one search-log row, added to ``out``; ValueError with the reason."""
    text = _text(row.get(m.query))
    if text is None:
        raise ValueError(f"column '{m.query}' (the query) is missing or empty")
    if len(text) > 1024:
        raise ValueError(f"column '{m.query}' holds {len(text):,} characters (at most 1,024)")
    t = _row_time(row, m)
    user = _text(row.get(m.user))
    out.add(
        number,
        event_id=f"query-{_stable_id(user, text, t)}",
        kind="query",
        timestamp=t,
        user_id=user,
        query=text,
        surface="search",
    )


def upsert_event(
    number: int, row: dict[str, Any], m: MappingConfig, entity: str, at_us: int, out: _Columns
) -> None:
    """The upsert of one item or user row, added to ``out``; ValueError with the reason."""
    id_column = m.item_id if entity == "item" else m.user_id
    entity_id = _text(row.get(id_column))
    if entity_id is None:
        raise ValueError(f"column '{id_column}' (the {entity} id) is missing or empty")
    used = {id_column}
    values: dict[str, Any] = {"timestamp": at_us}
    if entity == "item":
        used |= set(m.text) | {c for c in (m.creator, m.created_at) if c}
        texts = [t for t in (_text(row.get(c)) for c in m.text) if t]
        if texts:
            values["text"] = " ".join(texts)
        if m.creator:
            values["creator_id"] = _text(row.get(m.creator))
        if m.created_at and _text(row.get(m.created_at)) is not None:
            try:
                values["created_at"] = parse_time(row[m.created_at], m.time_unit)
            except (ValueError, OverflowError, OSError) as exc:
                raise ValueError(
                    f"column '{m.created_at}': {row[m.created_at]!r} is not a time ({exc})"
                ) from exc
    chosen = m.item_attributes if entity == "item" else m.user_attributes
    names = chosen if chosen is not None else [c for c in row if c not in used and not c.startswith("__")]
    missing = [c for c in names if c not in row]
    if missing:
        raise ValueError(f"attribute column(s) {', '.join(missing)} not in the row (it has {', '.join(row)})")
    attributes = {c: attribute_value(row[c]) for c in names}
    attributes = {c: v for c, v in attributes.items() if v is not None}
    payload = json.dumps(attributes, sort_keys=True, separators=(",", ":"))
    digest = _stable_id(
        entity_id, payload, values.get("text"), values.get("creator_id"), values.get("created_at")
    )
    out.add(
        number,
        event_id=f"{entity}-{digest}",
        kind=entity,
        **{"item_id" if entity == "item" else "user_id": entity_id},
        attributes=payload,
        **values,
    )


# ---------------------------------------------------------------------------- the import
def import_file(
    log: EventLog,
    path: Path,
    what: str,
    mapping: MappingConfig,
    fmt: ImportFormat = ImportFormat.auto,
    catalog_us: int | None = None,
    batch: int = 50_000,
    progress: Callable[[int], None] | None = None,
    transform: Callable[[pa.Table], pa.Table] | None = None,
) -> ImportSummary:
    """Append one file's events to ``log``: ``what`` is interactions, items, users or queries (``catalog_us``:
    the upserts' time). ``progress(rows)`` is called as rows are read; ``transform`` takes each
    batch of events before it is appended (moderation scores item upserts there)."""
    rows = read_rows(path, fmt, mapping.columns)
    summary = ImportSummary(path)
    bad: dict[int, str] = {}
    out = _Columns()
    at = catalog_us if catalog_us is not None else int(datetime(1970, 1, 2, tzinfo=UTC).timestamp() * US)

    def flush() -> None:
        nonlocal out
        if not out.n:
            return
        table = out.table()
        result = log.append_table(transform(table) if transform is not None else table)
        summary.accepted += result.accepted
        summary.duplicates += result.duplicates
        for rejected in result.rejected:
            line = out.lines[rejected.index]
            bad.setdefault(line, re.sub(r"^event \d+: ", "", rejected.error))
        out = _Columns()

    for number, row in rows:
        summary.rows += 1
        if progress is not None:
            progress(1)
        if "__error__" in row:
            bad.setdefault(number, row["__error__"])
            continue
        start = out.n
        try:
            if what == "interactions":
                for kind, count in interaction_events(number, row, mapping, out).items():
                    summary.events[kind] = summary.events.get(kind, 0) + count
            elif what == "queries":
                query_event(number, row, mapping, out)
                summary.events["query"] = summary.events.get("query", 0) + 1
            else:
                upsert_event(number, row, mapping, "item" if what == "items" else "user", at, out)
                summary.events[what[:-1]] = summary.events.get(what[:-1], 0) + 1
        except ValueError as exc:
            _truncate(out, start)
            bad.setdefault(number, str(exc))
            continue
        if out.n >= batch:
            flush()
    flush()
    summary.errors = sorted(bad.items())
    return summary


def _truncate(out: _Columns, n: int) -> None:
    """Drop the events a failed row had added."""
    for column in out.data.values():
        del column[n:]
    del out.lines[n:]
    out.n = n


def earliest_time(path: Path, mapping: MappingConfig, fmt: ImportFormat = ImportFormat.auto) -> int | None:
    """The earliest readable interaction time of a file (µs), for the catalog's upsert time."""
    rows = read_rows(path, fmt, mapping.columns)
    best: int | None = None
    for _, row in rows:
        raw = row.get(mapping.timestamp)
        if raw is None or raw == "":
            continue
        try:
            t = parse_time(raw, mapping.time_unit)
        except (ValueError, OverflowError, OSError):
            continue
        best = t if best is None else min(best, t)
    return best
