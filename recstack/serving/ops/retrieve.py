"""Retrieve: the candidate sources with their quotas, merged (index/sources.py does the merge).

The sources here read the live :class:`FeedState` and the served bundle:

- ``BundleTwoTower``: the user tower (ONNX) on the user's id and recent engagements, searched in the
  bundle's ANN index; the bundle's item ids are mapped to catalog indices.
- ``BundleNeighbours``: ``item_cf`` or ``ease`` weights of the user's recent items, summed.
- ``BundleMF``: the MF-BPR user vector (or, for a user MF never saw, the mean of the recent items'
  vectors) searched over MF's item vectors.
- ``BundlePopularity``: the training window's most engaged items, the same for everyone.
- ``StateTrending`` / ``StateFresh``: trending counts and fresh items of the live state. Their
  rankings are cached for ``refresh_s`` (exponential decay keeps the order between updates, so
  the cache only misses new engagements for that long) so that a request does not sort the catalog.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from recstack.index.faiss_index import IndexKind, ItemIndex
from recstack.index.retriever import TwoTowerRetriever
from recstack.index.sources import US, MergeScratch, Request, Source, merge_arrays
from recstack.servables.bundle import ServingBundle
from recstack.servables.sources import MFVectors
from recstack.serving.ops.base import Candidates, RecRequest
from recstack.serving.ops.rank import user_vector
from recstack.serving.state import FeedState

if TYPE_CHECKING:
    from recstack.serving.graph import Alignment


class BundleTwoTower:
    name = "two_tower"

    def __init__(self, retriever: TwoTowerRetriever, catalog_of: np.ndarray, state: FeedState) -> None:
        self.retriever = retriever
        self.catalog_of = catalog_of  # bundle item index -> catalog index (-1: not in the catalog)
        self.state = state

    def propose(self, request: Request, k: int) -> tuple[np.ndarray, np.ndarray]:
        r = self.retriever
        history = [self.state.item_ids[i] for i in request.history]
        if not r.knows(request.user_id, history):
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        vector = (
            request.user_vector
            if request.user_vector is not None
            else r.user_vector(request.user_id, history)
        )
        scores, ids = r.index.search(vector[None, :], k)
        ids, scores = ids[0], scores[0]
        ok = (ids >= 0) & (ids < len(self.catalog_of))
        catalog = self.catalog_of[ids[ok]]
        known = catalog >= 0
        return catalog[known], scores[ok][known].astype(np.float64)


class BundleItemToItem:
    """Neighbours, in the item tower's space, of the user's ``recent`` last engagements; an item
    proposed by several of them sums its similarities.

    Each engaged item's neighbour list is kept in an LRU cache of ``cache_size`` items (the served
    bundle's index does not change, and recent engagements repeat across requests and users), so a
    request searches the index only for items it has not met; a deeper list than the cached one is
    searched again. For IVF and flat indexes a shallower search is a prefix of a deeper one, so the
    cache changes no result.
    """

    name = "item_to_item"

    def __init__(
        self,
        bundle: ServingBundle,
        alignment: Alignment,
        state: FeedState,
        recent: int = 10,
        cache_size: int = 50_000,
    ) -> None:
        self.bundle = bundle
        self.alignment = alignment
        self.state = state
        self.recent = recent
        self.cache_size = cache_size
        self.cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.lock = threading.Lock()

    def neighbours(self, rows: list[int], depth: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores) of the ``depth`` nearest bundle items of each bundle row, each (len(rows), depth)."""
        with self.lock:
            found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
            missing = []
            for r in rows:
                hit = self.cache.get(r)
                if hit is None or len(hit[0]) < depth:
                    missing.append(r)
                else:
                    found[r] = hit
                    self.cache.move_to_end(r)
            if missing:
                scores, ids = self.bundle.retriever.index.search(self.bundle.vectors[missing], depth)
                for n, r in enumerate(missing):
                    found[r] = self.cache[r] = (ids[n], scores[n])
                while len(self.cache) > self.cache_size:
                    self.cache.popitem(last=False)
        return (
            np.stack([found[r][0][:depth] for r in rows]),
            np.stack([found[r][1][:depth] for r in rows]),
        )

    def propose(self, request: Request, k: int) -> tuple[np.ndarray, np.ndarray]:
        bundle_of = self.alignment.bundle_of
        rows = [int(bundle_of[i]) for i in request.history[: self.recent] if i < len(bundle_of)]
        rows = list(dict.fromkeys(r for r in rows if r >= 0))
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        per_item = max(k // len(rows), 10)
        ids, scores = self.neighbours(rows, per_item)
        ids, scores = ids.ravel(), scores.ravel().astype(np.float64)
        ok = ids >= 0
        catalog = self.alignment.catalog_of[ids[ok]]
        known = catalog >= 0
        catalog, scores = catalog[known], scores[ok][known]
        if not len(catalog):
            return catalog, scores
        unique, inverse = np.unique(catalog, return_inverse=True)
        totals = np.zeros(len(unique))
        np.add.at(totals, inverse, scores)  # an item near several recent ones sums its similarities
        order = np.argsort(-totals, kind="stable")[:k]
        return unique[order], totals[order]


def _to_catalog(
    alignment: Alignment, rows: np.ndarray, scores: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Bundle rows with scores -> the ``k`` best that are in the catalog, as catalog indices."""
    catalog = alignment.catalog_of[rows]
    known = catalog >= 0
    catalog, scores = catalog[known], scores[known]
    if len(catalog) > k:
        top = np.argpartition(-scores, k - 1)[:k]
        catalog, scores = catalog[top], scores[top]
    order = np.argsort(-scores, kind="stable")
    return catalog[order], scores[order].astype(np.float64)


def _recent_rows(alignment: Alignment, history: tuple[int, ...], recent: int) -> list[int]:
    bundle_of = alignment.bundle_of
    rows = [int(bundle_of[i]) for i in history[:recent] if i < len(bundle_of)]
    return list(dict.fromkeys(r for r in rows if r >= 0))


class BundleNeighbours:
    """``item_cf`` or ``ease``: the (I, I) item weights of the user's ``recent`` last engagements
    summed into one score per item (sparse rows, ``neighbours`` each)."""

    def __init__(self, name: str, weights: sp.csr_matrix, alignment: Alignment, recent: int = 10) -> None:
        self.name = name
        self.weights = weights
        self.alignment = alignment
        self.recent = recent

    def propose(self, request: Request, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows = _recent_rows(self.alignment, request.history, self.recent)
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        summed = self.weights[rows].sum(axis=0).A1  # (I,)
        summed[rows] = 0.0  # the user's own items are no candidates
        hit = np.flatnonzero(summed > 0)
        return _to_catalog(self.alignment, hit, summed[hit], k)


class BundleMF:
    """MF-BPR: the user's vector (a user it never saw: the mean of the recent items' vectors, the
    usual fold-in) searched exactly over the item vectors."""

    name = "mf"

    def __init__(self, vectors: MFVectors, alignment: Alignment, recent: int = 10) -> None:
        self.vectors = vectors
        self.alignment = alignment
        self.recent = recent
        self.index = ItemIndex(vectors.items.shape[1], IndexKind.flat).build(vectors.items)

    def propose(self, request: Request, k: int) -> tuple[np.ndarray, np.ndarray]:
        user = self.vectors.user_index.get(request.user_id or "")
        if user is not None:
            query = self.vectors.users[user]
        else:
            rows = _recent_rows(self.alignment, request.history, self.recent)
            if not rows:
                return np.zeros(0, dtype=np.int64), np.zeros(0)
            query = self.vectors.items[rows].mean(axis=0)
        scores, ids = self.index.search(query[None, :].astype(np.float32), k)
        ok = ids[0] >= 0
        return _to_catalog(self.alignment, ids[0][ok], scores[0][ok], k)


class BundlePopularity:
    """The training window's most engaged items, best first (removed items left out)."""

    name = "popularity"

    def __init__(self, counts: np.ndarray, alignment: Alignment, state: FeedState) -> None:
        self.order = np.argsort(-counts, kind="stable")
        self.order = self.order[counts[self.order] > 0]
        self.counts = counts
        self.alignment = alignment
        self.state = state

    def propose(self, request: Request, k: int) -> tuple[np.ndarray, np.ndarray]:
        catalog = self.alignment.catalog_of[self.order]
        keep = catalog >= 0
        catalog, counts = catalog[keep], self.counts[self.order][keep]
        live = ~self.state.removed.values[catalog]
        return catalog[live][:k], counts[live][:k].astype(np.float64)


class _Cached:
    def __init__(self, refresh_s: float) -> None:
        self.refresh_s = refresh_s
        self.at = -1.0
        self.items = np.zeros(0, dtype=np.int64)
        self.scores = np.zeros(0)

    def stale(self) -> bool:
        return time.monotonic() - self.at > self.refresh_s


class StateTrending:
    name = "trending"

    def __init__(self, state: FeedState, depth: int = 2_000, refresh_s: float = 1.0) -> None:
        self.state = state
        self.depth = depth
        self.cache = _Cached(refresh_s)

    def propose(self, request: Request, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.cache.stale() or k > len(self.cache.items) == self.depth:
            trending = self.state.trending
            scores = trending.scores
            depth = min(max(self.depth, k), len(scores))
            if depth:
                top = np.argpartition(-scores, depth - 1)[:depth]
                top = top[np.argsort(-scores[top], kind="stable")]
                top = top[scores[top] > 0]
            else:
                top = np.zeros(0, dtype=np.int64)
            self.cache.items, self.cache.scores = top, scores[top].copy()
            self.cache.at = time.monotonic()
        items, scores = self.cache.items[:k], self.cache.scores[:k]
        live = ~self.state.removed.values[items]
        return items[live], scores[live]


class StateFresh:
    """Items created within ``window_s`` of the request, newest first; the newest ``depth`` of them
    are kept (a partial sort, not a sort of every fresh item), deeper when a caller asks for more."""

    name = "fresh"

    def __init__(self, state: FeedState, window_s: float, refresh_s: float = 1.0, depth: int = 2_000) -> None:
        self.state = state
        self.window_us = int(window_s * US)
        self.cache = _Cached(refresh_s)
        self.as_of_us = 0
        self.depth = depth
        self.complete = False  # whether the cache holds every fresh item (fewer than depth)

    def fresh_items(self, now_us: int, k: int = 0) -> np.ndarray:
        """Fresh, not removed item indices, newest first (at least the newest max(k, depth); cached
        for refresh_s)."""
        cache = self.cache
        if (
            cache.stale()
            or abs(now_us - self.as_of_us) > cache.refresh_s * US
            or (k > len(cache.items) and not self.complete)
        ):
            created = self.state.created_us.values
            mask = (created <= now_us) & (created > now_us - self.window_us) & ~self.state.removed.values
            fresh = np.flatnonzero(mask)
            depth = max(self.depth, k)
            self.complete = len(fresh) <= depth
            if not self.complete:
                fresh = fresh[np.argpartition(-created[fresh], depth - 1)[:depth]]
                fresh.sort()  # index order, so that the stable sort breaks ties as a full sort would
            cache.items = fresh[np.argsort(-created[fresh], kind="stable")]
            cache.scores = (created[cache.items] - now_us) / US
            cache.at = time.monotonic()
            self.as_of_us = now_us
        return cache.items

    def propose(self, request: Request, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.fresh_items(request.now_us, k)[:k], self.cache.scores[:k]


class RetrieveOp:
    name = "retrieve"
    critical = False

    def __init__(self, sources: list[tuple[Source, int]], bundle: ServingBundle) -> None:
        self.sources = sources
        self.bundle = bundle
        self.scratch = MergeScratch()
        self.lock = threading.Lock()  # one merge at a time on the scratch

    def __call__(self, request: RecRequest, candidates: Candidates, state: FeedState) -> Candidates:
        del candidates  # the first stage starts from nothing
        query = Request(
            None,
            request.history,
            request.now_us,
            request.exclude,
            request.user_id,
            user_vector(request, self.bundle, state),  # shared with the rankers' features
        )
        with self.lock:
            merged = merge_arrays(self.sources, query, scratch=self.scratch)
        if not len(merged.items):
            return Candidates.empty()
        return Candidates(merged.items, merged.scores, np.array(merged.sources, dtype=object))
