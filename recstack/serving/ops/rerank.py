"""Re-rank for diversity, with creator spacing.

- MMR (Carbonell & Goldstein, 1998): repeatedly take the candidate maximizing
  lambda * value - (1 - lambda) * (max cosine similarity to the items already placed), values scaled
  to [0, 1] over the candidates.
- DPP: greedy MAP inference (Chen, Zhang & Zhou, 2018) for the kernel L = diag(q) S diag(q), with
  S the cosine similarity of item-tower vectors and q = exp(value scaled to [0, 1] / (1 - lambda)),
  the incremental Cholesky form: O(N n D) for n picks among N. When the kernel has no gain left
  (near-duplicates, or qualities below precision at a lambda near 1) the rest go by value.

Both enforce creator spacing: no two items of one creator within ``creator_gap`` slots (positions
of the same creator differ by at least ``creator_gap``). When every remaining candidate would break
it, the list ends there: a shorter list rather than a broken rule. Items without a vector (not in
the served model) are similar to nothing.
"""

from __future__ import annotations

import numpy as np

from recstack.config import Diversity
from recstack.servables.bundle import ServingBundle
from recstack.serving.ops.base import Candidates, RecRequest
from recstack.serving.state import FeedState


def _scaled(values: np.ndarray) -> np.ndarray:
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.ones_like(values)


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    out: np.ndarray = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    return out


class _Spacing:
    """Which candidates may take the next slot: a pick at slot t blocks its creator until slot
    t + gap (so it is absent from the gap - 1 slots after it). Creators are coded 0..C-1 once, so
    each step is one gather and one comparison."""

    def __init__(self, creators: np.ndarray, gap: int) -> None:
        self.gap = max(gap, 1)
        _, self.code = np.unique(creators, return_inverse=True)
        self.until = np.zeros(int(self.code.max()) + 1 if len(self.code) else 0, dtype=np.int64)

    def feasible(self, slot: int) -> np.ndarray:
        out: np.ndarray = self.until[self.code] <= slot
        return out

    def place(self, j: int, slot: int) -> None:
        self.until[self.code[j]] = slot + self.gap


def mmr(
    values: np.ndarray, vectors: np.ndarray, creators: np.ndarray, n: int, lam: float, gap: int
) -> list[int]:
    """Indices of the chosen candidates, in order."""
    unit = _unit(vectors.astype(np.float64))
    similarity = unit @ unit.T  # (N, N), once: each step then reads one row
    relevance = lam * _scaled(values)
    max_sim = np.zeros(len(values))
    available = np.ones(len(values), dtype=bool)
    spacing = _Spacing(creators, gap)
    picked: list[int] = []
    while len(picked) < n:
        score = relevance - (1 - lam) * max_sim
        score[~(available & spacing.feasible(len(picked)))] = -np.inf
        j = int(score.argmax())
        if score[j] == -np.inf:
            break
        spacing.place(j, len(picked))
        picked.append(j)
        available[j] = False
        np.maximum(max_sim, similarity[j], out=max_sim)
    return picked


def dpp(
    values: np.ndarray, vectors: np.ndarray, creators: np.ndarray, n: int, lam: float, gap: int
) -> list[int]:
    unit = _unit(vectors.astype(np.float64))
    quality = np.exp((_scaled(values) - 1) / max(1 - lam, 1e-3))  # max 1; no overflow as lambda -> 1
    kernel = quality[:, None] * (unit @ unit.T) * quality[None, :]  # L = diag(q) S diag(q)
    np.fill_diagonal(kernel, quality**2)  # S_ii = 1, also for items without a vector
    size = len(values)
    cholesky = np.zeros((size, n))
    gains = quality**2  # L_ii
    available = np.ones(size, dtype=bool)
    spacing = _Spacing(creators, gap)
    picked: list[int] = []
    while len(picked) < n:
        t = len(picked)
        score = np.where(available & spacing.feasible(t) & (gains > 1e-10), gains, -np.inf)
        j = int(score.argmax())
        if score[j] == -np.inf:
            break
        e = (kernel[j] - cholesky[:, :t] @ cholesky[j, :t]) / np.sqrt(gains[j])
        cholesky[:, t] = e
        gains = gains - e**2
        spacing.place(j, t)
        picked.append(j)
        available[j] = False
    # the kernel is exhausted (near-duplicate vectors, or qualities below precision at a high
    # lambda): the remaining slots go by value, spacing kept, rather than the list ending early
    while len(picked) < n:
        score = np.where(available & spacing.feasible(len(picked)), values, -np.inf)
        j = int(score.argmax())
        if score[j] == -np.inf:
            break
        spacing.place(j, len(picked))
        picked.append(j)
        available[j] = False
    return picked


class RerankOp:
    name = "rerank"
    critical = False

    def __init__(self, bundle: ServingBundle, method: Diversity, lam: float, creator_gap: int) -> None:
        self.bundle = bundle
        self.method = method
        self.lam = lam
        self.gap = creator_gap

    def __call__(self, request: RecRequest, candidates: Candidates, state: FeedState) -> Candidates:
        if not len(candidates):
            return candidates
        creators = state.creator.values[candidates.items]
        rows = request.cache["bundle_of"][candidates.items]
        vectors = np.zeros((len(candidates), self.bundle.vectors.shape[1]), dtype=np.float32)
        vectors[rows >= 0] = self.bundle.vectors[rows[rows >= 0]]
        n = request.n
        if self.method is Diversity.none:
            pick = mmr(candidates.scores, vectors, creators, n, 1.0, self.gap)
        elif self.method is Diversity.mmr:
            pick = mmr(candidates.scores, vectors, creators, n, self.lam, self.gap)
        else:
            pick = dpp(candidates.scores, vectors, creators, n, self.lam, self.gap)
        return candidates.take(np.array(pick, dtype=np.int64))
