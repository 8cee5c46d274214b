"""Strong simple retrieval baselines behind one interface: popularity, ItemCF, EASE^R.

Each is fitted on a binary user x item matrix (``Interactions.csr()``) and scores users against the
whole catalog: ``score(users) -> (len(users), n_items)``. On several public benchmarks ItemCF and
EASE^R beat neural models, so every neural retriever is reported beside them.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import scipy.sparse as sp

from recstack.errors import RecstackError


class Retriever(Protocol):
    """Fitted on interactions; scores users against every item."""

    def fit(self, interactions: sp.csr_matrix) -> Retriever: ...
    def score(self, users: np.ndarray) -> np.ndarray: ...


def _check(matrix: sp.csr_matrix) -> sp.csr_matrix:
    if matrix.nnz == 0:
        raise RecstackError("cannot fit a retriever on an empty interaction set")
    binary = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    binary.data[:] = 1.0
    return binary


class Popularity:
    """Items by their number of interactions, the same list for everyone."""

    def fit(self, interactions: sp.csr_matrix) -> Popularity:
        self.counts_ = np.asarray(_check(interactions).sum(axis=0), dtype=np.float32).ravel()
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts_, (len(users), len(self.counts_)))


class ItemCF:
    """Item-to-item co-engagement: cosine similarity between item columns, keeping the ``neighbours``
    most similar items per item; a user's score for an item sums its similarity to the user's items."""

    def __init__(self, neighbours: int = 200, shrink: float = 0.0) -> None:
        self.neighbours = neighbours
        self.shrink = shrink

    def fit(self, interactions: sp.csr_matrix) -> ItemCF:
        x = _check(interactions)
        self.train_ = x
        co = (x.T @ x).toarray()  # (I, I) co-occurrence counts
        norms = np.sqrt(np.diag(co))
        sim = co / (np.outer(norms, norms) + self.shrink + 1e-12)
        np.fill_diagonal(sim, 0.0)
        if self.neighbours < sim.shape[0]:
            drop = np.argpartition(-sim, self.neighbours, axis=1)[:, self.neighbours :]
            np.put_along_axis(sim, drop, 0.0, axis=1)
        self.similarity_ = sp.csr_matrix(sim.astype(np.float32))
        return self

    def similar(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k items most co-engaged with ``item``: (ids, similarities)."""
        row = self.similarity_[item].toarray().ravel()
        top = np.argsort(-row)[:k]
        return top, row[top]

    def score(self, users: np.ndarray) -> np.ndarray:
        return np.asarray((self.train_[users] @ self.similarity_).todense())


class EASE:
    """EASE^R (Steck, 2019): the closed-form item-item model B = I - P / diag(P), P = (X'X + λI)^-1,
    with a zero diagonal; scores are X B."""

    def __init__(self, l2: float = 500.0) -> None:
        self.l2 = l2

    def fit(self, interactions: sp.csr_matrix) -> EASE:
        x = _check(interactions)
        self.train_ = x
        gram = (x.T @ x).toarray().astype(np.float64)
        gram[np.diag_indices_from(gram)] += self.l2
        p = np.linalg.inv(gram)
        b = p / (-np.diag(p))
        np.fill_diagonal(b, 0.0)
        self.weights_ = b.astype(np.float32)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        return np.asarray(self.train_[users] @ self.weights_)
