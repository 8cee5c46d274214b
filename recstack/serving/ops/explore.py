"""Exploration: a budget of ``slots`` positions per response for fresh items, chosen by Thompson
sampling on each fresh item's Beta(1 + clicks, 1 + impressions - clicks) posterior of its click rate
(the worker counts impressions and clicks). Candidates pass the same safety filter as the rest; a
chosen item goes to evenly spaced positions (the first slot it fits without breaking creator
spacing) and pushes the list's tail out. Marked ``explore`` and sourced ``explore`` in the response.
"""

from __future__ import annotations

import numpy as np

from recstack.serving.ops.base import Candidates, RecRequest
from recstack.serving.ops.filter import FilterOp
from recstack.serving.ops.retrieve import StateFresh
from recstack.serving.state import FeedState


class ExploreOp:
    name = "explore"
    critical = False

    def __init__(
        self, slots: int, fresh: StateFresh, safety: FilterOp, creator_gap: int, pool: int = 500
    ) -> None:
        self.slots = slots
        self.fresh = fresh
        self.safety = safety
        self.gap = creator_gap
        self.pool = pool

    def __call__(self, request: RecRequest, candidates: Candidates, state: FeedState) -> Candidates:
        n = request.n
        slots = min(self.slots, n)
        if slots == 0:
            return candidates
        fresh = self.fresh.fresh_items(request.now_us, self.pool)[: self.pool]
        fresh = fresh[~np.isin(fresh, candidates.items)]
        if not len(fresh):
            return candidates
        sources = np.full(len(fresh), "explore", dtype=object)
        pool = self.safety(request, Candidates(fresh, np.zeros(len(fresh)), sources), state)
        if not len(pool):
            return candidates
        clicks = state.clicks.values[pool.items]
        shown = state.impressions.values[pool.items]
        theta = request.rng.beta(1 + clicks, 1 + np.maximum(shown - clicks, 0))
        best = np.argsort(-theta)[:slots]
        chosen = pool.take(best)
        chosen.scores = theta[best]

        # positions of the final list, as indices into candidates (< size) or chosen (size + k)
        size = len(candidates)
        order = list(range(size))
        creators = state.creator.values
        owners = creators[candidates.items].tolist()
        targets = [int((k + 1) * n / (slots + 1)) for k in range(slots)]
        for k, (target, creator) in enumerate(zip(targets, creators[chosen.items].tolist(), strict=False)):
            for pos in range(min(target, len(order)), min(len(order), n) + 1):
                if self.gap <= 1 or creator not in owners[max(0, pos - self.gap + 1) : pos + self.gap - 1]:
                    order.insert(pos, size + k)
                    owners.insert(pos, creator)
                    break
        at = np.array(order[:n], dtype=np.int64)
        return Candidates(
            np.concatenate([candidates.items, chosen.items])[at],
            np.concatenate([candidates.scores, chosen.scores])[at],
            np.concatenate([candidates.sources, chosen.sources])[at],
            explore=at >= size,
        )
