"""Light and heavy ranking: the ONNX rankers of the served bundle over the features of features.py.

The feature frame is built once per request for the candidates that reach the light ranker and
sliced for the heavy one. The light ranker (distilled from the heavy one) keeps ``keep`` candidates;
without a light ranker the retrieval order is kept. The heavy ranker sets one probability per task.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recstack.serving.bundle import ServingBundle
from recstack.serving.features import serving_frame
from recstack.serving.ops.base import Candidates, RecRequest
from recstack.serving.state import FeedState


def user_vector(request: RecRequest, bundle: ServingBundle, state: FeedState) -> np.ndarray:
    """The user tower's output for this request (computed once, shared by the stages)."""
    if "user_vector" not in request.cache:
        history = [state.item_ids[i] for i in request.history]
        request.cache["user_vector"] = bundle.retriever.user_vector(request.user_id, history)
    out: np.ndarray = request.cache["user_vector"]
    return out


def features(
    request: RecRequest,
    candidates: Candidates,
    bundle: ServingBundle,
    state: FeedState,
    catalog_of: np.ndarray,
) -> pd.DataFrame:
    """The ranker features of the candidates; ``catalog_of`` maps bundle items to catalog indices and
    its inverse (``request.cache['bundle_of']``) finds each candidate's item vector."""
    items = candidates.items
    bundle_of: np.ndarray = request.cache["bundle_of"]
    rows = bundle_of[items]
    known = rows >= 0
    scores = np.zeros(len(items))
    if known.any():
        scores[known] = bundle.vectors[rows[known]] @ user_vector(request, bundle, state)
    frame = serving_frame(
        request.user_id,
        request.surface,
        request.context,
        [state.item_ids[i] for i in items],
        [state.creators[c] for c in state.creator.values[items]],
        {f: [state.fields[f][i] for i in items] for f in bundle.meta.get("item_fields", [])},
        scores,
        state.created_us.values[items],
        request.now_us,
        state.clicks.values[items],
        state.impressions.values[items],
    )
    request.cache["features"] = frame
    return frame


class LightRankOp:
    name = "light_rank"
    critical = False

    def __init__(self, bundle: ServingBundle, catalog_of: np.ndarray, keep: int) -> None:
        self.bundle = bundle
        self.catalog_of = catalog_of
        self.keep = keep

    def __call__(self, request: RecRequest, candidates: Candidates, state: FeedState) -> Candidates:
        frame = features(request, candidates, self.bundle, state, self.catalog_of)
        if self.bundle.light is None or len(candidates) <= self.keep:
            order = np.arange(min(len(candidates), self.keep))
        else:
            scores = self.bundle.light.score(frame)[:, 0]
            order = np.argsort(-scores, kind="stable")[: self.keep]
            candidates = Candidates(
                candidates.items,
                scores,
                candidates.sources,
                retrieval_scores=candidates.retrieval_scores,
            )
        request.cache["features"] = frame.iloc[order].reset_index(drop=True)
        return candidates.take(order)


class HeavyRankOp:
    name = "heavy_rank"
    critical = False

    def __init__(self, bundle: ServingBundle, catalog_of: np.ndarray) -> None:
        self.bundle = bundle
        self.catalog_of = catalog_of

    def __call__(self, request: RecRequest, candidates: Candidates, state: FeedState) -> Candidates:
        if not len(candidates):
            return candidates
        frame = request.cache.get("features")
        if frame is None or len(frame) != len(candidates):
            frame = features(request, candidates, self.bundle, state, self.catalog_of)
        probs = self.bundle.heavy.score(frame)
        candidates.probs = probs
        candidates.tasks = tuple(self.bundle.tasks)
        candidates.scores = probs[:, 0].copy()
        return candidates
