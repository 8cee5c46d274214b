"""Light and heavy ranking: the ONNX rankers of the served bundle over the features of features.py.

Features are encoded column-wise from the catalog's arrays (``ColumnarEncoder``): no frame per
request. The dense values are computed once per request for the candidates that reach the light
ranker and sliced for the heavy one. The light ranker (distilled from the heavy one) keeps ``keep``
candidates; without a light ranker the retrieval order is kept. The heavy ranker sets one
probability per task.
"""

from __future__ import annotations

import numpy as np

from recstack.features.feed import ColumnarEncoder, dense_values
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


def dense_features(
    request: RecRequest, items: np.ndarray, bundle: ServingBundle, state: FeedState
) -> dict[str, np.ndarray]:
    """retrieval_score, age_h and item_ctr of ``items`` for this request."""
    rows = request.cache["bundle_of"][items]
    known = rows >= 0
    scores = np.zeros(len(items))
    if known.any():
        scores[known] = bundle.vectors[rows[known]] @ user_vector(request, bundle, state)
    return dense_values(
        scores,
        state.created_us.values[items],
        request.now_us,
        state.clicks.values[items],
        state.impressions.values[items],
    )


def request_values(request: RecRequest) -> dict[str, str]:
    return {
        "user_id": request.user_id or "",
        "surface": request.surface,
        "device": request.context.get("device", ""),
    }


class LightRankOp:
    name = "light_rank"
    critical = False

    def __init__(self, bundle: ServingBundle, encoder: ColumnarEncoder | None, keep: int) -> None:
        self.bundle = bundle
        self.encoder = encoder
        self.keep = keep

    def __call__(self, request: RecRequest, candidates: Candidates, state: FeedState) -> Candidates:
        dense = dense_features(request, candidates.items, self.bundle, state)
        if self.bundle.light is None or self.encoder is None or len(candidates) <= self.keep:
            order = np.arange(min(len(candidates), self.keep))
        else:
            self.encoder.refresh(state)
            encoded = self.encoder.encode(candidates.items, request_values(request), dense)
            scores = self.bundle.light.score_encoded(encoded)[:, 0]
            order = np.argsort(-scores, kind="stable")[: self.keep]
            candidates.scores = scores
        request.cache["dense"] = {k: v[order] for k, v in dense.items()}
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
        dense = request.cache.get("dense")
        if dense is None or len(next(iter(dense.values()))) != len(candidates):
            dense = dense_features(request, candidates.items, self.bundle, state)
        self.encoder.refresh(state)
        probs = self.bundle.heavy.score_encoded(
            self.encoder.encode(candidates.items, request_values(request), dense)
        )
        candidates.probs = probs
        candidates.tasks = tuple(self.bundle.tasks)
        candidates.scores = probs[:, 0].copy()
        return candidates
