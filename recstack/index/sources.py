"""Candidate sources and their merge: the first stage of the funnel.

Each source proposes items for a request with scores; the merge takes each source's quota in the
configured order, drops items already proposed (keeping every source that proposed an item, which
serving and experiments need) and items the request excludes, and fills what a source could not use
from the next ones. Sources work in item-index space (0..n_items-1).

- ``TwoTowerSource``: the user tower's vector searched in the ANN index (known users only).
- ``ItemToItemSource``: items co-engaged with the user's recent engagements (ItemCF neighbours).
- ``TrendingSource``: exponentially time-decayed engagement counts (half-life), updated from events.
- ``FreshSource``: items created within a window, newest first, or, when the user has history and
  items have content vectors, most similar to the mean of the user's recent items.

A user with no history and an unknown id still gets trending and fresh items: unknown is not an error.
``build_sources`` orders the sources and quotas as ``[retrieval] sources`` says and refuses, before the
first request, a configured source that was not supplied. ``TrendingConsumer`` keeps trending current
from the event stream (a consumer group of the log, each event counted once).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from recstack.config import RetrievalConfig, SourceKind
from recstack.errors import ConfigError
from recstack.events.base import EventLog, IdempotentConsumer
from recstack.index.faiss_index import ItemIndex
from recstack.models.baselines import ItemCF
from recstack.schema import Event

US = 1_000_000


@dataclass(frozen=True)
class Request:
    """user: the user's index, or None when unknown; history: recently engaged item indices, most
    recent first; now_us: request time; exclude: items that must not be proposed (seen, blocked);
    user_id: the user's external id, for sources that key on it; user_vector: the user tower's
    output when the caller has it already (computed once per request)."""

    user: int | None
    history: tuple[int, ...] = ()
    now_us: int = 0
    exclude: Collection[int] = frozenset()
    user_id: str | None = None
    user_vector: np.ndarray | None = None


@dataclass
class Candidate:
    item: int
    score: float
    source: str
    also_from: list[str] = field(default_factory=list)


class Source(Protocol):
    name: str

    def propose(self, request: Request, k: int) -> list[tuple[int, float]] | tuple[np.ndarray, np.ndarray]:
        """Up to k (item, score) pairs, best first, as a list or as (items, scores) arrays."""
        ...


class TwoTowerSource:
    """``user_vector(user, history) -> (D,)`` searched in ``index`` (ids are item indices)."""

    name = "two_tower"

    def __init__(self, index: ItemIndex, user_vector: Callable[[int, tuple[int, ...]], np.ndarray]) -> None:
        self.index = index
        self.user_vector = user_vector

    def propose(self, request: Request, k: int) -> list[tuple[int, float]]:
        if request.user is None:
            return []
        scores, ids = self.index.search(self.user_vector(request.user, request.history)[None, :], k)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]


class ItemToItemSource:
    """Neighbours of the user's ``recent`` last engagements, summing similarities."""

    name = "item_to_item"

    def __init__(self, model: ItemCF, recent: int = 10, per_item: int = 50) -> None:
        self.model = model
        self.recent = recent
        self.per_item = per_item

    def propose(self, request: Request, k: int) -> list[tuple[int, float]]:
        totals: dict[int, float] = {}
        for item in request.history[: self.recent]:
            ids, sims = self.model.similar(item, self.per_item)
            for i, s in zip(ids.tolist(), sims.tolist(), strict=True):
                if s > 0:
                    totals[i] = totals.get(i, 0.0) + s
        return sorted(totals.items(), key=lambda kv: -kv[1])[:k]


class TrendingSource:
    """Engagements counted with exponential time decay: a count halves every ``half_life_s``."""

    name = "trending"

    def __init__(self, n_items: int, half_life_s: float = 6 * 3600) -> None:
        self.rate = math.log(2) / (half_life_s * US)
        self.scores = np.zeros(n_items)  # decayed counts as of self.as_of_us
        self.as_of_us = 0

    def decay_to(self, now_us: int) -> None:
        """Decay every count to ``now_us`` (no-op for an earlier time)."""
        if now_us > self.as_of_us:
            self.scores *= math.exp(-self.rate * (now_us - self.as_of_us))
            self.as_of_us = now_us

    def observe(self, items: np.ndarray, times_us: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Count engagements; events older than the current time are counted at their decayed weight.
        Item indices past the current catalog grow it (new items)."""
        if len(items) == 0:
            return
        if items.max() >= len(self.scores):
            self.scores = np.concatenate([self.scores, np.zeros(int(items.max()) + 1 - len(self.scores))])
        self.decay_to(int(times_us.max()))
        w = np.ones(len(items)) if weights is None else weights
        np.add.at(self.scores, items, w * np.exp(-self.rate * (self.as_of_us - times_us)))

    def propose(self, request: Request, k: int) -> list[tuple[int, float]]:
        factor = math.exp(-self.rate * max(request.now_us - self.as_of_us, 0))
        k = min(k, len(self.scores))
        top = np.argpartition(-self.scores, k - 1)[:k] if k else np.array([], dtype=np.int64)
        top = top[np.argsort(-self.scores[top], kind="stable")]
        return [(int(i), float(self.scores[i] * factor)) for i in top if self.scores[i] > 0]


class FreshSource:
    """Items created in the last ``window_s`` seconds; with content vectors and a history, ranked by
    similarity to the mean of the user's recent items, else newest first."""

    name = "fresh"

    def __init__(
        self,
        created_us: np.ndarray,
        window_s: float = 3 * 86_400,
        content: np.ndarray | None = None,
        recent: int = 10,
    ) -> None:
        self.created_us = created_us
        self.window_us = int(window_s * US)
        self.content = content
        self.recent = recent

    def propose(self, request: Request, k: int) -> list[tuple[int, float]]:
        fresh = np.flatnonzero(
            (self.created_us <= request.now_us) & (self.created_us > request.now_us - self.window_us)
        )
        if len(fresh) == 0:
            return []
        if self.content is not None and request.history:
            profile = self.content[list(request.history[: self.recent])].mean(axis=0)  # (D,)
            scores = self.content[fresh] @ profile
        else:
            scores = (self.created_us[fresh] - request.now_us) / US  # newer is higher
        order = np.argsort(-scores, kind="stable")[:k]
        return [(int(fresh[i]), float(scores[i])) for i in order]


Proposal = list[tuple[int, float]] | tuple[np.ndarray, np.ndarray]


def _arrays(proposal: Proposal) -> tuple[np.ndarray, np.ndarray]:
    """A source's proposal as (items int64, scores float64) arrays; sources may return either."""
    if isinstance(proposal, tuple):
        return np.asarray(proposal[0], dtype=np.int64), np.asarray(proposal[1], dtype=np.float64)
    if not proposal:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    items, scores = zip(*proposal, strict=True)
    return np.array(items, dtype=np.int64), np.array(scores, dtype=np.float64)


@dataclass
class Merged:
    """The merge, column-wise: items and scores in merge order, the source of each, and for items
    several sources proposed, the other sources (``also_from[item]``)."""

    items: np.ndarray
    scores: np.ndarray
    sources: list[str]
    also_from: dict[int, list[str]]


def excluded_mask(exclude: Collection[int], items: np.ndarray) -> np.ndarray:
    """Which of ``items`` are in ``exclude``: one membership test per item, so the cost follows the
    candidates, not the size of the exclusions (a user's seen set can hold thousands)."""
    mask = getattr(exclude, "mask", None)
    if mask is not None:
        out: np.ndarray = mask(items)
        return out
    return np.fromiter((i in exclude for i in items.tolist()), dtype=bool, count=len(items))


class MergeScratch:
    """Membership marks over item indices that merges reuse: a merge marks the few hundred entries
    it touches and clears them after, instead of allocating (and page-faulting) an array the size
    of the catalog per request. One merge at a time per scratch."""

    def __init__(self) -> None:
        self.marks = np.zeros(0, dtype=np.int8)  # all zero between merges
        self.slots = np.zeros(0, dtype=np.int64)

    def fit(self, n: int) -> np.ndarray:
        if n > len(self.marks):
            size = max(n, 2 * len(self.marks))
            grown = np.zeros(size, dtype=np.int8)
            grown[: len(self.marks)] = self.marks  # marks of the merge in progress survive
            self.marks, self.slots = grown, np.zeros(size, dtype=np.int64)
        return self.marks

    def has_repeats(self, items: np.ndarray) -> bool:
        """Whether an item occurs twice: without repeats every slot keeps its own position."""
        positions = np.arange(len(items))
        self.slots[items] = positions
        return not np.array_equal(self.slots[items], positions)


def merge_arrays(
    sources: Sequence[tuple[Source, int]],
    request: Request,
    k: int | None = None,
    scratch: MergeScratch | None = None,
) -> Merged:
    """Take each source's quota in order, de-duplicated; ``k`` caps the total (default: sum of quotas).

    A source is asked for its quota plus room for the items it might lose to exclusions and
    duplicates (capped, so that a user with thousands of seen items does not turn one ANN search
    into a scan); what a source leaves unused falls to the sources after it. Vectorized: membership
    is one gather from marks over item indices (0 free, 2 + s placed by source s) plus a test of
    each proposal against the exclusions; pass a ``scratch`` kept between calls to reuse the marks.
    """
    if len(sources) > 120:
        raise ValueError("merge_arrays takes at most 120 sources")  # source codes fit in int8
    scratch = scratch if scratch is not None else MergeScratch()
    total = k if k is not None else sum(q for _, q in sources)
    exclude = request.exclude
    n_excluded = len(exclude)
    marks = scratch.marks
    items_out: list[np.ndarray] = []
    scores_out: list[np.ndarray] = []
    names: list[str] = []
    also_from: dict[int, list[str]] = {}
    n_chosen = 0
    spare = 0
    try:
        for code, (source, quota) in enumerate(sources, start=2):
            want = quota + spare
            room = min(n_excluded, 2 * want) + n_chosen
            items, scores = _arrays(source.propose(request, want + room))
            if len(items):
                marks = scratch.fit(int(items.max()) + 1)
                if len(items) > 1 and scratch.has_repeats(items):  # a source proposing an item twice
                    _, first = np.unique(items, return_index=True)
                    first.sort()
                    items, scores = items[first], scores[first]
            mark = marks[items]
            if n_excluded:
                mark[excluded_mask(exclude, items)] = 1
            for item, by in zip(items[mark >= 2].tolist(), mark[mark >= 2].tolist(), strict=True):
                if by != code and source.name not in also_from.setdefault(item, []):
                    also_from[item].append(source.name)
            take = max(min(want, total - n_chosen), 0)
            fresh = mark == 0
            new_items, new_scores = items[fresh][:take], scores[fresh][:take]
            if len(new_items):
                items_out.append(new_items)
                scores_out.append(new_scores)
                names.extend([source.name] * len(new_items))
                marks[new_items] = code
                n_chosen += len(new_items)
            spare = want - len(new_items)
    finally:  # leave the marks clear for the next merge
        for part in items_out:
            marks[part] = 0
    also_from = {item: names_ for item, names_ in also_from.items() if names_}
    if not items_out:
        return Merged(np.zeros(0, dtype=np.int64), np.zeros(0), [], also_from)
    return Merged(np.concatenate(items_out), np.concatenate(scores_out), names, also_from)


def merge(sources: Sequence[tuple[Source, int]], request: Request, k: int | None = None) -> list[Candidate]:
    """``merge_arrays`` as a list of Candidate records."""
    merged = merge_arrays(sources, request, k)
    return [
        Candidate(item, score, source, list(merged.also_from.get(item, [])))
        for item, score, source in zip(
            merged.items.tolist(), merged.scores.tolist(), merged.sources, strict=True
        )
    ]


class TrendingConsumer(IdempotentConsumer):
    """Feeds a TrendingSource from a consumer group of the event log. Engagements of the kinds in
    ``weights`` count with their weight; other events, and items ``item_index`` does not know, are
    skipped (the latter counted in ``unknown_items``)."""

    def __init__(
        self,
        log: EventLog,
        trending: TrendingSource,
        item_index: Callable[[str], int | None],
        weights: dict[str, float],
        group: str = "trending",
        consumer: str = "worker-1",
        seen: set[str] | None = None,
    ) -> None:
        super().__init__(log, group, consumer, handler=lambda event: None, seen=seen)
        self.trending = trending
        self.item_index = item_index
        self.weights = weights
        self.unknown_items = 0

    def apply(self, events: list[Event]) -> None:
        items: list[int] = []
        times: list[int] = []
        weights: list[float] = []
        for event in events:
            weight = self.weights.get(event.kind)
            if weight is None:
                continue
            index = self.item_index(event.item_id)  # type: ignore[union-attr]
            if index is None:
                self.unknown_items += 1
                continue
            items.append(index)
            times.append(int(event.timestamp.timestamp() * US))
            weights.append(weight)
        self.trending.observe(
            np.array(items, dtype=np.int64), np.array(times, dtype=np.int64), np.array(weights)
        )


def build_sources(
    cfg: RetrievalConfig,
    available: dict[SourceKind, Source],
) -> list[tuple[Source, int]]:
    """(source, quota) in the configured order; sources with quota 0 are left out. A configured
    source missing from ``available`` is a ConfigError raised here, before any request."""
    missing = [kind.value for kind, quota in cfg.sources.items() if quota and kind not in available]
    if missing:
        raise ConfigError(
            f"[retrieval] sources names {missing} but only {sorted(k.value for k in available)} were built; "
            "retrain the bundle with them (recstack train builds the sources the quotas name) or set "
            "their quota to 0"
        )
    return [(available[kind], quota) for kind, quota in cfg.sources.items() if quota]
