"""Value model: value = sum over tasks of weight x calibrated P(action), weights from
``[serving] value_weights`` (negative for hide/report). Orders the candidates by value. Tasks the
ranker lacks are ignored; without heavy-ranker probabilities the order is kept."""

from __future__ import annotations

import numpy as np

from recstack.servables.bundle import ServingBundle
from recstack.serving.ops.base import Candidates, RecRequest
from recstack.serving.state import FeedState


class ValueOp:
    name = "value"
    critical = False

    def __init__(self, bundle: ServingBundle, weights: dict[str, float]) -> None:
        self.bundle = bundle
        self.weights = np.array([weights.get(t, 0.0) for t in bundle.tasks])
        if not self.weights.any():
            raise ValueError(
                f"[serving] value_weights {weights} name none of the ranker's tasks {bundle.tasks}"
            )

    def __call__(self, request: RecRequest, candidates: Candidates, state: FeedState) -> Candidates:
        if candidates.probs is None or not len(candidates):
            return candidates
        value = self.bundle.calibrate(candidates.probs) @ self.weights
        candidates.scores = value
        return candidates.take(np.argsort(-value, kind="stable"))
