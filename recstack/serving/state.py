"""The live state serving reads: the catalog, each user's recent engagements and seen items, trending
counts and the exploration posteriors, all updated from events by one ``apply``.

``FeedState.apply`` is the only writer (the worker calls it; in the embedded default the worker runs
in the API process). It skips event ids it has already applied, so at-least-once delivery changes the
state once per event; the applied ids are part of the snapshot, so a snapshot taken before the
deliveries are acknowledged makes a restart neither lose nor double-count an event.

Items live in a dense index space (0..n-1) in arrival order; columns grow by doubling. Users are
created on first sight. Unknown item ids in engagements are counted (``unknown_items``), not errors.

Snapshots come whole (``capture``, ``from_bytes``) or as deltas: with ``changes`` set, the state
records which users and item counters moved, and ``capture(delta=True)`` holds only those (each
changed user's lists whole, each changed counter's value), which ``apply_delta`` writes in place
over the state the delta was taken after. A worker writes a delta a second and a whole snapshot
now and then, so neither it nor the API processes that follow it handle every user each second.
"""

from __future__ import annotations

import io
import itertools
import json
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import TypeAdapter

from recstack.config import Settings
from recstack.errors import CheckpointError
from recstack.features.columnar import ColumnarFeatures, FeatureChanges
from recstack.features.definitions import FeatureDef, exact_us
from recstack.features.online import AnyFeature
from recstack.index.sources import TrendingSource
from recstack.safety.items import BLOCK, REVIEW, UNSCORED, safety_code
from recstack.schema import Engagement, Event, Impression, ItemUpsert, UserUpsert

POSITIVE = ("click", "like", "share", "comment")  # engagements that enter a user's history
NEGATIVE = ("hide", "report")  # engagements that block the item for the user


class _Column:
    """A numpy column that grows by doubling; ``values`` is the live prefix."""

    def __init__(self, dtype: Any, fill: Any = 0) -> None:
        self.data = np.full(1024, fill, dtype=dtype)
        self.fill = fill
        self.n = 0

    def append(self, value: Any) -> None:
        if self.n == len(self.data):
            grown = np.full(2 * len(self.data), self.fill, dtype=self.data.dtype)
            grown[: self.n] = self.data
            self.data = grown
        self.data[self.n] = value
        self.n += 1

    @property
    def values(self) -> np.ndarray:
        return self.data[: self.n]

    @classmethod
    def sparse(cls, n: int, at: np.ndarray, values: np.ndarray) -> _Column:
        """A float column of ``n`` zeros but ``values`` at ``at``. Zeroed memory from the OS costs
        nothing until written, so loading a snapshot writes only the nonzero entries (a snapshot
        load per second at 1M items would otherwise write tens of MB each time)."""
        column = cls(np.dtype(np.float64), 0.0)
        column.data = np.zeros(n + max(1024, n // 8))
        column.data[at] = values
        column.n = n
        return column

    @classmethod
    def of(cls, values: np.ndarray, fill: Any = 0) -> _Column:
        column = cls(values.dtype, fill)
        column.data = np.concatenate([values, np.full(max(1024, len(values)), fill, dtype=values.dtype)])
        column.n = len(values)
        return column


@dataclass
class Changes:
    """What moved since the last capture: users whose lists changed, items whose impression or click
    counts changed, items whose trending count was added to."""

    users: set[str] = field(default_factory=set)
    items: set[int] = field(default_factory=set)
    trending: set[int] = field(default_factory=set)
    features: FeatureChanges = field(default_factory=FeatureChanges)


@dataclass
class UserState:
    history: deque[int]  # engaged item indices, most recent first
    seen: OrderedDict[int, None] = field(default_factory=OrderedDict)  # bounded, oldest first
    blocked: set[int] = field(default_factory=set)  # hidden or reported by this user


class Exclusions:
    """A user's seen and hidden items as one read-only collection, without copying them per request.
    ``mask`` tests candidates against it: by binary search in a sorted copy when the exclusions are
    few next to the candidates (the copy is made once per view), else one set lookup per candidate,
    so a user with thousands of seen items costs what their candidates cost."""

    __slots__ = ("_sorted", "blocked", "seen")

    def __init__(self, seen: OrderedDict[int, None], blocked: set[int]) -> None:
        self.seen = seen
        self.blocked = blocked
        self._sorted: np.ndarray | None = None

    def __contains__(self, item: object) -> bool:
        return item in self.seen or item in self.blocked

    def __len__(self) -> int:
        return len(self.seen) + sum(1 for b in self.blocked if b not in self.seen)

    def __iter__(self) -> Iterator[int]:
        yield from self.seen
        yield from (b for b in self.blocked if b not in self.seen)

    def mask(self, items: np.ndarray) -> np.ndarray:
        seen, blocked = self.seen, self.blocked
        if self._sorted is None and len(seen) + len(blocked) <= 4 * len(items):
            size = len(seen) + len(blocked)
            self._sorted = np.unique(np.fromiter(itertools.chain(seen, blocked), dtype=np.int64, count=size))
        table = self._sorted
        if table is not None:
            if not len(table):
                return np.zeros(len(items), dtype=bool)
            at = np.minimum(np.searchsorted(table, items), len(table) - 1)
            out: np.ndarray = table[at] == items
            return out
        return np.fromiter((i in seen or i in blocked for i in items.tolist()), dtype=bool, count=len(items))


class FeedState:
    def __init__(
        self,
        history: int = 50,
        seen_limit: int = 5_000,
        half_life_s: float = 21_600.0,
        trending_weights: dict[str, float] | None = None,
        features: Sequence[AnyFeature] = (),
        text_fields: Sequence[str] = ("text", "title", "description"),
        unsafe_threshold: float = 0.5,
    ) -> None:
        self.history_length = history
        self.text_fields = tuple(text_fields)  # what moderation scores ([safety] text_fields)
        self.unsafe_threshold = unsafe_threshold  # for a client's own score ([serving])
        self.seen_limit = seen_limit
        self.trending_weights = trending_weights or {"click": 1.0, "like": 2.0, "comment": 2.0, "share": 3.0}
        self.item_ids: list[str] = []
        self.item_index: dict[str, int] = {}
        self.creators: list[str] = []
        self.creator_code: dict[str, int] = {}
        self.creator = _Column(np.int32, -1)
        self.created_us = _Column(np.int64, 0)
        self.unsafe = _Column(np.float32, 0.0)  # the unsafe score (the model's, else the client's)
        self.safety = _Column(np.int8, 0)  # ALLOW, REVIEW or BLOCK, | UNSCORED (recstack.safety.items)
        self._creator_rate: tuple[int, float, np.ndarray] | None = None  # (catalog version, prior, rates)
        self.removed = _Column(np.bool_, False)
        self.impressions = _Column(np.float64, 0.0)  # exploration posteriors: Beta(1 + clicks, 1 + misses)
        self.clicks = _Column(np.float64, 0.0)
        self.trending = TrendingSource(0, half_life_s)
        self.users: dict[str, UserState] = {}
        self.applied: set[str] = set()
        self.served: dict[str, int] = {}  # request id -> its impressions not yet acknowledged
        self.unknown_items = 0
        self.lock = threading.RLock()
        self.synced_lists: dict[str, Any] | None = None  # the users' lists of the snapshot loaded
        self.version = 0  # bumped by every apply
        self.catalog_version = 0  # bumped when items are added or changed
        self.changes: Changes | None = None  # tracked (for delta snapshots) when set
        self.features = ColumnarFeatures(features)  # the [[features]] online, read by the rankers

    @classmethod
    def for_settings(cls, settings: Settings) -> FeedState:
        """An empty state sized by ``[serving]`` and ``[retrieval]``."""
        cfg = settings.serving
        return cls(
            cfg.history,
            cfg.seen_limit,
            settings.retrieval.trending_half_life_s,
            settings.retrieval.trending_weights,
            settings.features,
            settings.safety.text_fields,
            cfg.unsafe_threshold,
        )

    # ------------------------------------------------------------------ reads
    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def safety_counts(self) -> dict[str, int]:
        """Items of the catalog by moderation: allow, review, block, and unscored (items with text
        that no safety model scored: held back while one is registered), removed items left out."""
        with self.lock:
            codes = self.safety.values[~self.removed.values]
        decided = np.bincount(codes & 3, minlength=3)
        return {
            "allow": int(decided[0]),
            "review": int(decided[REVIEW]),
            "block": int(decided[BLOCK]),
            "unscored": int(np.count_nonzero(codes & UNSCORED)),
        }

    def creator_unsafe_rate(self, items: np.ndarray, prior_items: float) -> np.ndarray:
        """(N,) the unsafe rate of each item's creator: its items in review or blocked over its
        items + ``prior_items`` (cached per catalog version)."""
        cached = self._creator_rate
        if cached is None or cached[0] != self.catalog_version or cached[1] != prior_items:
            creators = self.creator.values
            flagged = ((self.safety.values & 3) != 0) & ~self.removed.values
            size = len(self.creators)
            counts = np.bincount(creators, minlength=size)
            bad = np.bincount(creators, weights=flagged, minlength=size)
            cached = self._creator_rate = (self.catalog_version, prior_items, bad / (counts + prior_items))
        out: np.ndarray = cached[2][self.creator.values[items]]
        return out

    def user(self, user_id: str | None) -> UserState | None:
        return self.users.get(user_id) if user_id is not None else None

    def excluded(self, user_id: str | None) -> Exclusions | frozenset[int]:
        """What the user must not be shown: a view over the live seen and hidden items (read it
        under the lock; it is not a copy)."""
        state = self.user(user_id)
        return Exclusions(state.seen, state.blocked) if state else frozenset()

    # ------------------------------------------------------------------ writes
    def _add_item(self, event: ItemUpsert, changes: Changes) -> None:
        self.catalog_version += 1
        index = self.item_index.get(event.item_id)
        creator = event.creator_id or f"_item:{event.item_id}"  # no creator: the item is its own
        code = self.creator_code.setdefault(creator, len(self.creators))
        if code == len(self.creators):
            self.creators.append(creator)
        moderation, unsafe_score = safety_code(
            event.text, event.attributes, self.text_fields, self.unsafe_threshold
        )
        created = exact_us(event.created_at or event.timestamp)
        removed = bool(event.attributes.get("removed", False))
        if index is None:
            self.item_index[event.item_id] = len(self.item_ids)
            self.item_ids.append(event.item_id)
            self.creator.append(code)
            self.created_us.append(created)
            self.unsafe.append(unsafe_score)
            self.safety.append(moderation)
            self.removed.append(removed)
            self.impressions.append(0.0)
            self.clicks.append(0.0)
        else:  # an update: attributes change, engagement counts stay
            self.creator.data[index] = code
            self.created_us.data[index] = created
            self.unsafe.data[index] = unsafe_score
            self.safety.data[index] = moderation
            self.removed.data[index] = removed
        self.features.add_items(self.n_items)
        self.features.upsert_item(
            self.item_index[event.item_id],
            exact_us(event.timestamp),
            event.creator_id,
            event.attributes,
            changes.features,
        )

    def load_items(
        self,
        item_ids: Sequence[str],
        creators: Sequence[str],
        created_us: np.ndarray,
        attributes: dict[str, Sequence[Any]] | None = None,
        unsafe: np.ndarray | None = None,
    ) -> int:
        """Bulk-add new items column-wise (a catalog import; ids already known are skipped), with
        ``attributes`` (name -> a value per item) for the item attributes of ``[[features]]``.
        Returns how many were added."""
        with self.lock:
            new = [n for n, i in enumerate(item_ids) if i not in self.item_index]
            if not new:
                return 0
            start = len(self.item_ids)
            added = [item_ids[n] for n in new]
            self.item_ids.extend(added)
            self.item_index.update((item, start + k) for k, item in enumerate(added))
            codes = np.empty(len(new), dtype=np.int32)
            for k, n in enumerate(new):
                code = self.creator_code.get(creators[n])
                if code is None:
                    code = self.creator_code[creators[n]] = len(self.creators)
                    self.creators.append(creators[n])
                codes[k] = code
            picked = np.asarray(new)
            columns = {
                "creator": codes,
                "created_us": np.asarray(created_us, dtype=np.int64)[picked],
                "unsafe": (np.zeros(len(new)) if unsafe is None else np.asarray(unsafe)[picked]).astype(
                    np.float32
                ),
                "safety": np.zeros(len(new), dtype=np.int8),
                "removed": np.zeros(len(new), dtype=np.bool_),
                "impressions": np.zeros(len(new)),
                "clicks": np.zeros(len(new)),
            }
            for name, values in columns.items():
                column: _Column = getattr(self, name)
                setattr(self, name, _Column.of(np.concatenate([column.values, values]), column.fill))
            self.features.add_items(self.n_items)
            if self.features.item_attributes:
                throwaway = FeatureChanges()
                for k, n in enumerate(new):
                    given = {name: values[n] for name, values in (attributes or {}).items()}
                    self.features.upsert_item(
                        start + k, int(columns["created_us"][k]), creators[n], given, throwaway
                    )
            self.version += 1
            self.catalog_version += 1
        return len(new)

    def _user(self, user_id: str) -> UserState:
        state = self.users.get(user_id)
        if state is None:
            state = self.users[user_id] = UserState(deque(maxlen=self.history_length))
        return state

    def _see(self, state: UserState, item: int) -> None:
        if self.seen_limit == 0:
            return
        state.seen[item] = None
        state.seen.move_to_end(item)
        while len(state.seen) > self.seen_limit:
            state.seen.popitem(last=False)

    def apply(self, events: Iterable[Event], failed: list[tuple[Event, str]] | None = None) -> int:
        """Apply events not applied before, in order; returns how many were new. An event whose
        application raises is added to ``failed`` with the reason and the rest go on (with
        ``failed`` None, the error propagates)."""
        new = 0
        trend: tuple[list[int], list[int], list[float]] = ([], [], [])
        trend_items, trend_times, trend_weights = trend
        with self.lock:
            changes = self.changes or Changes()  # a throwaway when untracked
            for event in events:
                if event.event_id in self.applied:
                    continue
                self.applied.add(event.event_id)
                new += 1
                try:
                    self._apply_one(event, changes, trend)
                except Exception as exc:
                    if failed is None:
                        raise
                    failed.append((event, f"{type(exc).__name__}: {exc}"))
            if trend_items:
                changes.trending.update(trend_items)
                self.trending.observe(
                    np.array(trend_items, dtype=np.int64),
                    np.array(trend_times, dtype=np.int64),
                    np.array(trend_weights),
                )
            if new:
                self.version += 1
        return new

    def _apply_one(
        self, event: Event, changes: Changes, trend: tuple[list[int], list[int], list[float]]
    ) -> None:
        """One new event's effect (under the lock); trending observations are added to ``trend``."""
        trend_items, trend_times, trend_weights = trend
        if isinstance(event, ItemUpsert):
            self._add_item(event, changes)
            return
        if isinstance(event, UserUpsert):
            self._user(event.user_id)
            changes.users.add(event.user_id)
            self.features.upsert_user(
                event.user_id, exact_us(event.timestamp), event.attributes, changes.features
            )
            return
        if not isinstance(event, Impression | Engagement):
            return
        item = self.item_index.get(event.item_id)
        if item is None:
            self.unknown_items += 1
            return
        state = self._user(event.user_id)
        changes.users.add(event.user_id)
        self.features.observe(
            event.kind,
            exact_us(event.timestamp),
            event.user_id,
            item,
            event.event_id,
            changes.features,
        )
        if isinstance(event, Impression):
            self._see(state, item)
            self.impressions.data[item] += 1
            changes.items.add(item)
            return
        kind = event.kind
        if kind == "click":
            self.clicks.data[item] += 1
            changes.items.add(item)
        if kind in POSITIVE:
            if item in state.history:
                state.history.remove(item)
            state.history.appendleft(item)
            self._see(state, item)
        elif kind in NEGATIVE:
            state.blocked.add(item)
            self._see(state, item)
        weight = self.trending_weights.get(kind)
        if weight:
            trend_items.append(item)
            trend_times.append(exact_us(event.timestamp))
            trend_weights.append(weight)

    def record_served(self, user_id: str, items: Sequence[int], request_id: str, now_us: int) -> None:
        """What serving just showed, applied at once (the user's next request must not repeat it,
        whatever the worker's lag). Its impression events (ids ``request_id:position``) reach the log
        too; ``was_served`` tells the worker to skip them, by request (one entry per served list
        rather than one id per impression)."""
        with self.lock:
            if request_id in self.served:
                return
            self.served[request_id] = len(items)
            state = self._user(user_id)
            feature_changes = self.changes.features if self.changes is not None else FeatureChanges()
            for position, item in enumerate(items):
                self._see(state, item)
                self.impressions.data[item] += 1
                self.features.observe(
                    "impression", now_us, user_id, item, f"{request_id}:{position}", feature_changes
                )
            if self.changes is not None:
                self.changes.users.add(user_id)
                self.changes.items.update(items)
            self.version += 1

    def was_served(self, event_id: str) -> bool:
        """Whether ``event_id`` is an impression of a list ``record_served`` already applied."""
        request_id, _, position = event_id.rpartition(":")
        return position.isdigit() and request_id in self.served

    def forget_served(self, event_ids: Sequence[str]) -> None:
        """The worker acknowledged these deliveries: impressions among them are never read again, so
        their lists' entries count down and go once all their impressions were acknowledged (not
        when read: a restart between the snapshot and the acknowledgement reads them again)."""
        acked: dict[str, int] = {}  # request id -> impressions acknowledged (counted without the lock)
        for event_id in event_ids:
            request_id, _, position = event_id.rpartition(":")
            if position.isdigit():
                acked[request_id] = acked.get(request_id, 0) + 1
        with self.lock:
            served = self.served
            for request_id, count in acked.items():
                left = served.get(request_id)
                if left is None:
                    continue
                if left <= count:
                    del served[request_id]
                else:
                    served[request_id] = left - count

    # ------------------------------------------------------------------ snapshots
    def snapshot(self, with_catalog: bool = True) -> Snapshot:
        """The state as bytes (and the catalog's, when asked), consistent with each other."""
        return self.capture(with_catalog).encode()

    def capture(self, with_catalog: bool = True, delta: bool = False, bridge: bool = False) -> Captured:
        """Copy, under the lock, what a snapshot needs (a few milliseconds); ``Captured.encode``
        then builds the bytes without the lock, so serving is not held up behind a snapshot.
        ``delta``: only what changed since the last capture (``changes`` must be tracked);
        ``bridge``: with a whole capture, the delta of the same moment too (``Captured.bridge``),
        which brings a state at the last capture to this one without the whole. Every capture
        starts the tracking of changes afresh."""
        with self.lock:
            changes = self.changes
            if (delta or bridge) and changes is None:
                raise ValueError("a delta needs the state to track its changes (set state.changes)")
            if changes is not None:
                self.changes = Changes()
            return Captured(
                self._capture_state(changes if delta else None),
                self._capture_catalog() if with_catalog else None,
                self.version,
                self.catalog_version,
                self._capture_state(changes) if bridge and not delta else None,
            )

    def catalog_bytes(self) -> bytes:
        """The catalog (ids, creators, creation times, unsafe scores, removals): it changes
        rarely, so the worker writes it only when ``catalog_version`` moved."""
        with self.lock:
            catalog = self._capture_catalog()
        return _pack(*catalog)

    def to_bytes(self) -> bytes:
        """Everything but the catalog: users, counters (stored sparsely: most items have none),
        trending, and the ids applied since the last acknowledgement."""
        return self.capture(with_catalog=False).encode().state

    def _capture_catalog(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta = {
            "item_ids": list(self.item_ids),
            "creators": list(self.creators),
            "catalog_version": self.catalog_version,
        }
        arrays = {
            "creator": self.creator.values.copy(),
            "created_us": self.created_us.values.copy(),
            "unsafe": self.unsafe.values.copy(),
            "safety": self.safety.values.copy(),
            "removed": self.removed.values.copy(),
        }
        return meta, arrays

    def _capture_state(
        self, changes: Changes | None = None
    ) -> tuple[dict[str, Any], dict[str, list[list[int]]], dict[str, np.ndarray]]:
        """Everything, or (``changes``) the users and counters that moved."""
        names = list(self.users) if changes is None else [u for u in changes.users if u in self.users]
        meta = {
            "history_length": self.history_length,
            "seen_limit": self.seen_limit,
            "trending_weights": self.trending_weights,
            "text_fields": list(self.text_fields),
            "unsafe_threshold": self.unsafe_threshold,
            "users": names,
            "delta": changes is not None,
            "applied": list(self.applied),
            "served": dict(self.served),
            "unknown_items": self.unknown_items,
            "trending_rate": self.trending.rate,
            "trending_as_of_us": self.trending.as_of_us,
            "version": self.version,
            "catalog_version": self.catalog_version,
            "n_items": self.n_items,
            "n_trending": len(self.trending.scores),
        }
        users = [self.users[u] for u in names]
        lists = {
            "history": [list(u.history) for u in users],
            "seen": [list(u.seen) for u in users],
            "blocked": [list(u.blocked) for u in users],
        }
        counters: dict[
            str, np.ndarray
        ] = {}  # sparse (most items have none): small copies, no catalog-sized allocation
        for name, values in (
            ("impressions", self.impressions.values),
            ("clicks", self.clicks.values),
            ("trending", self.trending.scores),
        ):
            if changes is None:
                at = np.flatnonzero(values)
            else:  # a delta: the moved entries, whatever their value
                moved = changes.trending if name == "trending" else changes.items
                at = np.fromiter(sorted(moved), dtype=np.int64, count=len(moved))
                at = at[at < len(values)]
            counters[f"{name}_at"], counters[f"{name}_value"] = at, values[at]
        feature_meta, feature_arrays = self.features.capture(
            self.n_items, changes.features if changes is not None else None
        )
        meta["features"] = feature_meta
        return meta, lists, counters | feature_arrays

    CATALOG = (
        "item_ids",
        "item_index",
        "creators",
        "creator_code",
        "creator",
        "created_us",
        "unsafe",
        "safety",
        "removed",
    )

    def update_from(self, other: FeedState) -> None:
        """Take over ``other``'s contents in place (readers holding this object see the new state)."""
        with self.lock:
            for name, value in vars(other).items():
                if name != "lock":
                    setattr(self, name, value)

    @staticmethod
    def read_snapshot(blob: bytes) -> tuple[dict[str, Any], Any]:
        """A snapshot's (whole or delta) meta (versions, users, ``chain`` and ``base`` when a worker
        wrote it) and its arrays, read on access. Raises CheckpointError for a damaged blob."""
        try:
            return _unpack(blob)
        except Exception as exc:
            raise CheckpointError(f"feed state snapshot is corrupt: {exc}") from exc

    @staticmethod
    def snapshot_meta(blob: bytes) -> dict[str, Any]:
        return FeedState.read_snapshot(blob)[0]

    @staticmethod
    def snapshot_catalog_version(blob: bytes) -> int:
        return int(FeedState.snapshot_meta(blob)["catalog_version"])

    def apply_delta(self, snapshot: bytes | tuple[dict[str, Any], Any]) -> dict[str, Any]:
        """Write a delta (``capture(delta=True)``) over this state, in place: the users it holds are
        replaced by their lists in it, the counters it holds take its values, trending decays to its
        time. The delta must have been taken after a state this one equals (the caller checks the
        chain); its catalog must be this state's. Decoded whole before anything is written: a
        damaged delta raises CheckpointError and changes nothing. ``snapshot``: the delta's bytes, or
        what ``read_snapshot`` read of them. Returns the delta's meta."""
        try:
            meta, arrays = _unpack(snapshot) if isinstance(snapshot, bytes) else snapshot
            if not meta.get("delta"):
                raise ValueError("a whole snapshot, not a delta")
            if meta["catalog_version"] != self.catalog_version:
                raise ValueError(
                    f"taken on catalog version {meta['catalog_version']}, this state has "
                    f"{self.catalog_version}"
                )
            lists: dict[str, Any] = {name: arrays[name] for name in _LIST_ARRAYS}
            users = {
                user: UserState(
                    deque(_user_list(lists, "history", n), maxlen=self.history_length),
                    OrderedDict.fromkeys(_user_list(lists, "seen", n)),
                    set(_user_list(lists, "blocked", n)),
                )
                for n, user in enumerate(meta["users"])
            }
            counters = {name: (arrays[f"{name}_at"], arrays[f"{name}_value"]) for name in _COUNTERS}
            for name, (at, _) in counters.items():
                size = meta["n_trending"] if name == "trending" else self.n_items
                if len(at) and (at.min() < 0 or at.max() >= size):
                    raise ValueError(f"{name} entries out of range")
            features = self.features.read_delta(meta["features"], arrays, self.n_items)
        except Exception as exc:  # numpy, zipfile and json raise several types for damaged blobs
            raise CheckpointError(f"feed state delta is corrupt or does not fit: {exc}") from exc
        with self.lock:
            self.features.write_delta(features)
            self.users.update(users)
            for name in ("impressions", "clicks"):
                at, values = counters[name]
                getattr(self, name).data[at] = values
            trending = self.trending
            if meta["n_trending"] > len(trending.scores):
                grow = np.zeros(meta["n_trending"] - len(trending.scores))
                trending.scores = np.concatenate([trending.scores, grow])
            trending.rate = meta["trending_rate"]
            trending.decay_to(meta["trending_as_of_us"])
            at, values = counters["trending"]
            trending.scores[at] = values
            self.applied = set(meta["applied"])
            self.served = dict(meta.get("served", {}))
            self.unknown_items = meta["unknown_items"]
            self.version = meta["version"]
            self.synced_lists = None  # no longer the lists of one whole snapshot
        return meta

    @classmethod
    def from_bytes(
        cls,
        blob: bytes,
        catalog: bytes | None = None,
        same_catalog: FeedState | None = None,
    ) -> FeedState:
        """Rebuild a state from ``to_bytes`` and ``catalog_bytes``; ``same_catalog``: a state whose
        catalog is the snapshot's (its catalog columns are shared instead of decoded again, and,
        when it was itself loaded from a snapshot, its users are taken over where their lists did
        not change since: an API process loads the worker's snapshot every second and most users
        did not move in between; a user taken over keeps what was applied to them locally since,
        ``record_served``)."""
        try:
            meta, arrays = _unpack(blob)
            if meta.get("delta"):
                raise ValueError("a delta, not a whole snapshot (apply it with apply_delta)")
            definitions = [_FEATURE_ADAPTER.validate_python(d) for d in meta["features"]["definitions"]]
            state = cls(
                meta["history_length"],
                meta["seen_limit"],
                1.0,
                meta["trending_weights"],
                features=definitions,
                text_fields=meta.get("text_fields", ("text", "title", "description")),
                unsafe_threshold=meta.get("unsafe_threshold", 0.5),
            )
            shared = same_catalog is not None and same_catalog.catalog_version == meta["catalog_version"]
            if shared:
                for name in cls.CATALOG:
                    setattr(state, name, getattr(same_catalog, name))
            elif catalog is not None:
                cmeta, carrays = _unpack(catalog)
                if cmeta["catalog_version"] != meta["catalog_version"]:
                    raise ValueError(
                        f"catalog version {cmeta['catalog_version']} does not match the state's "
                        f"{meta['catalog_version']}"
                    )
                state.item_ids = cmeta["item_ids"]
                state.item_index = {item: n for n, item in enumerate(state.item_ids)}
                state.creators = cmeta["creators"]
                state.creator_code = {c: n for n, c in enumerate(state.creators)}
                for name in ("creator", "created_us", "unsafe", "safety", "removed"):
                    if name == "safety" and name not in carrays:  # written before moderation: rebuilt
                        raise ValueError("the catalog predates item moderation (no safety column)")
                    setattr(state, name, _Column.of(carrays[name], getattr(state, name).fill))
            elif meta["n_items"]:
                raise ValueError("the state holds items but no catalog was given")
            state.catalog_version = meta["catalog_version"]
            n = meta["n_items"]
            for name in ("impressions", "clicks"):
                setattr(state, name, _Column.sparse(n, arrays[f"{name}_at"], arrays[f"{name}_value"]))
            trending = np.zeros(meta["n_trending"])
            trending[arrays["trending_at"]] = arrays["trending_value"]
            state.trending.rate = meta["trending_rate"]
            state.trending.scores = trending
            state.trending.as_of_us = meta["trending_as_of_us"]
            lists: dict[str, Any] = {name: arrays[name] for name in _LIST_ARRAYS}
            lists["users"] = meta["users"]
            state.synced_lists = lists
            before = same_catalog.synced_lists if shared else None  # type: ignore[union-attr]
            changed = _changed_users(before, lists) if before is not None else None
            kept: dict[str, UserState] = {}  # users taken over (their lists did not change)
            parts: dict[str, list[list[int]]] = {}
            if changed is not None and changed.mean() <= 0.5:
                kept = same_catalog.users  # type: ignore[union-attr]
            else:  # most users changed (or no earlier load): all decoded in bulk
                for name in _LISTS:
                    offsets, items = lists[f"{name}_offsets"], lists[f"{name}_items"].tolist()
                    parts[name] = [items[a:b] for a, b in itertools.pairwise(offsets)]
            for n, user in enumerate(meta["users"]):
                old = kept.get(user)
                if old is not None and not changed[n]:  # type: ignore[index]
                    state.users[user] = old
                    continue
                history, seen, blocked = (
                    parts[name][n] if parts else _user_list(lists, name, n) for name in _LISTS
                )
                state.users[user] = UserState(
                    deque(history, maxlen=state.history_length), OrderedDict.fromkeys(seen), set(blocked)
                )
            state.features.load(meta["features"], arrays, meta["n_items"])
            state.applied = set(meta["applied"])
            state.served = dict(meta.get("served", {}))
            state.unknown_items = meta["unknown_items"]
            state.version = meta["version"]
        except Exception as exc:  # numpy, zipfile and json raise several types for damaged blobs
            raise CheckpointError(f"feed state snapshot is corrupt: {exc}") from exc
        return state


_FEATURE_ADAPTER: TypeAdapter[Any] = TypeAdapter(FeatureDef)


_LISTS = ("history", "seen", "blocked")
_COUNTERS = ("impressions", "clicks", "trending")
_LIST_ARRAYS = tuple(f"{name}_{part}" for name in _LISTS for part in ("offsets", "items"))


def _user_list(lists: dict[str, Any], name: str, n: int) -> list[int]:
    offsets = lists[f"{name}_offsets"]
    out: list[int] = lists[f"{name}_items"][offsets[n] : offsets[n + 1]].tolist()
    return out


def _changed_users(old: dict[str, Any], new: dict[str, Any]) -> np.ndarray:
    """(users of ``new``,) bool: users whose history, seen or blocked list differs from ``old`` (both
    the lists of a snapshot: users in order, each list flat with offsets). Users absent from
    ``old`` at the same position count as changed; exact, vectorized per list."""
    users_old, users_new = old["users"], new["users"]
    m = min(len(users_old), len(users_new))
    if users_old[:m] != users_new[:m]:  # the worker only appends users; anything else: all changed
        m = 0
    same = np.ones(m, dtype=bool)
    for name in _LISTS:
        off_old, off_new = old[f"{name}_offsets"], new[f"{name}_offsets"]
        items_old, items_new = old[f"{name}_items"], new[f"{name}_items"]
        lengths = np.diff(off_new[: m + 1])
        same &= np.diff(off_old[: m + 1]) == lengths
        users = np.flatnonzero(same)
        sizes = lengths[users]
        if not sizes.sum():
            continue
        owner = np.repeat(np.arange(len(users)), sizes)  # each compared entry's user (position in users)
        within = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        differs = items_old[off_old[users][owner] + within] != items_new[off_new[users][owner] + within]
        same[users[np.bincount(owner[differs], minlength=len(users)) > 0]] = False
    changed = np.ones(len(users_new), dtype=bool)
    changed[:m] = ~same
    return changed


@dataclass(frozen=True)
class Snapshot:
    """``FeedState.snapshot``: the state's bytes, the catalog's (None when not asked for), and the
    versions they were taken at."""

    state: bytes
    catalog: bytes | None
    version: int
    catalog_version: int
    bridge: bytes | None = None  # with a whole snapshot: the delta of the same moment (capture)


@dataclass(frozen=True)
class Captured:
    """``FeedState.capture``: copies of the state (and catalog) at one version, not yet encoded."""

    state: tuple[dict[str, Any], dict[str, list[list[int]]], dict[str, np.ndarray]]
    catalog: tuple[dict[str, Any], dict[str, np.ndarray]] | None
    version: int
    catalog_version: int
    bridge: tuple[dict[str, Any], dict[str, list[list[int]]], dict[str, np.ndarray]] | None = None

    def encode(self) -> Snapshot:
        return Snapshot(
            _encode_state(*self.state),
            _pack(*self.catalog) if self.catalog is not None else None,
            self.version,
            self.catalog_version,
            _encode_state(*self.bridge) if self.bridge is not None else None,
        )


def _encode_state(
    meta: dict[str, Any], lists: dict[str, list[list[int]]], counters: dict[str, np.ndarray]
) -> bytes:
    arrays: dict[str, np.ndarray] = {}
    # per-user lists as one flat array each plus offsets (JSON of them stalls serving)
    for name, per_user in lists.items():
        sizes = np.fromiter((len(x) for x in per_user), dtype=np.int64, count=len(per_user))
        arrays[f"{name}_offsets"] = np.concatenate([[0], np.cumsum(sizes)])
        arrays[f"{name}_items"] = np.fromiter(itertools.chain.from_iterable(per_user), dtype=np.int64)
    return _pack(meta, arrays | counters)


def _pack(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    arrays = arrays | {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # the stubs type **kwds as allow_pickle
    return buffer.getvalue()


def _unpack(blob: bytes) -> tuple[dict[str, Any], Any]:
    arrays = np.load(io.BytesIO(blob), allow_pickle=False)
    return json.loads(arrays["meta"].tobytes().decode()), arrays
