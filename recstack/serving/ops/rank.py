"""Light and heavy ranking: the served bundle's rankers over the ``[[features]]`` they were trained on.

The feature values of the candidates that reach the light ranker are read once per request from
the live state (``FeedState.features``), with the request-time ones computed here (the two-tower
``retrieval_score``; each ``last_n`` sequence as the candidates' similarity to those items), and
sliced for the heavy ranker; they are encoded column-wise (``ColumnarEncoder``), no frame per
request. The light ranker (distilled from the heavy one) keeps ``keep`` candidates; without a light
ranker the retrieval order is kept. The heavy ranker sets one probability per task.
"""

from __future__ import annotations

import numpy as np

from recstack.features.definitions import LastN, RetrievalScore
from recstack.features.feed import ColumnarEncoder, history_similarity
from recstack.servables.bundle import ServingBundle
from recstack.serving.ops.base import Candidates, RecRequest
from recstack.serving.state import FeedState


def user_vector(request: RecRequest, bundle: ServingBundle, state: FeedState) -> np.ndarray:
    """The user tower's output for this request (computed once, shared by the stages)."""
    if "user_vector" not in request.cache:
        history = [state.item_ids[i] for i in request.history]
        request.cache["user_vector"] = bundle.retriever.user_vector(request.user_id, history)
    out: np.ndarray = request.cache["user_vector"]
    return out


def served_features(
    request: RecRequest, items: np.ndarray, bundle: ServingBundle, state: FeedState
) -> dict[str, np.ndarray]:
    """The feature values of the served ``items``: those the rankers already read (kept in the
    request's cache), the rest (exploration picks) read now."""
    known_items = request.cache.get("feature_items")
    cached = request.cache.get("features")
    if known_items is None or cached is None or not len(known_items):
        return request_features(request, items, bundle, state)
    order = np.argsort(known_items, kind="stable")
    at = np.minimum(np.searchsorted(known_items[order], items), len(order) - 1)
    hit = known_items[order][at] == items
    source = order[at]
    out = {k: v[source] for k, v in cached.items()}
    missing = np.flatnonzero(~hit)
    if len(missing):
        fresh = request_features(request, items[missing], bundle, state)
        for k, v in fresh.items():
            out[k][missing] = v
    return out


def request_features(
    request: RecRequest, items: np.ndarray, bundle: ServingBundle, state: FeedState
) -> dict[str, np.ndarray]:
    """Every ranker feature of ``items`` (catalog indices) for this request: name -> (N,) float64
    (categorical ones as bucket codes)."""
    values = state.features.read(
        request.user_id, items, request.now_us, request.surface, request.context, state.created_us.values
    )
    bundle_of = request.cache["bundle_of"]
    rows = bundle_of[items]
    known = rows >= 0
    for f in state.features.features:
        if isinstance(f, RetrievalScore):
            scores = np.zeros(len(items))
            if known.any():
                scores[known] = bundle.vectors[rows[known]] @ user_vector(request, bundle, state)
            values[f.name] = scores
        elif isinstance(f, LastN):
            sequence = values[f.name][0] if len(items) else []
            history = bundle_of[np.asarray(sequence, dtype=np.int64)] if len(sequence) else rows[:0]
            history = history[history >= 0]
            similarity = np.zeros(len(items))
            if known.any():
                similarity[known] = history_similarity(bundle.vectors[rows[known]], bundle.vectors[history])
            values[f.name] = similarity
    return values


class LightRankOp:
    name = "light_rank"
    critical = False

    def __init__(self, bundle: ServingBundle, encoder: ColumnarEncoder | None, keep: int) -> None:
        self.bundle = bundle
        self.encoder = encoder
        self.keep = keep

    def __call__(self, request: RecRequest, candidates: Candidates, state: FeedState) -> Candidates:
        values = request_features(request, candidates.items, self.bundle, state)
        if self.bundle.light is None or self.encoder is None or len(candidates) <= self.keep:
            order = np.arange(min(len(candidates), self.keep))
        else:
            self.encoder.refresh(state.item_ids)
            encoded = self.encoder.encode(candidates.items, request.user_id, values)
            scores = self.bundle.light.score_encoded(encoded)[:, 0]
            order = np.argsort(-scores, kind="stable")[: self.keep]
            candidates.scores = scores
        request.cache["features"] = {k: v[order] for k, v in values.items()}
        request.cache["feature_items"] = candidates.items[order]
        return candidates.take(order)


class HeavyRankOp:
    name = "heavy_rank"
    critical = False

    def __init__(self, bundle: ServingBundle, encoder: ColumnarEncoder) -> None:
        self.bundle = bundle
        self.encoder = encoder

    def __call__(self, request: RecRequest, candidates: Candidates, state: FeedState) -> Candidates:
        if not len(candidates):
            return candidates
        values = request.cache.get("features")
        if values is None or len(next(iter(values.values()))) != len(candidates):
            values = request_features(request, candidates.items, self.bundle, state)
            request.cache["features"], request.cache["feature_items"] = values, candidates.items
        self.encoder.refresh(state.item_ids)
        probs = self.bundle.heavy.score_encoded(
            self.encoder.encode(candidates.items, request.user_id, values)
        )
        candidates.probs = probs
        candidates.tasks = tuple(self.bundle.tasks)
        candidates.scores = probs[:, 0].copy()
        return candidates
