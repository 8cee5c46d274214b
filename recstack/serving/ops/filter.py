"""Filter: drop what must not be shown: items the user has seen or hidden, removed items, and items
whose unsafe score reaches the threshold. Critical: if it fails, the request fails (showing unsafe
items is worse than showing nothing)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from recstack.serving.ops.base import Candidates, RecRequest
from recstack.serving.state import FeedState

UnsafeHook = Callable[[np.ndarray, FeedState], np.ndarray]


def catalog_unsafe(items: np.ndarray, state: FeedState) -> np.ndarray:
    """The unsafe score each item was upserted with (attribute unsafe_score, or unsafe as 0/1)."""
    out: np.ndarray = state.unsafe.values[items]
    return out


class FilterOp:
    name = "filter"
    critical = True

    def __init__(self, unsafe_threshold: float, unsafe_score: UnsafeHook = catalog_unsafe) -> None:
        self.threshold = unsafe_threshold
        self.unsafe_score = unsafe_score

    def __call__(self, request: RecRequest, candidates: Candidates, state: FeedState) -> Candidates:
        if not len(candidates):
            return candidates
        items = candidates.items
        keep = ~state.removed.values[items] & (self.unsafe_score(items, state) < self.threshold)
        if request.exclude:
            keep &= ~request.excluded(items)
        return candidates.take(np.flatnonzero(keep))
