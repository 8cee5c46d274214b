"""The feed's online feature state, laid out for reading hundreds of candidates at once.

The same ``[[features]]`` definitions as the offline path (``offline.materialize``) and the standalone
store (``online.OnlineFeatures``), with the same update rules (windowed counts in buckets, the
latest time for recency, the last-N sequence sorted by (time, event id), attributes from the latest
upsert by time), so a value read here equals the offline value at the same moment. What differs is
the layout, keyed by the catalog's item index (0..n-1, as :class:`~recstack.serving.state.FeedState`
numbers items):

- item counters and recencies: one int64 row per item that had such an event, in one matrix
  (``item_rows``, with ``item_row`` mapping item index -> row; row 0 is the empty row every other
  item reads), each windowed count a ring ``[latest bucket, c_0 .. c_{n-1}]`` at a fixed offset;
- item attributes: one float64 array over the catalog per attribute, with the upsert times;
- user counters and recencies: the same row layout, one row per user seen (``user_row``); user
  attributes and last-N sequences in small per-user records (one user per request);
- an ``attribute_rate`` (the user's rate on the candidate's topic, say): each item's key value in
  an array over the catalog, and one row of two rings per (user, value) the user had an event on.

So a read of 500 candidates is a fancy index of 500 rows and a few vectorized window sums. The state
is written by the owner's event loop (``upsert_item``, ``upsert_user``, ``observe``, each adding what it
moved to a :class:`FeatureChanges`) and travels in the owner's snapshots (``capture``, ``load``,
``apply_delta``).

Text embeddings are not kept here (384 floats an item); a ``text_embedding`` definition is refused
by ``feed_features`` with a clear error.
"""

from __future__ import annotations

import json
import math
from bisect import insort
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recstack.errors import ConfigError
from recstack.features.definitions import (
    US,
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
)
from recstack.features.online import AnyFeature, attribute_raw, context_values
from recstack.features.rings import NEVER, RingLayout, layout_values, ring_add, ring_totals


@dataclass
class FeatureChanges:
    """Items and users whose feature state moved since the last capture (what a delta carries)."""

    items: set[int] = field(default_factory=set)
    users: set[str] = field(default_factory=set)


def feed_features(features: Sequence[AnyFeature]) -> list[AnyFeature]:
    """The definitions the feed keeps online; ConfigError for a kind it cannot keep."""
    out: list[AnyFeature] = []
    for f in features:
        if isinstance(f, TextEmbedding):
            raise ConfigError(
                f"feature '{f.name}' (text_embedding) is not kept by the feed's online state yet, so "
                "the feed's rankers cannot read it: remove it from [[features]] for the feed (`recstack "
                "features materialize` does compute it for a training set of your own)"
            )
        out.append(f)
    return out


class _Table:
    """Rows of int64 slots, grown by doubling; row 0 is the empty row (rings never counted,
    recencies -1). Beside them, a cache of each row's ring totals (``ring_totals``) and the bucket of
    each ring they hold for (``totals_at``; NEVER: not cached): a window total changes only when the
    ring is written or the window moves on by a bucket, so most reads of a hot item take the cached
    totals instead of summing its slots again."""

    def __init__(self, empty: np.ndarray, n_rings: int) -> None:
        self.empty = empty
        self.n_rings = n_rings
        self.rows = np.tile(empty, (64, 1))
        self.totals = np.zeros((64, n_rings), dtype=np.int64)
        self.totals_at = np.full((64, n_rings), NEVER, dtype=np.int64)
        self.n = 1

    def add(self, count: int = 1) -> int:
        """Room for ``count`` new rows; returns the first one's index."""
        while self.n + count > len(self.rows):
            size = len(self.rows)
            self.rows = np.concatenate([self.rows, np.tile(self.empty, (size, 1))])
            self.totals = np.concatenate([self.totals, np.zeros((size, self.n_rings), dtype=np.int64)])
            self.totals_at = np.concatenate([self.totals_at, np.full((size, self.n_rings), NEVER)])
        self.n += count
        return self.n - count

    def set_rows(self, rows: np.ndarray) -> None:
        """Replace every row (a whole snapshot's; row 0 included); the totals cache starts empty."""
        self.rows = np.concatenate([rows, np.tile(self.empty, (max(64, len(rows) // 4), 1))])
        self.totals = np.zeros((len(self.rows), self.n_rings), dtype=np.int64)
        self.totals_at = np.full((len(self.rows), self.n_rings), NEVER, dtype=np.int64)
        self.n = len(rows)

    def cached_totals(self, layout: RingLayout, rows: np.ndarray, now_us: int) -> np.ndarray:
        """(R,) row indices -> (R, K) ring totals at ``now_us``, equal to ``ring_totals`` of those
        rows (tested): rows cached for the buckets of ``now_us`` are read, the others summed and
        cached."""
        current = now_us // layout.ring_bucket  # (K,)
        stale = np.flatnonzero((self.totals_at[rows] != current).any(axis=1))
        if len(stale):
            fresh = rows[stale]
            self.totals[fresh] = ring_totals(layout, self.rows[fresh], now_us)
            self.totals_at[fresh] = current
        out: np.ndarray = self.totals[rows]
        return out

    def counted(self, row: int, ring: int, bucket: int, n_buckets: int) -> None:
        """One event was added to ring ``ring`` of ``row`` in ``bucket``: the cached total takes it
        when the bucket is inside the cached window, and is dropped when the bucket is newer (the
        ring may have moved past buckets of that window)."""
        at = self.totals_at[row, ring]
        if at == NEVER:
            return
        if at - n_buckets < bucket <= at:
            self.totals[row, ring] += 1
        elif bucket > at:
            self.totals_at[row, ring] = NEVER

    def forget(self, rows: np.ndarray) -> None:
        """These rows were overwritten: their cached totals no longer hold."""
        self.totals_at[rows] = NEVER


class _UserKeyed:
    """An ``attribute_rate``'s state: rows of its two rings (numerator, denominator) per (user,
    value of the item attribute), in a table laid out as a user Rate's."""

    def __init__(self, f: AttributeRate) -> None:
        self.feature = f
        self.layout = RingLayout(
            [
                Rate(
                    name=f.name,
                    entity="user",
                    numerator=f.numerator,
                    denominator=f.denominator,
                    window=f.window,
                    bucket=f.bucket,
                )
            ],
            "user",
        )
        self.table = _Table(self.layout.empty, 2)
        self.index: dict[str, dict[int, int]] = {}  # user -> value code -> row

    def row(self, user_id: str, code: int) -> int:
        mine = self.index.setdefault(user_id, {})
        row = mine.get(code, 0)
        if row == 0:
            row = mine[code] = self.table.add()
        return row

    def read(self, user_id: str | None, codes: np.ndarray, now_us: int) -> np.ndarray:
        unique, inverse = np.unique(codes.astype(np.int64), return_inverse=True)
        mine = self.index.get(user_id or "", {})
        rows = np.array([mine.get(c, 0) for c in unique.tolist()], dtype=np.int64)
        totals = ring_totals(self.layout, self.table.rows[rows], now_us)  # (U, 2): numerator, denominator
        values: np.ndarray = self.feature.finish(totals[:, 0], totals[:, 1])[inverse]
        return values

    def capture(self, users: list[str]) -> tuple[list[list[Any]], np.ndarray]:
        pairs = [(u, code) for u in users for code in self.index.get(u, {})]
        rows = np.array([self.index[u][code] for u, code in pairs], dtype=np.int64)
        keys: list[list[Any]] = [[u, code] for u, code in pairs]
        return keys, self.table.rows[rows]

    def check(self, keys: list[list[Any]], rows: np.ndarray) -> None:
        if rows.shape != (len(keys), self.layout.width):
            raise ValueError(f"'{self.feature.name}' rows of shape {rows.shape} for {len(keys)} keys")

    def put(self, keys: list[list[Any]], rows: np.ndarray) -> None:
        for (user, code), values in zip(keys, rows, strict=True):
            row = self.row(str(user), int(code))  # first: it may grow the table
            self.table.rows[row] = values

    def clear(self) -> None:
        self.table = _Table(self.layout.empty, 2)
        self.index = {}


@dataclass
class Delta:
    """A delta capture as ``read_delta`` checked it."""

    n_items: int
    items: np.ndarray  # (K,) catalog indices
    rows: np.ndarray  # (K, W) their item rows
    attributes: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (values, times), (K,) each
    users: list[tuple[str, np.ndarray, dict[str, Any]]]
    late_dropped: int
    keyed: dict[str, tuple[list[list[Any]], np.ndarray]] = field(default_factory=dict)


class ColumnarFeatures:
    def __init__(self, features: Sequence[AnyFeature]) -> None:
        self.features = feed_features(features)
        self.definitions = [f.model_dump(mode="json") for f in self.features]
        self.item_layout = RingLayout(self.features, "item")
        self.user_layout = RingLayout(self.features, "user")
        # event kind -> [(entity, state key, kind of state)]
        self.ops: dict[str, list[tuple[str, str, str]]] = {}
        for f in self.features:
            if isinstance(f, Counter):
                for kind in f.kinds:
                    self.ops.setdefault(kind, []).append((f.entity, f.name, "count"))
            elif isinstance(f, Rate):
                for kind in f.numerator:
                    self.ops.setdefault(kind, []).append((f.entity, f.name + ":n", "count"))
                for kind in f.denominator:
                    self.ops.setdefault(kind, []).append((f.entity, f.name + ":d", "count"))
            elif isinstance(f, Recency):
                for kind in f.kinds:
                    self.ops.setdefault(kind, []).append((f.entity, f.name, "last"))
            elif isinstance(f, LastN):
                for kind in f.kinds:
                    self.ops.setdefault(kind, []).append(("user", f.name, "seq"))
            elif isinstance(f, AttributeRate):
                for kind in f.numerator:
                    self.ops.setdefault(kind, []).append(("keyed", f.name + ":n", "count"))
                for kind in f.denominator:
                    self.ops.setdefault(kind, []).append(("keyed", f.name + ":d", "count"))
        self.keyed = {f.name: _UserKeyed(f) for f in self.features if isinstance(f, AttributeRate)}
        self.sequences = {f.name: f.n for f in self.features if isinstance(f, LastN)}
        self.item_attributes = [f for f in self.features if isinstance(f, Attribute) and f.entity == "item"]
        self.user_attributes = [f for f in self.features if isinstance(f, Attribute) and f.entity == "user"]
        # what the catalog keeps per item: the item attributes, and each attribute_rate's key value
        self.stored = self.item_attributes + [f.key() for f in self.features if isinstance(f, AttributeRate)]
        self.items = _Table(self.item_layout.empty, len(self.item_layout.ring_n))
        self.item_row = np.zeros(0, dtype=np.int64)  # item index -> row (0: none yet)
        self.attr = {f.name: np.zeros(0) for f in self.stored}  # encoded values per item
        self.attr_t = {f.name: np.zeros(0, dtype=np.int64) for f in self.stored}
        self.users = _Table(self.user_layout.empty, len(self.user_layout.ring_n))
        self.user_row: dict[str, int] = {}
        self.user_records: dict[str, dict[str, Any]] = {}  # attributes (value, time) and sequences
        self.late_dropped = 0

    # ------------------------------------------------------------------ writes
    def add_items(self, n_items: int) -> None:
        """Make room for items 0..n_items-1 (the catalog grew); capacity doubles, so adding items one
        at a time costs amortized O(1) each."""
        if n_items <= len(self.item_row):
            return
        cap = max(n_items, 2 * len(self.item_row), 1024)
        self.item_row = _grown(self.item_row, cap, 0)
        for f in self.stored:
            self.attr[f.name] = _grown(self.attr[f.name], cap, _missing(f))
            self.attr_t[f.name] = _grown(self.attr_t[f.name], cap, -1)

    def upsert_item(
        self,
        item: int,
        t_us: int,
        creator_id: str | None,
        attributes: dict[str, Any],
        changes: FeatureChanges,
    ) -> None:
        """An item upsert at ``t_us``: attributes take its values when it is the latest by time."""
        for f in self.stored:
            if self.attr_t[f.name][item] <= t_us:
                self.attr[f.name][item] = f.encode(attribute_raw(f, creator_id, attributes))
                self.attr_t[f.name][item] = t_us
        if self.stored:
            changes.items.add(item)

    def upsert_user(
        self, user_id: str, t_us: int, attributes: dict[str, Any], changes: FeatureChanges
    ) -> None:
        if not self.user_attributes:
            return
        record = self.user_records.setdefault(user_id, {})
        for f in self.user_attributes:
            _, at = record.get(f.name, (None, -1))
            if at <= t_us:
                record[f.name] = (f.encode(attribute_raw(f, None, attributes)), t_us)
        changes.users.add(user_id)

    def observe(
        self,
        kind: str,
        t_us: int,
        user_id: str | None,
        item: int | None,
        event_id: str,
        changes: FeatureChanges,
    ) -> None:
        """One impression or engagement (``item``: its catalog index) at ``t_us``; what it moved is
        added to ``changes``."""
        ops = self.ops.get(kind)
        if not ops:
            return
        for entity, key, op in ops:
            if entity == "item":
                if item is None:
                    continue
                row = int(self.item_row[item])
                if row == 0:
                    row = self.item_row[item] = self.items.add()
                table, layout = self.items.rows, self.item_layout
                changes.items.add(item)
            elif entity == "keyed":  # the user's ring for the item's value of the attribute
                if user_id is None or item is None:
                    continue
                keyed = self.keyed[key[:-2]]
                code = int(self.attr[key[:-2] + "_key"][item])
                if code == 0:
                    continue
                row = keyed.row(user_id, code)
                table, layout = keyed.table.rows, keyed.layout
                changes.users.add(user_id)
            else:
                if user_id is None:
                    continue
                if op == "seq":
                    if item is None:
                        continue
                    record = self.user_records.setdefault(user_id, {})
                    seq = record.setdefault(key, [])
                    insort(seq, [t_us, event_id, item])
                    if len(seq) > self.sequences[key]:
                        del seq[: len(seq) - self.sequences[key]]
                    changes.users.add(user_id)
                    continue
                row = self.user_row.get(user_id, 0)
                if row == 0:
                    row = self.user_row[user_id] = self.users.add()
                table, layout = self.users.rows, self.user_layout
                changes.users.add(user_id)
            if op == "count":
                offset, n_buckets, bucket_us = layout.rings[key]
                bucket = t_us // bucket_us
                if not ring_add(table[row, offset : offset + 1 + n_buckets], bucket, n_buckets):
                    self.late_dropped += 1
                elif entity == "item":
                    self.items.counted(row, layout.ring_index[key], bucket, n_buckets)
            elif table[row, layout.last[key]] < t_us:
                table[row, layout.last[key]] = t_us

    # ------------------------------------------------------------------ reads
    def read(
        self,
        user_id: str | None,
        items: np.ndarray,
        now_us: int,
        surface: str | None = None,
        context: dict[str, str] | None = None,
        created_us: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Values for one request: name -> (N,) float64 over ``items`` (catalog indices); user and
        context values repeated per row; a last-N sequence as an object array of item-index lists
        (most recent first); ``created_us``: the catalog's creation times (item_age).
        ``retrieval_score`` is the caller's (NaN here)."""
        n = len(items)
        layout = self.item_layout
        row_of = self.item_row[items]  # (N,) rows; 0: the empty row (no counted event yet)
        last = self.items.rows[row_of[:, None], layout.last_col[None, :]]  # (N, recencies)
        item_totals = np.zeros((n, len(layout.ring_n)), dtype=np.int64)
        active = np.flatnonzero(row_of)
        if len(active) and len(layout.ring_n):
            item_totals[active] = self.items.cached_totals(layout, row_of[active], now_us)
        user = self.users.rows[self.user_row.get(user_id or "", 0)]  # (W_u,)
        record = self.user_records.get(user_id or "", {})
        out: dict[str, np.ndarray] = {}
        user_totals = ring_totals(self.user_layout, user[None, :], now_us)
        user_last = user[None, self.user_layout.last_col]
        for f in self.features:
            if isinstance(f, Counter | Rate | Recency):
                if f.entity == "item":
                    out[f.name] = layout_values(f, layout, last, item_totals, now_us)
                else:
                    value = layout_values(f, self.user_layout, user_last, user_totals, now_us)
                    out[f.name] = np.repeat(value, n)
            elif isinstance(f, AttributeRate):
                out[f.name] = self.keyed[f.name].read(user_id, self.attr[f.name + "_key"][items], now_us)
            elif isinstance(f, Attribute):
                if f.entity == "item":
                    out[f.name] = self.attr[f.name][items].astype(np.float64)
                else:
                    value = record.get(f.name, (_missing(f), -1))[0]
                    out[f.name] = np.full(n, value, dtype=np.float64)
            elif isinstance(f, Context):
                out[f.name] = np.repeat(context_values(f, np.array([now_us]), [surface], [context]), n)
            elif isinstance(f, LastN):
                seq = [entry[2] for entry in reversed(record.get(f.name, []))]
                column = np.empty(n, dtype=object)
                column[:] = [seq] * n
                out[f.name] = column
            elif isinstance(f, ItemAge):
                born = created_us[items].astype(np.float64) if created_us is not None else np.full(n, np.nan)
                out[f.name] = (now_us - born) / US
            elif isinstance(f, RetrievalScore):
                out[f.name] = np.full(n, np.nan)
        return out

    # ------------------------------------------------------------------ snapshots
    def capture(
        self, n_items: int, changes: FeatureChanges | None = None
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(meta, arrays) of the whole state over items 0..n_items-1, or of the items and users in
        ``changes`` (a delta)."""
        delta = changes is not None
        items = sorted(changes.items) if changes is not None else list(range(n_items))
        if changes is not None:
            users = sorted(changes.users)
        else:
            keyed_users = [u for k in self.keyed.values() for u in k.index]
            users = list(dict.fromkeys([*self.user_records, *self.user_row, *keyed_users]))
        at = np.asarray(items, dtype=np.int64)
        arrays: dict[str, np.ndarray] = {"f_items": at}
        if delta:
            arrays["f_item_rows"] = self.items.rows[self.item_row[at]] if len(at) else self._no_rows("item")
        else:
            arrays["f_item_row"] = self.item_row[:n_items].copy()
            arrays["f_item_table"] = self.items.rows[: self.items.n].copy()
        for f in self.stored:
            arrays[f"f_attr:{f.name}"] = self.attr[f.name][at]
            arrays[f"f_attr_t:{f.name}"] = self.attr_t[f.name][at]
        keyed_meta = {}
        for name, keyed in self.keyed.items():
            keyed_meta[name], arrays[f"f_keyed:{name}"] = keyed.capture(users)
        user_rows = [self.user_row.get(u, 0) for u in users]
        arrays["f_user_rows"] = self.users.rows[np.asarray(user_rows, dtype=np.int64)]
        meta = {
            "definitions": self.definitions,
            "users": users,
            "records": [_encode_record(self.user_records.get(u, {})) for u in users],
            "late_dropped": self.late_dropped,
            "keyed": keyed_meta,
        }
        return meta, arrays

    def _no_rows(self, entity: str) -> np.ndarray:
        layout = self.item_layout if entity == "item" else self.user_layout
        return np.zeros((0, layout.width), dtype=np.int64)

    def load(self, meta: dict[str, Any], arrays: Any, n_items: int) -> None:
        """Take a whole capture (``capture(delta=False)``) as this state."""
        self._check(meta)
        item_row = np.asarray(arrays["f_item_row"], dtype=np.int64)
        if len(item_row) != n_items:
            raise ValueError(f"features of {len(item_row)} items for a catalog of {n_items}")
        keyed = self._read_keyed(meta, arrays)
        self.item_row = np.zeros(0, dtype=np.int64)
        for f in self.stored:
            self.attr[f.name], self.attr_t[f.name] = np.zeros(0), np.zeros(0, dtype=np.int64)
        self.add_items(n_items)
        self.item_row[:n_items] = item_row
        self.items.set_rows(np.asarray(arrays["f_item_table"], dtype=np.int64))
        for f in self.stored:
            self.attr[f.name][:n_items] = arrays[f"f_attr:{f.name}"]
            self.attr_t[f.name][:n_items] = arrays[f"f_attr_t:{f.name}"]
        users = self._read_users(meta, arrays)
        self.users = _Table(self.user_layout.empty, len(self.user_layout.ring_n))
        self.user_row, self.user_records = {}, {}
        self._put_users(users)
        for name, (keys, rows) in keyed.items():
            self.keyed[name].clear()
            self.keyed[name].put(keys, rows)
        self.late_dropped = int(meta["late_dropped"])

    def _read_keyed(self, meta: dict[str, Any], arrays: Any) -> dict[str, tuple[list[list[Any]], np.ndarray]]:
        out = {}
        for name, keyed in self.keyed.items():
            keys = meta["keyed"][name]
            rows = np.asarray(arrays[f"f_keyed:{name}"], dtype=np.int64).reshape(-1, keyed.layout.width)
            keyed.check(keys, rows)
            out[name] = (keys, rows)
        return out

    def apply_delta(self, meta: dict[str, Any], arrays: Any, n_items: int) -> None:
        """Write a delta capture over this state in place (its items and users take its values)."""
        self.write_delta(self.read_delta(meta, arrays, n_items))

    def read_delta(self, meta: dict[str, Any], arrays: Any, n_items: int) -> Delta:
        """A delta capture read and checked (ValueError, or numpy's errors, for a damaged one),
        ready for ``write_delta``: a damaged delta changes nothing."""
        self._check(meta)
        at = np.asarray(arrays["f_items"], dtype=np.int64)
        if len(at) and (at.min() < 0 or at.max() >= n_items):
            raise ValueError("feature entries of items outside the catalog")
        rows = np.asarray(arrays["f_item_rows"], dtype=np.int64)
        if rows.shape != (len(at), self.item_layout.width):
            raise ValueError(f"item feature rows of shape {rows.shape} for {len(at)} items")
        attrs = {
            f.name: (np.asarray(arrays[f"f_attr:{f.name}"]), np.asarray(arrays[f"f_attr_t:{f.name}"]))
            for f in self.stored
        }
        if any(len(a) != len(at) or len(b) != len(at) for a, b in attrs.values()):
            raise ValueError("item attribute entries do not match the delta's items")
        users = self._read_users(meta, arrays)
        keyed = self._read_keyed(meta, arrays)
        return Delta(n_items, at, rows, attrs, users, int(meta["late_dropped"]), keyed)

    def write_delta(self, delta: Delta) -> None:
        at, rows, attrs = delta.items, delta.rows, delta.attributes
        self.add_items(delta.n_items)
        if len(at):  # column-wise: an API process applies a delta of thousands of items a second
            fresh = (self.item_row[at] == 0) & (rows != self.item_layout.empty).any(axis=1)
            if fresh.any():
                first = self.items.add(int(fresh.sum()))
                self.item_row[at[fresh]] = np.arange(first, first + int(fresh.sum()))
            target = self.item_row[at]
            live = target > 0
            self.items.rows[target[live]] = rows[live]
            self.items.forget(target[live])
        for name, (values, times) in attrs.items():
            self.attr[name][at] = values
            self.attr_t[name][at] = times
        self._put_users(delta.users)
        for name, (keys, values) in delta.keyed.items():
            self.keyed[name].put(keys, values)
        self.late_dropped = delta.late_dropped

    def _check(self, meta: dict[str, Any]) -> None:
        if meta["definitions"] != self.definitions:
            raise ValueError("the snapshot's feature definitions are not this state's")

    def _read_users(self, meta: dict[str, Any], arrays: Any) -> list[tuple[str, np.ndarray, dict[str, Any]]]:
        rows = np.asarray(arrays["f_user_rows"], dtype=np.int64)
        if rows.shape != (len(meta["users"]), self.user_layout.width):
            raise ValueError(f"user feature rows of shape {rows.shape} for {len(meta['users'])} users")
        records = [_decode_record(r) for r in meta["records"]]
        return list(zip(meta["users"], rows, records, strict=True))

    def _put_users(self, users: list[tuple[str, np.ndarray, dict[str, Any]]]) -> None:
        for user, values, record in users:
            row = self.user_row.get(user, 0)
            if row == 0 and (values != self.user_layout.empty).any():
                row = self.user_row[user] = self.users.add()
            if row:
                self.users.rows[row] = values
            if record:
                self.user_records[user] = record
            else:
                self.user_records.pop(user, None)


def _grown(values: np.ndarray, size: int, fill: Any) -> np.ndarray:
    out = np.full(size, fill, dtype=values.dtype)
    out[: len(values)] = values
    return out


def _missing(f: Attribute) -> float:
    return 0.0 if f.kind == "categorical" else math.nan


def _encode_record(record: dict[str, Any]) -> str:
    """A user's attributes and sequences as JSON (a sequence entry: [time, event id, item index])."""
    return json.dumps(record, separators=(",", ":")) if record else ""


def _decode_record(raw: str) -> dict[str, Any]:
    if not raw:
        return {}
    record: dict[str, Any] = json.loads(raw)
    for key, value in record.items():
        if isinstance(value, list) and value and not isinstance(value[0], list):
            record[key] = tuple(value)  # an attribute's (value, time)
    return record
