"""Value model: value = sum over tasks of weight x calibrated P(action), weights from
``[serving] value_weights`` (negative for hide/report), lowered for unsafe content:

    value -= |value| x (review_penalty x unsafe_score x [in review] + creator_penalty x creator rate)

where an item is in review when the safety model scored it between the review and the block
thresholds, and the creator rate is the share of the creator's items in review or blocked
(``FeedState.creator_unsafe_rate``). Orders the candidates by value. Tasks the ranker lacks are
ignored; without heavy-ranker probabilities the order is kept."""

from __future__ import annotations

import numpy as np

from recstack.safety.items import REVIEW
from recstack.servables.bundle import ServingBundle
from recstack.serving.ops.base import Candidates, RecRequest
from recstack.serving.state import FeedState


class ValueOp:
    name = "value"
    critical = False

    def __init__(
        self,
        bundle: ServingBundle,
        weights: dict[str, float],
        review_penalty: float = 0.0,
        creator_penalty: float = 0.0,
        creator_prior_items: float = 2.0,
    ) -> None:
        self.bundle = bundle
        self.review_penalty = review_penalty
        self.creator_penalty = creator_penalty
        self.creator_prior_items = creator_prior_items
        self.weights = np.array([weights.get(t, 0.0) for t in bundle.tasks])
        if not self.weights.any():
            raise ValueError(
                f"[serving] value_weights {weights} name none of the ranker's tasks {bundle.tasks}"
            )

    def __call__(self, request: RecRequest, candidates: Candidates, state: FeedState) -> Candidates:
        if candidates.probs is None or not len(candidates):
            return candidates
        value = self.bundle.calibrate(candidates.probs) @ self.weights  # (N,)
        items = candidates.items
        penalty = np.zeros(len(value))
        if self.review_penalty:
            review = (state.safety.values[items] & 3) == REVIEW
            penalty += self.review_penalty * state.unsafe.values[items] * review
        if self.creator_penalty:
            penalty += self.creator_penalty * state.creator_unsafe_rate(items, self.creator_prior_items)
        if penalty.any():
            value = value - np.abs(value) * penalty
        candidates.scores = value
        return candidates.take(np.argsort(-value, kind="stable"))
