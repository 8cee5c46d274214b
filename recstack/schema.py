"""Records that flow through recstack, and the one typed feature contract.

Every event has an ``event_id`` (ingest is idempotent by it), a ``kind`` and a timezone-aware
``timestamp``. Kinds:

- ``item`` / ``user``: upserts of catalog items and users (attributes, text, creator, created_at);
- ``impression``: one item shown to a user in one served list (request id, position, surface, the
  model versions and experiment arm that served it);
- ``click``, ``like``, ``share``, ``comment``, ``hide``, ``report``, ``dwell``: engagements, joined back
  to the impression that caused them by (request_id, item_id);
- ``query``: a search query typed by a user.

All kinds share one flat Arrow schema (:data:`EVENT_SCHEMA`), columns a kind does not use are null.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from recstack.errors import EventValidationError

ENGAGEMENT_KINDS: tuple[str, ...] = ("click", "like", "share", "comment", "hide", "report", "dwell")
POSITIVE_KINDS: tuple[str, ...] = ("click", "like", "share", "comment")  # the two-tower's positives
EVENT_KINDS: tuple[str, ...] = ("item", "user", "impression", *ENGAGEMENT_KINDS, "query")

Id = Annotated[str, Field(min_length=1, max_length=256)]
AttrValue = str | int | float | bool | list[str] | None


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: Id
    timestamp: datetime

    @field_validator("timestamp", mode="before")
    @classmethod
    def _epoch_or_iso(cls, value: Any) -> Any:
        # Epoch seconds are accepted as numbers; bools are not numbers here.
        if isinstance(value, bool):
            raise ValueError("timestamp must be an ISO-8601 string or epoch seconds")
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, tz=UTC)
        return value

    @field_validator("timestamp")
    @classmethod
    def _aware_utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("timestamp must carry a timezone (e.g. '2026-11-23T10:00:00Z')")
        return value.astimezone(UTC)


class ItemUpsert(_Event):
    kind: Literal["item"] = "item"
    item_id: Id
    attributes: dict[str, AttrValue] = Field(default_factory=dict)
    text: str | None = None
    creator_id: Id | None = None
    created_at: datetime | None = None


class UserUpsert(_Event):
    kind: Literal["user"] = "user"
    user_id: Id
    attributes: dict[str, AttrValue] = Field(default_factory=dict)


class Impression(_Event):
    kind: Literal["impression"] = "impression"
    request_id: Id
    user_id: Id
    item_id: Id
    position: int = Field(ge=0, le=100_000)
    surface: str = "feed"
    model_versions: dict[str, str] = Field(default_factory=dict)
    experiment_arm: str | None = None
    context: dict[str, str] = Field(default_factory=dict)  # request context, e.g. {"device": "ios"}
    features: dict[str, float] = Field(default_factory=dict)
    # what serving knew of it (monitoring reads these; docs/monitoring.md): ``p:<task>`` the heavy
    # ranker's raw probabilities, ``source``, ``explore``; the first item of a list also carries the
    # request's ``ms:<stage>`` latencies, ``n:<stage>`` candidate counts and ``degraded`` stages
    serving: dict[str, float | str] = Field(default_factory=dict)
    # the logging policy's probability of showing this item here (off-policy evaluation)
    propensity: float | None = Field(None, gt=0, le=1)


class Engagement(_Event):
    kind: Literal["click", "like", "share", "comment", "hide", "report", "dwell"]
    user_id: Id
    item_id: Id
    request_id: Id | None = None
    surface: str | None = None
    dwell_seconds: float | None = Field(None, ge=0, le=86_400)

    @model_validator(mode="after")
    def _dwell_has_seconds(self) -> Engagement:
        if self.kind == "dwell" and self.dwell_seconds is None:
            raise ValueError("a dwell event needs dwell_seconds")
        return self


class SearchQuery(_Event):
    kind: Literal["query"] = "query"
    query: str = Field(min_length=1, max_length=1024)
    user_id: Id | None = None
    request_id: Id | None = None
    surface: str | None = "search"


Event = Annotated[
    ItemUpsert | UserUpsert | Impression | Engagement | SearchQuery, Field(discriminator="kind")
]


@dataclass(frozen=True)
class TimeWindow:
    """The times an appended event may carry (``timestamp`` and an item's ``created_at``): none
    before ``earliest`` and none more than ``ahead_s`` past the server's clock at the append. A
    click stamped in 9999 would otherwise set every windowed count's clock there."""

    earliest: datetime = datetime(1970, 1, 1, tzinfo=UTC)
    ahead_s: float = 86_400.0

    def bounds(self) -> tuple[datetime, datetime]:
        """(earliest, latest) as times, the latest from the clock now (take it once per batch)."""
        now = datetime.now(UTC)
        last = datetime.max.replace(tzinfo=UTC)
        if self.ahead_s >= (last - now).total_seconds() - 1:  # a window reaching past year 9999
            return self.earliest, last
        return self.earliest, now + timedelta(seconds=self.ahead_s)

    def problem(
        self, event: Any, bounds: tuple[datetime, datetime] | None = None
    ) -> tuple[str, datetime] | None:
        """(field, value) of the first time of ``event`` outside the window (``bounds``: from
        ``bounds()``), or None."""
        low, high = bounds or self.bounds()
        stamp = event.timestamp
        if not low <= stamp <= high:
            return "timestamp", stamp
        created = event.created_at if isinstance(event, ItemUpsert) else None  # getattr is slow on models
        if created is not None and not low <= created <= high:
            return "created_at", created
        return None

    def reason(self) -> str:
        return (
            f"must be within [{self.earliest.isoformat()}, server clock + {self.ahead_s:g} s] "
            "([event_log] earliest, max_ahead_s)"
        )


_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(raw: Any, index: int | None = None) -> Event:
    """Validate one raw mapping into an event.

    Raises EventValidationError naming the field and the offending value.
    """
    if isinstance(raw, ItemUpsert | UserUpsert | Impression | Engagement | SearchQuery):
        return raw
    if not isinstance(raw, dict):
        raise EventValidationError(index, "<event>", raw, "an event must be a JSON object")
    kind = raw.get("kind")
    if kind not in EVENT_KINDS:
        raise EventValidationError(index, "kind", kind, f"must be one of {', '.join(EVENT_KINDS)}")
    try:
        return _EVENT_ADAPTER.validate_python(raw)
    except Exception as exc:  # pydantic.ValidationError, or ValueError from post-init checks
        errors = getattr(exc, "errors", None)
        if callable(errors):
            first = errors()[0]
            loc = [str(p) for p in first["loc"] if str(p) != kind]
            field = ".".join(loc) or "<event>"
            value = raw.get(loc[0]) if loc else raw
            raise EventValidationError(index, field, value, first["msg"]) from exc
        raise EventValidationError(index, "<event>", raw, str(exc)) from exc


# One flat schema for every kind; JSON-typed columns hold the free-form maps.
EVENT_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("user_id", pa.string()),
        pa.field("item_id", pa.string()),
        pa.field("request_id", pa.string()),
        pa.field("position", pa.int32()),
        pa.field("surface", pa.string()),
        pa.field("dwell_seconds", pa.float64()),
        pa.field("query", pa.string()),
        pa.field("creator_id", pa.string()),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
        pa.field("text", pa.string()),
        pa.field("experiment_arm", pa.string()),
        pa.field("attributes", pa.string()),  # JSON object
        pa.field("model_versions", pa.string()),  # JSON object
        pa.field("context", pa.string()),  # JSON object: request context
        pa.field("features", pa.string()),  # JSON object: feature values the ranker used
        pa.field("propensity", pa.float64()),  # impressions: the serving policy's probability of it
        pa.field("serving", pa.string()),  # JSON object: what serving knew (predictions, latencies)
    ]
)
_JSON_COLUMNS = ("attributes", "model_versions", "context", "features", "serving")


def event_to_row(event: Event) -> dict[str, Any]:
    """Flatten an event into a row of :data:`EVENT_SCHEMA` (JSON maps serialized)."""
    row: dict[str, Any] = dict.fromkeys(EVENT_SCHEMA.names)
    for key, value in event.model_dump().items():
        if key in _JSON_COLUMNS:
            row[key] = json.dumps(value, sort_keys=True) if value else None
        else:
            row[key] = value
    return row


def events_to_table(events: list[Event]) -> pa.Table:
    """Column-wise Arrow table of events in :data:`EVENT_SCHEMA`."""
    columns: dict[str, list[Any]] = {name: [] for name in EVENT_SCHEMA.names}
    for event in events:
        for key, value in event_to_row(event).items():
            columns[key].append(value)
    return pa.Table.from_pydict(columns, schema=EVENT_SCHEMA)


def parse_event_json(data: str | bytes, index: int | None = None) -> Event:
    """``parse_event(json.loads(data))`` in one pass of pydantic's JSON parser (a few times faster);
    anything that pass rejects goes through parse_event for its descriptive error. Raises
    json.JSONDecodeError for text that is not JSON."""
    try:
        return _EVENT_ADAPTER.validate_json(data)
    except Exception:  # the slow path below says what is wrong
        pass
    return parse_event(json.loads(data), index)


def row_to_event(row: dict[str, Any]) -> Event:
    """Inverse of :func:`event_to_row`: rebuild and re-validate an event from a stored row."""
    raw = {k: v for k, v in row.items() if v is not None}
    for key in _JSON_COLUMNS:
        if key in raw:
            raw[key] = json.loads(raw[key])
    return parse_event(raw)


class FeatureKind(StrEnum):
    categorical = "categorical"  # an id from a vocabulary
    sequence = "sequence"  # a list of ids from a vocabulary
    dense = "dense"  # a float vector of length dim
    embedding = "embedding"  # a precomputed float vector (e.g. text) of length dim


@dataclass(frozen=True)
class FeatureSpec:
    """The one typed description of a feature; models size themselves from it.

    name: column name; kind: how it is encoded; vocab_size: number of ids for categorical and
    sequence features (0 is reserved for unknown / padding); dim: width of dense or embedding
    features, max length of sequences; source: where its values come from (free text, for lineage).
    """

    name: str
    kind: FeatureKind
    vocab_size: int = 0
    dim: int = 1
    source: str = ""

    def __post_init__(self) -> None:
        if self.kind in (FeatureKind.categorical, FeatureKind.sequence) and self.vocab_size < 1:
            raise ValueError(f"feature '{self.name}': {self.kind} needs vocab_size >= 1")
        if self.dim < 1:
            raise ValueError(f"feature '{self.name}': dim must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind.value,
            "vocab_size": self.vocab_size,
            "dim": self.dim,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        return cls(
            name=data["name"],
            kind=FeatureKind(data["kind"]),
            vocab_size=int(data["vocab_size"]),
            dim=int(data["dim"]),
            source=str(data.get("source", "")),
        )


_NEEDS: dict[str, tuple[str, ...]] = {
    "user_id": ("user", "impression", *ENGAGEMENT_KINDS),
    "item_id": ("item", "impression", *ENGAGEMENT_KINDS),
    "request_id": ("impression",),
    "position": ("impression",),
    "dwell_seconds": ("dwell",),
    "query": ("query",),
}


_ID_COLUMNS = ("event_id", "user_id", "item_id", "request_id", "creator_id")
_MODELS: dict[str, type[BaseModel]] = {
    "item": ItemUpsert,
    "user": UserUpsert,
    "impression": Impression,
    **dict.fromkeys(ENGAGEMENT_KINDS, Engagement),
    "query": SearchQuery,
}
# the kinds whose model has no such field (the flat schema's column must be null for them)
_NOT_OF: dict[str, tuple[str, ...]] = {
    name: tuple(k for k, model in _MODELS.items() if name not in model.model_fields)
    for name in EVENT_SCHEMA.names
}
_JSON_TYPES: dict[str, TypeAdapter[Any]] = {
    "attributes": TypeAdapter(dict[str, AttrValue]),
    "model_versions": TypeAdapter(dict[str, str]),
    "context": TypeAdapter(dict[str, str]),
    "features": TypeAdapter(dict[str, float]),
    "serving": TypeAdapter(dict[str, float | str]),
}
_JSON_TYPE_NAMES = {
    "attributes": "strings, numbers, booleans or lists of strings",
    "model_versions": "strings",
    "context": "strings",
    "features": "numbers",
    "serving": "numbers or strings",
}


def conform_table(table: pa.Table) -> pa.Table:
    """Cast a table to EVENT_SCHEMA, adding absent optional columns as nulls."""
    for field in EVENT_SCHEMA:
        if field.name not in table.column_names:
            table = table.append_column(field.name, pa.nulls(table.num_rows, field.type))
    return table.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA)


def validate_table(
    table: pa.Table, window: TimeWindow | None = None
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Column-wise validation of events (the bulk path): returns a (N,) bool mask of valid rows and,
    for each invalid row, its index and the first problem (field and value), as parse_event would
    (with ``window``'s bounds on the times, the default window when None)."""
    import pyarrow.compute as pc

    n = table.num_rows
    bad = np.zeros(n, dtype=bool)
    problems: dict[int, str] = {}

    def flag(mask: Any, field: str, reason: str) -> None:
        hit = np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool) & ~bad
        for i in np.flatnonzero(hit)[:10_000]:
            value = table.column(field)[int(i)].as_py()
            problems[int(i)] = f"event {i}: field '{field}' = {value!r}: {reason}"
        bad[hit] = True

    kind = table.column("kind")
    flag(
        pc.or_(pc.is_null(table.column("event_id")), pc.equal(pc.utf8_length(table.column("event_id")), 0)),
        "event_id",
        "must be a non-empty string",
    )
    flag(pc.invert(pc.is_in(kind, pa.array(EVENT_KINDS))), "kind", f"must be one of {', '.join(EVENT_KINDS)}")
    flag(pc.is_null(table.column("timestamp")), "timestamp", "is required")
    window = window or TimeWindow()
    epoch, us = datetime(1970, 1, 1, tzinfo=UTC), timedelta(microseconds=1)
    low, high = ((t - epoch) // us for t in window.bounds())
    for field in ("timestamp", "created_at"):
        micros = table.column(field).cast(pa.int64())
        flag(pc.or_(pc.less(micros, low), pc.greater(micros, high)), field, window.reason())
    for field, kinds in _NEEDS.items():
        needed = pc.is_in(kind, pa.array(kinds))
        flag(
            pc.and_(needed, pc.is_null(table.column(field))), field, f"is required for kind {'/'.join(kinds)}"
        )
    flag(pc.less(table.column("position"), 0), "position", "must be >= 0")
    dwell = table.column("dwell_seconds")
    out_of_range = pc.or_(pc.or_(pc.less(dwell, 0), pc.greater(dwell, 86_400)), pc.is_nan(dwell))
    flag(out_of_range, "dwell_seconds", "must be within [0, 86400]")
    flag(pc.equal(pc.utf8_length(table.column("query")), 0), "query", "must not be empty")
    # the rest of what the event models check, so that a row that passes is an event as it stands
    for field in _ID_COLUMNS:
        length = pc.utf8_length(table.column(field))
        flag(pc.or_(pc.less(length, 1), pc.greater(length, 256)), field, "must be 1 to 256 characters")
    flag(pc.greater(table.column("position"), 100_000), "position", "must be <= 100000")
    flag(pc.greater(pc.utf8_length(table.column("query")), 1024), "query", "must be at most 1024 characters")
    for field, kinds in _NOT_OF.items():
        if not kinds:
            continue
        flag(
            pc.and_(pc.is_in(kind, pa.array(kinds)), pc.is_valid(table.column(field))),
            field,
            f"is not a field of kind {'/'.join(kinds)}",
        )
    for field, adapter in _JSON_TYPES.items():
        column = table.column(field)
        if column.null_count == n:
            continue
        values = column.to_pylist()
        verdict: dict[str, bool] = {}  # per distinct value (a request's rows share most of theirs)
        for text in values:
            if text is not None and text not in verdict:
                try:
                    adapter.validate_json(text)
                    verdict[text] = True
                except Exception:  # pydantic.ValidationError: not JSON, not an object, wrong types
                    verdict[text] = False
        flag(
            pa.array([text is not None and not verdict[text] for text in values]),
            field,
            f"must be a JSON object of {_JSON_TYPE_NAMES[field]}",
        )
    return ~bad, sorted(problems.items())


def table_json(table: pa.Table) -> list[str]:
    """Each row of a conformed, validated table (:func:`validate_table`) as the JSON of its event,
    built column-wise (no model per row): null columns left out, JSON columns spliced in as stored.
    ``parse_event_json`` of a row's JSON equals ``row_to_event`` of the row."""
    from json.encoder import encode_basestring_ascii as quote

    n = table.num_rows
    columns: list[list[str | None]] = []
    for field in EVENT_SCHEMA:
        column = table.column(field.name)
        if column.null_count == n:
            continue
        head = f'"{field.name}": '
        if pa.types.is_timestamp(field.type):
            micros = np.asarray(column.cast(pa.int64()).fill_null(0).to_numpy(), dtype="datetime64[us]")
            text = np.datetime_as_string(micros, unit="us").tolist()
            nulls = column.is_null().to_pylist() if column.null_count else [False] * n
            columns.append([None if null else f'{head}"{t}Z"' for t, null in zip(text, nulls, strict=True)])
        elif field.name in _JSON_COLUMNS:
            columns.append([None if v is None else head + v for v in column.to_pylist()])
        elif pa.types.is_string(field.type):
            columns.append([None if v is None else head + quote(v) for v in column.to_pylist()])
        else:  # position (int), dwell_seconds (float, finite within its range)
            columns.append([None if v is None else head + repr(v) for v in column.to_pylist()])
    rows = zip(*columns, strict=True)
    return ["{" + ", ".join(part for part in parts if part is not None) + "}" for parts in rows]
