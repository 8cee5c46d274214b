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
        if not len(fresh):
            return candidates
        # one posterior draw per fresh item, then eligibility (not already listed, passes the safety
        # filter) checked best draw first, a few at a time (doubling): the same choice as drawing for
        # the eligible items only (the draws are independent), without filtering the whole pool
        clicks = state.clicks.values[fresh]
        shown = state.impressions.values[fresh]
        theta = request.rng.beta(1 + clicks, 1 + np.maximum(shown - clicks, 0))
        ranked = np.argsort(-theta)
        listed = set(candidates.items.tolist())
        picked: list[int] = []  # positions in fresh
        start, step = 0, 4 * slots
        while len(picked) < slots and start < len(ranked):
            part = ranked[start : start + step]
            start, step = start + step, 2 * step
            part = part[[i not in listed for i in fresh[part].tolist()]]
            if len(part):
                passed = self.safety(
                    request, Candidates(fresh[part], theta[part], _sources(len(part))), state
                )
                kept = set(passed.items.tolist())
                picked += [int(i) for i in part.tolist() if int(fresh[i]) in kept][: slots - len(picked)]
        if not picked:
            return candidates
        best = np.array(picked, dtype=np.int64)
        chosen = Candidates(fresh[best], theta[best], _sources(len(best)))

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


def _sources(n: int) -> np.ndarray:
    out = np.empty(n, dtype=object)
    out[:] = "explore"
    return out
