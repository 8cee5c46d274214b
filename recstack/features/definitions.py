"""Declarative feature definitions, written once and used offline and online.

Each definition says which events update it (``listens``), what state it keeps per entity, how an
event changes that state (``update``), and how a value is read from the state at a time (``read``).
The offline path (:mod:`recstack.features.offline`) computes the same quantities with DuckDB
point-in-time joins and passes them through the same ``finish`` functions, so a training row and a
served request see the same number for the same history.

Time is integer microseconds since the epoch everywhere. A value at time ``t`` sees only events with
``timestamp < t``. Windowed counts use buckets: a window of ``W`` with bucket ``B`` counts events in
``[(t // B - W/B + 1) * B, t)``, so the online state per entity is ``W/B`` integers.

Definitions are pydantic models so that they live in ``recstack.toml`` as ``[[features]]`` tables,
resolved by their ``type`` in one place, with unknown keys rejected.
"""

from __future__ import annotations

import math
import re
import zlib
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from recstack.schema import EVENT_KINDS, FeatureKind, FeatureSpec

US = 1_000_000
_DURATION = re.compile(r"^(\d+)\s*(s|m|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
MISSING_RECENCY = -1.0  # value of a recency feature when the entity never had the event


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def exact_us(moment: datetime) -> int:
    """Microseconds since the epoch, exactly (``timestamp() * 1e6`` rounds through a float, which
    can move a time across a bucket edge or a recency by a microsecond)."""
    return (moment - _EPOCH) // _ONE_US


def parse_duration(text: str) -> int:
    """'90s', '15m', '1h', '7d', '2w' -> seconds (> 0)."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"duration {text!r} must look like 30s, 15m, 1h, 7d or 2w")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be longer than zero")
    return seconds


def stable_hash(value: str, buckets: int) -> int:
    """Index in 1..buckets-1 for a categorical value (0 is reserved for missing); stable across runs."""
    return 1 + zlib.crc32(value.encode("utf-8")) % (buckets - 1)


class _Def(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Column name of the feature.")
    listens: ClassVar[tuple[str, ...]] = ()

    def spec(self) -> FeatureSpec:
        raise NotImplementedError


def _check_kinds(kinds: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [k for k in kinds if k not in EVENT_KINDS]
    if unknown or not kinds:
        raise ValueError(f"event kinds {unknown or '[]'} invalid; choose from {', '.join(EVENT_KINDS)}")
    return kinds


class WindowedMixin(BaseModel):
    window: str = Field(description="Window length, e.g. 1h, 1d, 7d.")
    bucket: str | None = Field(None, description="Bucket length; default window / 24 (at least 1s).")

    @property
    def window_us(self) -> int:
        return parse_duration(self.window) * US

    @property
    def bucket_us(self) -> int:
        if self.bucket is not None:
            return parse_duration(self.bucket) * US
        return max(self.window_us // 24, US)

    @property
    def n_buckets(self) -> int:
        return self.window_us // self.bucket_us

    @model_validator(mode="after")
    def _window_is_whole_buckets(self) -> Any:
        window = parse_duration(self.window) * US
        bucket = parse_duration(self.bucket) * US if self.bucket else max(window // 24, US)
        if window % bucket or bucket > window:
            raise ValueError(f"window {self.window} must be a whole number of buckets of {self.bucket}")
        return self


def shrunk_rate(num: np.ndarray, den: np.ndarray, prior: float, prior_weight: float) -> np.ndarray:
    """(num + prior_weight * prior) / (den + prior_weight), 0 where both are zero."""
    top = num.astype(np.float64) + prior_weight * prior
    bottom = den.astype(np.float64) + prior_weight
    out = np.zeros(len(top), dtype=np.float64)
    np.divide(top, bottom, out=out, where=bottom > 0)
    return out


class Counter(_Def, WindowedMixin):
    """Number of events of ``kinds`` for the entity in the window (e.g. item clicks in the last 1d)."""

    type: Literal["counter"] = "counter"
    entity: Literal["user", "item"] = Field(description="Whose events are counted.")
    kinds: tuple[str, ...] = Field(description="Event kinds counted.")

    _v = field_validator("kinds")(_check_kinds)

    def spec(self) -> FeatureSpec:
        return FeatureSpec(
            self.name, FeatureKind.dense, source=f"{self.entity} {'+'.join(self.kinds)} / {self.window}"
        )


class RateMixin(BaseModel):
    """The shrunk rate's terms, shared by ``rate`` and ``attribute_rate``."""

    numerator: tuple[str, ...] = Field(description="Event kinds counted above the line.")
    denominator: tuple[str, ...] = Field(description="Event kinds counted below the line.")
    prior: float = Field(0.0, ge=0, description="Prior rate the estimate shrinks towards.")
    prior_weight: float = Field(0.0, ge=0, description="Pseudo-count of the prior.")

    _vn = field_validator("numerator", "denominator")(_check_kinds)

    def finish(self, num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return shrunk_rate(num, den, self.prior, self.prior_weight)


class Rate(_Def, WindowedMixin, RateMixin):
    """(numerator + prior_weight * prior) / (denominator + prior_weight) over the window, 0 when both
    are zero; e.g. item CTR = clicks / impressions over 7d."""

    type: Literal["rate"] = "rate"
    entity: Literal["user", "item"] = Field(description="Whose events are counted.")

    def spec(self) -> FeatureSpec:
        return FeatureSpec(self.name, FeatureKind.dense, source=f"{self.entity} rate / {self.window}")


class AttributeRate(_Def, WindowedMixin, RateMixin):
    """The user's rate on items that share the candidate's attribute: (numerator + prior_weight *
    prior) / (denominator + prior_weight) over the user's events in the window on items whose
    ``field`` (``creator_id`` or an attributes key) had the candidate's value, e.g. the user's click
    rate on this topic or this creator. An event counts for the value its item had at the event
    (its latest upsert at or before it); the candidate's value is its latest upsert before the read.
    A list value counts as one value; a candidate without the attribute reads the prior."""

    type: Literal["attribute_rate"] = "attribute_rate"
    field: str = Field(description="The item attribute: 'creator_id' or an attributes key.")

    def key(self) -> Attribute:
        """How an item's value of ``field`` is encoded into the key its events are counted under
        (0: the item has no such attribute)."""
        return Attribute(name=f"{self.name}_key", entity="item", field=self.field, buckets=2**31 - 1)

    def spec(self) -> FeatureSpec:
        return FeatureSpec(
            self.name, FeatureKind.dense, source=f"user rate on item.{self.field} / {self.window}"
        )


class Recency(_Def):
    """Seconds since the entity's last event of ``kinds`` (-1 when it never had one)."""

    type: Literal["recency"] = "recency"
    entity: Literal["user", "item"] = Field(description="Whose events are timed.")
    kinds: tuple[str, ...] = Field(description="Event kinds that reset the clock.")

    _v = field_validator("kinds")(_check_kinds)

    @staticmethod
    def finish(now_us: np.ndarray, last_us: np.ndarray) -> np.ndarray:
        """now_us, last_us: int64 arrays, last_us < 0 meaning never."""
        out: np.ndarray = (now_us - last_us).astype(np.float64) / US
        out[last_us < 0] = MISSING_RECENCY
        return out

    def spec(self) -> FeatureSpec:
        return FeatureSpec(self.name, FeatureKind.dense, source=f"{self.entity} since {'+'.join(self.kinds)}")


class LastN(_Def):
    """The user's last ``n`` engaged item ids, most recent first (a sequence feature)."""

    type: Literal["last_n"] = "last_n"
    kinds: tuple[str, ...] = Field(("click", "like", "share"), description="Engagements that count.")
    n: int = Field(20, ge=1, le=1000, description="Sequence length kept.")

    _v = field_validator("kinds")(_check_kinds)

    def spec(self) -> FeatureSpec:
        return FeatureSpec(self.name, FeatureKind.sequence, vocab_size=1, dim=self.n, source="user history")


class Attribute(_Def):
    """An attribute of the user or item from its latest upsert: ``creator_id`` or ``attributes.<key>``.
    Categorical values are hashed into ``buckets`` (0 = missing); dense values are floats (NaN = missing)."""

    type: Literal["attribute"] = "attribute"
    entity: Literal["user", "item"] = Field(description="Whose upserts it reads.")
    field: str = Field(description="'creator_id' or an attributes key.")
    kind: Literal["categorical", "dense"] = Field("categorical", description="How the value is encoded.")
    buckets: int = Field(10_007, ge=2, description="Hash buckets of a categorical attribute.")

    def encode(self, raw: Any) -> float:
        if raw is None:
            return 0.0 if self.kind == "categorical" else math.nan
        if self.kind == "categorical":
            return float(stable_hash(str(raw), self.buckets))
        try:
            return float(raw)
        except (TypeError, ValueError):
            return math.nan

    def spec(self) -> FeatureSpec:
        if self.kind == "categorical":
            return FeatureSpec(
                self.name,
                FeatureKind.categorical,
                vocab_size=self.buckets,
                source=f"{self.entity}.{self.field}",
            )
        return FeatureSpec(self.name, FeatureKind.dense, source=f"{self.entity}.{self.field}")


class Context(_Def):
    """A property of the request: ``hour`` and ``weekday`` (UTC) of its time, ``surface``, or a key of
    the impression's ``context`` map (e.g. ``device``), hashed into ``buckets``."""

    type: Literal["context"] = "context"
    field: str = Field(description="hour, weekday, surface, or a context key such as device.")
    buckets: int = Field(1009, ge=2, description="Hash buckets for string values.")

    def value(self, now_us: int, surface: str | None, context: dict[str, str] | None) -> float:
        if self.field == "hour":
            return float(datetime.fromtimestamp(now_us / US, tz=UTC).hour)
        if self.field == "weekday":
            return float(datetime.fromtimestamp(now_us / US, tz=UTC).weekday())
        raw = surface if self.field == "surface" else (context or {}).get(self.field)
        return 0.0 if raw is None else float(stable_hash(raw, self.buckets))

    def spec(self) -> FeatureSpec:
        sizes = {"hour": 24, "weekday": 7}
        return FeatureSpec(
            self.name,
            FeatureKind.categorical,
            vocab_size=sizes.get(self.field, self.buckets),
            source=f"request.{self.field}",
        )


class TextEmbedding(_Def):
    """The all-MiniLM-L6-v2 embedding (384-d, normalized) of the item's text from its latest upsert;
    zeros when the item has no text. What makes a brand-new item comparable to known ones."""

    type: Literal["text_embedding"] = "text_embedding"

    def spec(self) -> FeatureSpec:
        return FeatureSpec(self.name, FeatureKind.embedding, dim=384, source="item.text (all-MiniLM-L6-v2)")


class ItemAge(_Def):
    """Seconds since the item was created (``created_at`` of its latest upsert, else that upsert's
    time), at the request; NaN for an item never upserted."""

    type: Literal["item_age"] = "item_age"

    def spec(self) -> FeatureSpec:
        return FeatureSpec(self.name, FeatureKind.dense, source="item.created_at")


class RetrievalScore(_Def):
    """The two-tower score of the (user, item) pair at the request (the dot product of the user and
    item towers): computed by serving and logged with the impression; for history without a logged
    value, training computes it from the towers it has just trained. 0 for a pair the towers do not
    know."""

    type: Literal["retrieval_score"] = "retrieval_score"

    def spec(self) -> FeatureSpec:
        return FeatureSpec(self.name, FeatureKind.dense, source="request (two-tower)")


AnyDef = (
    Counter
    | Rate
    | AttributeRate
    | Recency
    | LastN
    | Attribute
    | Context
    | TextEmbedding
    | ItemAge
    | RetrievalScore
)
FeatureDef = Annotated[AnyDef, Field(discriminator="type")]
FEATURE_TYPES: dict[str, type[_Def]] = {
    "counter": Counter,
    "rate": Rate,
    "attribute_rate": AttributeRate,
    "recency": Recency,
    "last_n": LastN,
    "attribute": Attribute,
    "context": Context,
    "text_embedding": TextEmbedding,
    "item_age": ItemAge,
    "retrieval_score": RetrievalScore,
}


def listens(feature: _Def) -> tuple[str, ...]:
    """Event kinds that change a feature's state."""
    if isinstance(feature, Counter | Recency | LastN):
        return feature.kinds
    if isinstance(feature, Rate):
        return tuple(dict.fromkeys(feature.numerator + feature.denominator))
    if isinstance(feature, AttributeRate):
        return tuple(dict.fromkeys((*feature.numerator, *feature.denominator, "item")))
    if isinstance(feature, Attribute):
        return (feature.entity,)
    if isinstance(feature, TextEmbedding | ItemAge):
        return ("item",)
    return ()


def check_unique(features: list[Any]) -> list[Any]:
    names = [f.name for f in features]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"feature names must be unique; repeated: {', '.join(dupes)}")
    return features


# No user-level overall click rate among the defaults: what it measures is the serving policy as
# much as the user (a better feed raises every user's rate), so a model trained on one policy's rows
# drifts out of its range under the next; on the simulator's stable world it halved the served
# model's predicted click rate in four days (observed / predicted 1.0 -> 2.0), and leaving it out
# cost no measurable true CTR (benchmarks/feed_quality.py, docs/features.md)
DEFAULT_FEATURES: list[dict[str, Any]] = [
    {
        "type": "rate",
        "name": "item_ctr_1h",
        "entity": "item",
        "numerator": ["click"],
        "denominator": ["impression"],
        "window": "1h",
        "prior": 0.05,
        "prior_weight": 20.0,
    },
    {
        "type": "rate",
        "name": "item_ctr_1d",
        "entity": "item",
        "numerator": ["click"],
        "denominator": ["impression"],
        "window": "1d",
        "prior": 0.05,
        "prior_weight": 20.0,
    },
    {
        "type": "rate",
        "name": "item_ctr_7d",
        "entity": "item",
        "numerator": ["click"],
        "denominator": ["impression"],
        "window": "7d",
        "bucket": "1d",
        "prior": 0.05,
        "prior_weight": 20.0,
    },
    {
        "type": "counter",
        "name": "item_impressions_1d",
        "entity": "item",
        "kinds": ["impression"],
        "window": "1d",
    },
    {
        "type": "counter",
        "name": "item_hides_7d",
        "entity": "item",
        "kinds": ["hide", "report"],
        "window": "7d",
        "bucket": "1d",
    },
    {
        "type": "rate",
        "name": "user_like_rate_7d",
        "entity": "user",
        "numerator": ["like"],
        "denominator": ["click"],
        "window": "7d",
        "bucket": "1d",
        "prior": 0.2,
        "prior_weight": 5.0,
    },
    {
        "type": "attribute_rate",
        "name": "user_topic_ctr_30d",
        "field": "topic",
        "numerator": ["click"],
        "denominator": ["impression"],
        "window": "30d",
        "bucket": "1d",
        "prior": 0.05,
        "prior_weight": 10.0,
    },
    {"type": "counter", "name": "user_clicks_1d", "entity": "user", "kinds": ["click"], "window": "1d"},
    {"type": "recency", "name": "user_since_click", "entity": "user", "kinds": ["click"]},
    {"type": "recency", "name": "item_since_click", "entity": "item", "kinds": ["click"]},
    {"type": "last_n", "name": "user_last_items", "kinds": ["click", "like", "share"], "n": 20},
    {"type": "attribute", "name": "item_creator", "entity": "item", "field": "creator_id"},
    {"type": "attribute", "name": "item_topic", "entity": "item", "field": "topic", "buckets": 1009},
    {"type": "context", "name": "hour_of_day", "field": "hour"},
    {"type": "context", "name": "day_of_week", "field": "weekday"},
    {"type": "context", "name": "request_surface", "field": "surface", "buckets": 101},
    {"type": "context", "name": "request_device", "field": "device", "buckets": 101},
    {"type": "item_age", "name": "item_age"},
    {"type": "retrieval_score", "name": "retrieval_score"},
]
