"""The online path: feature state updated from the event stream, read at request time as arrays.

State lives in one record per entity (``user:<id>``, ``item:<id>``) in a :class:`KVStore`, with a
bounded write-back cache of decoded records in front of it: memory stays flat while ingesting (the
cache is bounded; the store holds the online state itself, one small record per entity). An item's
record is a fixed-width binary row (:class:`ItemRow`), so a read of 500 candidates decodes them
with one ``np.frombuffer`` and sums every window with one vectorized pass.

Ordering: events may arrive out of time order. Windowed counts place a late event in its bucket
(and drop it only when its bucket has already left every window, where offline would not count it
either); recency keeps the maximum time; the last-N sequence is kept sorted by (time, event id).
So the values do not depend on arrival order, and equal the offline ones (the skew test proves it).
"""

from __future__ import annotations

import json
import math
from bisect import insort
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa

from recstack.errors import RecstackError
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
from recstack.features.rings import RingLayout, counter_read, layout_values, ring_add, ring_totals
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


class ItemRow:
    """Where an item's state sits in its fixed-width int64 row, the binary record the store keeps:
    the item definitions' rings and recencies (laid out as the feed's columnar state lays them out,
    :class:`~recstack.features.rings.RingLayout`), then per item attribute its code (float64 bits)
    and upsert time, then ``item_age``'s creation time (float64 bits) and upsert time. So 500
    candidates are one ``MGET``, one ``np.frombuffer`` and column reads, with no decoding per item."""

    def __init__(self, features: Sequence[AnyFeature], attributes: dict[str, Attribute]) -> None:
        self.rings = RingLayout(features, "item")
        width = self.rings.width
        self.attribute: dict[str, int] = {}  # attribute name -> column of its code (time: +1)
        for name, attribute in attributes.items():
            if attribute.entity == "item":
                self.attribute[name] = width
                width += 2
        self.created: dict[str, int] = {}  # item_age name -> column of the creation time (time: +1)
        for f in features:
            if isinstance(f, ItemAge):
                self.created[f.name] = width
                width += 2
        self.width = width
        empty = np.full(width, -1, dtype=np.int64)  # upsert times: none yet
        empty[: self.rings.width] = self.rings.empty
        for name, col in self.attribute.items():
            empty[col] = _bits(attributes[name].encode(None))
        for col in self.created.values():
            empty[col] = _bits(math.nan)
        self.empty = empty
        self.empty_bytes = empty.tobytes()

    def floats(self, rows: np.ndarray, col: int) -> np.ndarray:
        """(N, W) rows -> (N,) float64 values held as bits in column ``col``."""
        out: np.ndarray = np.ascontiguousarray(rows[:, col]).view(np.float64)
        return out


def _bits(value: float) -> int:
    """A float64 as the int64 with the same bits (how floats sit in an item row)."""
    return int(np.float64(value).view(np.int64))


def _float(bits: Any) -> float:
    return float(np.int64(bits).view(np.float64))


class OnlineFeatures:
    """Applies events to feature state and reads feature values for (user, candidate items).

    Records: ``item:<id>`` an :class:`ItemRow` (binary, fixed width); ``user:<id>`` a JSON object
    (one user per request: its rings, recencies, attributes, last-N sequences and the per-value rings
    of each ``attribute_rate``); ``text:<id>`` a JSON object with the item's latest text, only where a
    ``text_embedding`` is defined."""

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
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._dirty: set[str] = set()
        self.late_dropped = 0
        self.applied = 0
        self._attributes = {f.name: f for f in self.features if isinstance(f, Attribute)}
        for f in self.features:
            if isinstance(f, AttributeRate):
                key_attribute = f.key()
                self._attributes[key_attribute.name] = key_attribute
        self.item = ItemRow(self.features, self._attributes)
        rings, last = self.item.rings.rings, self.item.rings.last
        # kind -> operations; each op: (op, entity, state key, arg1, arg2, column of an item row)
        self._ops: dict[str, list[tuple[str, str, str, int, int, int]]] = {}
        for f in self.features:
            if isinstance(f, Counter | Rate):
                ring_keys = (
                    [(f.name, f.kinds)]
                    if isinstance(f, Counter)
                    else [(f.name + ":n", f.numerator), (f.name + ":d", f.denominator)]
                )
                for key, kinds in ring_keys:
                    col = rings[key][0] if f.entity == "item" else -1
                    for kind in kinds:
                        self._add(kind, ("count", f.entity, key, f.bucket_us, f.n_buckets, col))
            elif isinstance(f, Recency):
                col = last[f.name] if f.entity == "item" else -1
                for kind in f.kinds:
                    self._add(kind, ("last", f.entity, f.name, 0, 0, col))
            elif isinstance(f, LastN):
                for kind in f.kinds:
                    self._add(kind, ("seq", "user", f.name, f.n, 0, -1))
            elif isinstance(f, AttributeRate):  # the item's key value, then the user's ring per value
                key_name = f.key().name
                self._add("item", ("attr", "item", key_name, 0, 0, self.item.attribute[key_name]))
                for kind in f.numerator:
                    self._add(kind, ("xcount", "user", f.name + ":n", f.bucket_us, f.n_buckets, -1))
                for kind in f.denominator:
                    self._add(kind, ("xcount", "user", f.name + ":d", f.bucket_us, f.n_buckets, -1))
            elif isinstance(f, Attribute):
                col = self.item.attribute[f.name] if f.entity == "item" else -1
                self._add(f.entity, ("attr", f.entity, f.name, 0, 0, col))
            elif isinstance(f, TextEmbedding):
                self._add("item", ("text", "text", f.name, 0, 0, -1))
            elif isinstance(f, ItemAge):
                self._add("item", ("created", "item", f.name, 0, 0, self.item.created[f.name]))
        self._texts = any(isinstance(f, TextEmbedding) for f in self.features)

    def _add(self, kind: str, op: tuple[str, str, str, int, int, int]) -> None:
        self._ops.setdefault(kind, []).append(op)

    # ------------------------------------------------------------------ state cache
    def _states(self, keys: Sequence[str]) -> list[Any]:
        """The records of ``keys`` (item rows as (W,) int64 arrays, the others as dicts), read from
        the store where the cache lacks them."""
        cache = self._cache
        missing = [k for k in keys if k not in cache]
        if missing:
            missing = list(dict.fromkeys(missing))
            raws = self.store.get_many(missing)
            items = [n for n, k in enumerate(missing) if k.startswith("item:")]
            if items:
                rows = self._decode_rows([missing[n] for n in items], [raws[n] for n in items])
                for n, row in zip(items, rows, strict=True):
                    cache[missing[n]] = row
            for key, raw in zip(missing, raws, strict=True):
                if not key.startswith("item:"):
                    cache[key] = json.loads(raw) if raw is not None else {}
        if self.in_process:  # nothing is evicted, so the order of use does not matter
            return list(map(cache.__getitem__, keys))
        out = []
        for key in keys:
            cache.move_to_end(key)
            out.append(cache[key])
        return out

    def _decode_rows(self, keys: list[str], raws: list[bytes | None]) -> np.ndarray:
        """Item records -> (N, W) rows (one buffer for all; a missing record is the empty row)."""
        size = len(self.item.empty_bytes)
        blobs = [raw if raw is not None else self.item.empty_bytes for raw in raws]
        for key, blob in zip(keys, blobs, strict=True):
            if len(blob) != size:
                raise RecstackError(
                    f"online record '{key}' is {len(blob)} bytes where the [[features]] lay an item out "
                    f"in {size}: it was written under other definitions (or is corrupt); clear the "
                    "store's keys (the [online] prefix) and rebuild the state from the log"
                )
        rows: np.ndarray = np.frombuffer(b"".join(blobs), dtype=np.int64).reshape(len(blobs), -1).copy()
        return rows

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
            self.store.put_many({k: _encode(cache[k]) for k in self._dirty})
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
            for op, entity, key, a1, a2, col in self._ops[kind]:
                entity_id = users[n] if entity == "user" else items[n]
                if entity_id is None:
                    continue
                state = states[f"{entity}:{entity_id}"]
                if op == "count":
                    if col >= 0:  # an item row: the ring sits at a fixed column
                        if not ring_add(state[col : col + 1 + a2], t // a1, a2):
                            self.late_dropped += 1
                    else:
                        self._count(state, key, t, a1, a2)
                elif op == "xcount":
                    if items[n] is not None:
                        code = self._key_code(key, states[f"item:{items[n]}"])
                        if code:
                            self._count(state, f"{key}@{code}", t, a1, a2)
                elif op == "last":
                    if col >= 0:
                        if state[col] < t:
                            state[col] = t
                    elif state.get(key, -1) < t:
                        state[key] = t
                elif op == "seq":
                    seq = state.setdefault(key, [])
                    insort(seq, [t, event_ids[n], items[n]])
                    if len(seq) > a1:
                        del seq[: len(seq) - a1]
                elif op == "created":  # the latest upsert by time wins
                    assert created is not None
                    if state[col + 1] <= t:
                        state[col] = _bits(created[n] if created[n] is not None else t)
                        state[col + 1] = t
                elif op == "text":  # the latest upsert by time wins; embedded when read
                    assert texts is not None
                    if state.get(key + ":t", -1) <= t:
                        state[key] = texts[n]
                        state[key + ":t"] = t
                else:  # attr: the latest upsert by time wins
                    assert attributes is not None and creators is not None
                    last_t = state[col + 1] if col >= 0 else state.get(key + ":t", -1)
                    if last_t <= t:
                        attrs = json.loads(attributes[n]) if attributes[n] else None
                        raw = attribute_raw(self._attributes[key], creators[n], attrs)
                        if col >= 0:  # items keep the code, users the raw value
                            state[col] = _bits(self._attributes[key].encode(raw))
                            state[col + 1] = t
                        else:
                            state[key] = raw
                            state[key + ":t"] = t
        self.applied += len(kinds)
        self._trim()
        return len(kinds)

    def _key_code(self, ring_key: str, item_row: np.ndarray) -> int:
        """The code of an item's value of an attribute_rate's field (0: none), from its ring key."""
        name = ring_key.rsplit(":", 1)[0] + "_key"
        return int(_float(item_row[self.item.attribute[name]]))

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
        keys = [f"user:{user_id}", *(f"item:{i}" for i in item_ids)]
        if self._texts:
            keys += [f"text:{i}" for i in item_ids]
        states = self._states(keys)
        user_state = states[0]
        rows = (
            np.concatenate(states[1 : 1 + n]).reshape(n, self.item.width)
            if n
            else self.item.empty[None, :].repeat(0, axis=0)
        )
        self._trim()
        layout = self.item.rings
        totals = ring_totals(layout, rows, now_us)  # (N, K): every item ring's window total
        out: dict[str, np.ndarray] = {}
        for f in self.features:
            if isinstance(f, Context):
                out[f.name] = np.repeat(context_values(f, np.array([now_us]), [surface], [context]), n)
            elif isinstance(f, LastN):
                seq = [entry[2] for entry in reversed(user_state.get(f.name, []))]
                column = np.empty(n, dtype=object)
                column[:] = [seq] * n
                out[f.name] = column
            elif isinstance(f, TextEmbedding):
                texts = [s.get(f.name) for s in states[1 + n :]]
                out[f.name] = shared_encoder().embed(texts)  # (N, 384)
            elif isinstance(f, RetrievalScore):  # computed by serving from the towers, not kept here
                out[f.name] = np.full(n, np.nan)
            elif isinstance(f, ItemAge):
                out[f.name] = (now_us - self.item.floats(rows, self.item.created[f.name])) / US
            elif isinstance(f, AttributeRate):
                codes = self.item.floats(rows, self.item.attribute[f.key().name]).astype(np.int64)
                unique, inverse = np.unique(codes, return_inverse=True)
                window = (now_us, f.bucket_us, f.n_buckets)
                num = counter_read([user_state.get(f"{f.name}:n@{c}") for c in unique.tolist()], *window)
                den = counter_read([user_state.get(f"{f.name}:d@{c}") for c in unique.tolist()], *window)
                out[f.name] = f.finish(num, den)[inverse.reshape(-1)]
            elif f.entity == "item":
                out[f.name] = self._item_values(f, rows, totals, now_us)
            else:
                out[f.name] = np.repeat(self._user_value(f, user_state, now_us), n)
        return out

    def _item_values(self, f: AnyFeature, rows: np.ndarray, totals: np.ndarray, now_us: int) -> np.ndarray:
        layout = self.item.rings
        if isinstance(f, Counter | Rate | Recency):
            return layout_values(f, layout, rows[:, layout.last_col], totals, now_us)
        assert isinstance(f, Attribute)
        return self.item.floats(rows, self.item.attribute[f.name])

    def _user_value(self, f: AnyFeature, state: State, now_us: int) -> np.ndarray:
        if isinstance(f, Counter):
            return counter_read([state.get(f.name)], now_us, f.bucket_us, f.n_buckets).astype(np.float64)
        if isinstance(f, Rate):
            window = (now_us, f.bucket_us, f.n_buckets)
            return f.finish(
                counter_read([state.get(f.name + ":n")], *window),
                counter_read([state.get(f.name + ":d")], *window),
            )
        if isinstance(f, Recency):
            last = np.array([state.get(f.name, -1)], dtype=np.int64)
            return Recency.finish(np.array([now_us], dtype=np.int64), last)
        assert isinstance(f, Attribute)
        return np.array([f.encode(state.get(f.name))], dtype=np.float64)


def _encode(record: Any) -> bytes:
    """A record as the store keeps it: an item row's bytes, or compact JSON."""
    if isinstance(record, np.ndarray):
        return record.tobytes()
    return json.dumps(record, separators=(",", ":")).encode()
