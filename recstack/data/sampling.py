"""Negative sampling, as column-wise batch transforms."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recstack.train.batch import Columns


class UniformNegatives:
    """Adds ``out`` (B,) with one item per row drawn uniformly from items the user has not engaged
    with (per ``positives``, a binary user x item matrix); rows are redrawn until they miss."""

    def __init__(
        self, positives: sp.csr_matrix, user_col: str = "user", out: str = "neg_item", max_rounds: int = 20
    ) -> None:
        self.positives = positives.tocsr()
        self.n_items = positives.shape[1]
        self.user_col = user_col
        self.out = out
        self.max_rounds = max_rounds

    def __call__(self, columns: Columns, rng: np.random.Generator) -> Columns:
        users = columns[self.user_col]
        negs = rng.integers(0, self.n_items, size=len(users))
        todo = np.arange(len(users))
        for _ in range(self.max_rounds):
            clash = np.asarray(self.positives[users[todo], negs[todo]]).ravel() > 0
            todo = todo[clash]
            if len(todo) == 0:
                break
            negs[todo] = rng.integers(0, self.n_items, size=len(todo))
        return columns | {self.out: negs}
