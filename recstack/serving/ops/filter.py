"""Filter: drop what must not be shown: items the user has seen or hidden, removed items, items the
safety model blocked (or whose client-sent unsafe score reaches ``[serving] unsafe_threshold``), and,
while a safety model is registered (or ``[safety] score_items = "required"``), items with text that
no model scored. Critical: if it fails, the request fails (showing unsafe items is worse than
showing nothing)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from recstack.safety.items import BLOCK, UNSCORED
from recstack.serving.ops.base import Candidates, RecRequest
from recstack.serving.state import FeedState


def always() -> bool:
    return True


class FilterOp:
    name = "filter"
    critical = True

    def __init__(self, hold_unscored: Callable[[], bool] = always) -> None:
        self.hold_unscored = hold_unscored  # read per request: a model registered later holds them

    def __call__(self, request: RecRequest, candidates: Candidates, state: FeedState) -> Candidates:
        if not len(candidates):
            return candidates
        items = candidates.items
        codes = state.safety.values[items]
        keep = ~state.removed.values[items] & ((codes & 3) != BLOCK)
        if self.hold_unscored():
            keep &= (codes & UNSCORED) == 0
        if request.exclude:
            keep &= ~request.excluded(items)
        return candidates.take(np.flatnonzero(keep))
