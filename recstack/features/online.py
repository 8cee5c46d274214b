"""The online path: feature state updated from the event stream, read at request time as arrays.

State lives in one record per entity (``user:<id>``, ``item:<id>``) in a :class:`KVStore`, with a
bounded write-back cache of decoded records in front of it: memory stays flat while ingesting (the
cache is bounded; the store holds the online state itself, one small record per entity).

Ordering: events may arrive out of time order. Windowed counts place a late event in its bucket
(and drop it only when its bucket has already left every window, where offline would not count it
either); recency keeps the maximum time; the last-N sequence is kept sorted by (time, event id).
So the values do not depend on arrival order, and equal the offline ones (the skew test proves it).
"""

from __future__ import annotations

import json
from bisect import insort
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa

from recstack.features.definitions import (
    US,
    AnyDef,
    Attribute,
    AttributeRate,
    Context,
    Counter,
    ItemAge,
    LastN,
    Rate,
    Recency,
    RetrievalScore,
    TextEmbedding,
    check_unique,
)
from recstack.features.stores import KVStore
from recstack.features.text import shared_encoder
from recstack.schema import Event, events_to_table

AnyFeature = AnyDef
State = dict[str, Any]


def attribute_raw(feature: Attribute, creator_id: str | None, attributes: dict[str, Any] | None) -> Any:
    """The raw value an Attribute reads from one upsert (shared by the offline and online paths)."""
    if feature.field == "creator_id":
        return creator_id
    value = (attributes or {}).get(feature.field)
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value


def context_values(
    feature: Context,
    now_us: np.ndarray,
    surfaces: Sequence[str | None],
    contexts: Sequence[dict[str, str] | None],
) -> np.ndarray:
    """Vectorized Context values (shared by both paths). now_us: (N,) int64."""
    if feature.field == "hour":
        return ((now_us // (3600 * US)) % 24).astype(np.float64)
    if feature.field == "weekday":
        return ((now_us // (86_400 * US) + 3) % 7).astype(np.float64)  # 1970-01-01 was a Thursday (3)
    return np.array(
        [feature.value(0, s, c) for s, c in zip(surfaces, contexts, strict=True)], dtype=np.float64
    )


def ring_add(ring: Any, bucket: int, n_buckets: int) -> bool:
    """Count one event of ``bucket`` in a ring ``[latest bucket, c_0 .. c_{n-1}]`` (a list or an
    array row, changed in place): a newer bucket clears the slots it passes; an event whose bucket
    has left every window is not counted (False)."""
    latest = int(ring[0])
    if bucket > latest:
        if bucket - latest >= n_buckets:
            ring[1:] = [0] * n_buckets
        else:
            for x in range(latest + 1, bucket + 1):
                ring[1 + x % n_buckets] = 0
        ring[0] = bucket
    elif bucket <= latest - n_buckets:
        return False
    ring[1 + bucket % n_buckets] += 1
    return True


def counter_read(
    rings: Sequence[list[int] | None], now_us: int, bucket_us: int, n_buckets: int
) -> np.ndarray:
    """Events in the buckets (now // B - n, now // B] for each ring [latest bucket, c_0 .. c_n-1].

    Slot j of a ring holds bucket x_j = latest - ((latest - j) mod n); it counts when x_j falls in the
    window. Vectorized over rings: (R,) int64.
    """
    empty = [-(2**62), *([0] * n_buckets)]
    matrix = np.array([r if r is not None else empty for r in rings], dtype=np.int64).reshape(
        -1, n_buckets + 1
    )
    latest, counts = matrix[:, :1], matrix[:, 1:]  # (R, 1), (R, n)
    slot_bucket = latest - ((latest - np.arange(n_buckets)) % n_buckets)  # (R, n)
    now_bucket = now_us // bucket_us
    in_window = (slot_bucket > now_bucket - n_buckets) & (slot_bucket <= now_bucket)
    total: np.ndarray = (counts * in_window).sum(axis=1)
    return total


class OnlineFeatures:
    """Applies events to feature state and reads feature values for (user, candidate items)."""

    def __init__(
        self,
        features: Sequence[AnyFeature],
        store: KVStore,
        cache_size: int = 200_000,
        flush_every: int = 20_000,
    ) -> None:
        self.features = check_unique(list(features))
        self.store = store
        # An in-process store: the decoded records are the state; no serialization, no eviction.
        self.in_process = bool(getattr(store, "holds_objects", False))
        self.cache_size = cache_size
        self.flush_every = flush_every
        self._cache: OrderedDict[str, State] = OrderedDict()
        self._dirty: set[str] = set()
        self.late_dropped = 0
        self.applied = 0
        # kind -> operations; each op: (op, entity, state key, arg1, arg2)
        self._ops: dict[str, list[tuple[str, str, str, int, int]]] = {}
        self._attributes = {f.name: f for f in self.features if isinstance(f, Attribute)}
        for f in self.features:
            if isinstance(f, Counter):
                for kind in f.kinds:
                    self._add(kind, ("count", f.entity, f.name, f.bucket_us, f.n_buckets))
            elif isinstance(f, Rate):
                for kind in f.numerator:
                    self._add(kind, ("count", f.entity, f.name + ":n", f.bucket_us, f.n_buckets))
                for kind in f.denominator:
                    self._add(kind, ("count", f.entity, f.name + ":d", f.bucket_us, f.n_buckets))
            elif isinstance(f, Recency):
                for kind in f.kinds:
                    self._add(kind, ("last", f.entity, f.name, 0, 0))
            elif isinstance(f, LastN):
                for kind in f.kinds:
                    self._add(kind, ("seq", "user", f.name, f.n, 0))
            elif isinstance(f, AttributeRate):  # the item's key value, then the user's ring per value
                key = f.key()
                self._attributes[key.name] = key
                self._add("item", ("attr", "item", key.name, 0, 0))
                for kind in f.numerator:
                    self._add(kind, ("xcount", "user", f.name + ":n", f.bucket_us, f.n_buckets))
                for kind in f.denominator:
                    self._add(kind, ("xcount", "user", f.name + ":d", f.bucket_us, f.n_buckets))
            elif isinstance(f, Attribute):
                self._add(f.entity, ("attr", f.entity, f.name, 0, 0))
            elif isinstance(f, TextEmbedding):
                self._add("item", ("text", "item", f.name, 0, 0))
            elif isinstance(f, ItemAge):
                self._add("item", ("created", "item", f.name, 0, 0))

    def _add(self, kind: str, op: tuple[str, str, str, int, int]) -> None:
        self._ops.setdefault(kind, []).append(op)

    # ------------------------------------------------------------------ state cache
    def _states(self, keys: Sequence[str]) -> list[State]:
        cache = self._cache
        missing = [k for k in dict.fromkeys(keys) if k not in cache]
        if missing:
            for key, raw in zip(missing, self.store.get_many(missing), strict=True):
                cache[key] = json.loads(raw) if raw is not None else {}
        out = []
        for key in keys:
            cache.move_to_end(key)
            out.append(cache[key])
        return out

    def _trim(self) -> None:
        """Flush when enough has changed; keep the cache within its size (only clean records leave)."""
        if self.in_process:
            self._dirty.clear()
            return
        if len(self._dirty) >= self.flush_every or (len(self._cache) > self.cache_size and self._dirty):
            self.flush()
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def flush(self) -> None:
        """Write every changed record to the store (a no-op for an in-process store)."""
        if self._dirty and not self.in_process:
            cache = self._cache
            self.store.put_many(
                {k: json.dumps(cache[k], separators=(",", ":")).encode() for k in self._dirty}
            )
            self._dirty.clear()

    # ------------------------------------------------------------------ updates
    def update(self, events: Sequence[Event]) -> int:
        """Apply validated events (e.g. those a log accepted); returns how many changed state."""
        return self.update_table(events_to_table(list(events))) if events else 0

    def update_table(self, table: pa.Table) -> int:
        """Apply a batch of events in EVENT_SCHEMA, column-wise; returns how many changed state."""
        kinds = table.column("kind").to_pylist()
        relevant = [i for i, k in enumerate(kinds) if k in self._ops]
        if not relevant:
            return 0
        sub = table.take(relevant)
        kinds = [kinds[i] for i in relevant]
        ts = sub.column("timestamp").cast(pa.int64()).to_pylist()
        users = sub.column("user_id").to_pylist()
        items = sub.column("item_id").to_pylist()
        event_ids = sub.column("event_id").to_pylist()
        has_attrs = bool({"attr", "text", "created"} & {op[0] for ops in self._ops.values() for op in ops})
        creators = sub.column("creator_id").to_pylist() if has_attrs else None
        attributes = sub.column("attributes").to_pylist() if has_attrs else None
        texts = sub.column("text").to_pylist() if has_attrs else None
        created = sub.column("created_at").cast(pa.int64()).to_pylist() if has_attrs else None
        keys: list[str] = []
        for kind, user, item in zip(kinds, users, items, strict=True):
            for spec in self._ops[kind]:
                entity_id = user if spec[1] == "user" else item
                if entity_id is not None:
                    keys.append(f"{spec[1]}:{entity_id}")
                if spec[0] == "xcount" and item is not None:  # reads the item's attribute value
                    keys.append(f"item:{item}")
        unique = list(dict.fromkeys(keys))
        states = dict(zip(unique, self._states(unique), strict=True))
        dirty = self._dirty
        dirty.update(unique)
        for n, kind in enumerate(kinds):
            t = ts[n]
            for op, entity, key, a1, a2 in self._ops[kind]:
                entity_id = users[n] if entity == "user" else items[n]
                if entity_id is None:
                    continue
                state = states[f"{entity}:{entity_id}"]
                if op == "count":
                    self._count(state, key, t, a1, a2)
                elif op == "xcount":
                    if items[n] is not None:
                        code = self._key_code(key, states[f"item:{items[n]}"])
                        if code:
                            self._count(state, f"{key}@{code}", t, a1, a2)
                elif op == "last":
                    if state.get(key, -1) < t:
                        state[key] = t
                elif op == "seq":
                    seq = state.setdefault(key, [])
                    insort(seq, [t, event_ids[n], items[n]])
                    if len(seq) > a1:
                        del seq[: len(seq) - a1]
                elif op == "created":  # the latest upsert by time wins
                    assert created is not None
                    if state.get(key + ":t", -1) <= t:
                        state[key] = created[n] if created[n] is not None else t
                        state[key + ":t"] = t
                elif op == "text":  # the latest upsert by time wins; embedded when read
                    assert texts is not None
                    if state.get(key + ":t", -1) <= t:
                        state[key] = texts[n]
                        state[key + ":t"] = t
                else:  # attr: the latest upsert by time wins
                    assert attributes is not None and creators is not None
                    if state.get(key + ":t", -1) <= t:
                        attrs = json.loads(attributes[n]) if attributes[n] else None
                        state[key] = attribute_raw(self._attributes[key], creators[n], attrs)
                        state[key + ":t"] = t
        self.applied += len(kinds)
        self._trim()
        return len(kinds)

    def _key_code(self, ring_key: str, item_state: State) -> int:
        """The code of an item's value of an attribute_rate's field (0: none), from its ring key."""
        name = ring_key.rsplit(":", 1)[0] + "_key"
        return int(self._attributes[name].encode(item_state.get(name)))

    def _count(self, state: State, key: str, t: int, bucket_us: int, n_buckets: int) -> None:
        b = t // bucket_us
        ring = state.get(key)
        if ring is None:
            ring = state[key] = [b] + [0] * n_buckets
        if not ring_add(ring, b, n_buckets):
            self.late_dropped += 1

    # ------------------------------------------------------------------ reads
    def read(
        self,
        user_id: str | None,
        item_ids: Sequence[str],
        now: datetime | int,
        surface: str | None = None,
        context: dict[str, str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Feature values for one request: name -> (N,) array over ``item_ids`` (user and context
        features repeated per row; last-N sequences as an object array of lists)."""
        now_us = now if isinstance(now, int) else int(now.timestamp() * US)
        n = len(item_ids)
        states = self._states([f"user:{user_id}", *(f"item:{i}" for i in item_ids)])
        user_state, item_states = states[0], states[1:]
        self._trim()
        out: dict[str, np.ndarray] = {}
        for f in self.features:
            if isinstance(f, Context):
                out[f.name] = np.repeat(context_values(f, np.array([now_us]), [surface], [context]), n)
                continue
            if isinstance(f, LastN):
                seq = [entry[2] for entry in reversed(user_state.get(f.name, []))]
                column = np.empty(n, dtype=object)
                column[:] = [seq] * n
                out[f.name] = column
                continue
            if isinstance(f, TextEmbedding):
                out[f.name] = shared_encoder().embed([s.get(f.name) for s in item_states])  # (N, 384)
                continue
            if isinstance(f, RetrievalScore):  # computed by serving from the towers, not kept here
                out[f.name] = np.full(n, np.nan)
                continue
            if isinstance(f, ItemAge):
                born = np.array([s.get(f.name, np.nan) for s in item_states], dtype=np.float64)
                out[f.name] = (now_us - born) / US
                continue
            if isinstance(f, AttributeRate):
                codes = [self._key_code(f.name + ":n", s) for s in item_states]
                num = counter_read(
                    [user_state.get(f"{f.name}:n@{c}") for c in codes], now_us, f.bucket_us, f.n_buckets
                )
                den = counter_read(
                    [user_state.get(f"{f.name}:d@{c}") for c in codes], now_us, f.bucket_us, f.n_buckets
                )
                out[f.name] = f.finish(num, den)
                continue
            targets = [user_state] if f.entity == "user" else item_states
            if isinstance(f, Counter):
                rings = [s.get(f.name) for s in targets]
                values = counter_read(rings, now_us, f.bucket_us, f.n_buckets).astype(np.float64)
            elif isinstance(f, Rate):
                bucket_us, n_buckets = f.bucket_us, f.n_buckets
                num = counter_read([s.get(f.name + ":n") for s in targets], now_us, bucket_us, n_buckets)
                den = counter_read([s.get(f.name + ":d") for s in targets], now_us, bucket_us, n_buckets)
                values = f.finish(num, den)
            elif isinstance(f, Recency):
                last = np.array([s.get(f.name, -1) for s in targets], dtype=np.int64)
                values = Recency.finish(np.full(len(targets), now_us, dtype=np.int64), last)
            else:
                values = np.array([f.encode(s.get(f.name)) for s in targets], dtype=np.float64)
            out[f.name] = np.repeat(values, n) if f.entity == "user" else values
        return out
