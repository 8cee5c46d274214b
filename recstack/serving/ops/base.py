"""The request and candidate containers every operator shares."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from recstack.index.sources import excluded_mask
from recstack.serving.state import FeedState


@dataclass
class RecRequest:
    """One recommendation request as the operators see it. ``now_us``: request time (microseconds);
    ``history``: the user's recent engaged item indices, most recent first; ``exclude``: item indices
    never to show (seen, blocked by the user)."""

    user_id: str | None
    n: int
    now_us: int
    surface: str = "feed"
    context: dict[str, str] = field(default_factory=dict)
    history: tuple[int, ...] = ()
    exclude: Collection[int] = frozenset()
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    cache: dict[str, Any] = field(default_factory=dict)  # per-request values stages share

    def excluded(self, items: np.ndarray) -> np.ndarray:
        """Which of ``items`` are excluded (a boolean mask, one membership test per item)."""
        return excluded_mask(self.exclude, items)


@dataclass
class Candidates:
    """Columnar candidate set: ``items`` (N,) catalog indices, ``scores`` (N,) the current stage's
    scores, ``sources`` (N,) the retrieval source of each (an object array of names; a list given
    is converted), ``probs`` (N, T) heavy-ranker probabilities
    (``tasks`` names the columns) once ranked, ``explore`` marks items placed by exploration and
    ``propensity`` (N,) is each item's probability of being shown by this policy (None: all 1, the
    ranked slots are deterministic)."""

    items: np.ndarray
    scores: np.ndarray
    sources: np.ndarray
    probs: np.ndarray | None = None
    tasks: tuple[str, ...] = ()
    explore: np.ndarray | None = None
    propensity: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.sources, np.ndarray):
            self.sources = np.array(self.sources, dtype=object)

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def empty(cls) -> Candidates:
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0, dtype=object))

    def take(self, order: np.ndarray) -> Candidates:
        """The candidates at positions ``order`` (a subset, reordered)."""
        order = np.asarray(order, dtype=np.int64)
        return Candidates(
            self.items[order],
            self.scores[order],
            self.sources[order],
            None if self.probs is None else self.probs[order],
            self.tasks,
            None if self.explore is None else self.explore[order],
            None if self.propensity is None else self.propensity[order],
        )


class Operator(Protocol):
    name: str
    critical: bool

    def __call__(self, request: RecRequest, candidates: Candidates, state: FeedState) -> Candidates: ...
