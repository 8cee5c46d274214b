"""Index-encoded interactions: the bridge from id-keyed frames to arrays that models train on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recstack.errors import RecstackError


@dataclass(frozen=True)
class Vocabulary:
    """Maps raw ids to dense indices 0..n-1 (in sorted order of the raw ids)."""

    ids: np.ndarray  # (n,) raw ids, sorted

    @classmethod
    def fit(cls, *columns: pd.Series) -> Vocabulary:
        values = pd.concat([pd.Series(c) for c in columns], ignore_index=True)
        if values.empty:
            raise RecstackError("cannot build a vocabulary from no ids")
        return cls(np.sort(values.unique()))

    def __len__(self) -> int:
        return len(self.ids)

    def encode(self, raw: pd.Series | np.ndarray) -> np.ndarray:
        """Indices of ``raw`` ids; raises RecstackError naming the first unknown id."""
        values = np.asarray(raw)
        index = np.searchsorted(self.ids, values)
        index = np.clip(index, 0, len(self.ids) - 1)
        unknown = self.ids[index] != values
        if unknown.any():
            raise RecstackError(f"unknown id {values[np.argmax(unknown)]!r} (not in the vocabulary)")
        return index.astype(np.int64)


@dataclass(frozen=True)
class Interactions:
    """(user, item) index pairs with the vocabularies that produced them."""

    users: np.ndarray  # (N,) int64
    items: np.ndarray  # (N,) int64
    n_users: int
    n_items: int

    @classmethod
    def encode(cls, frame: pd.DataFrame, users: Vocabulary, items: Vocabulary) -> Interactions:
        return cls(users.encode(frame["user_id"]), items.encode(frame["item_id"]), len(users), len(items))

    @classmethod
    def from_indices(cls, frame: pd.DataFrame, n_users: int, n_items: int) -> Interactions:
        """For frames whose ids are already indices 0..n-1 (the BARS split)."""
        u = frame["user_id"].to_numpy(np.int64)
        i = frame["item_id"].to_numpy(np.int64)
        if len(u) and (u.min() < 0 or u.max() >= n_users or i.min() < 0 or i.max() >= n_items):
            raise RecstackError("ids fall outside 0..n-1")
        return cls(u, i, n_users, n_items)

    def __len__(self) -> int:
        return len(self.users)

    def csr(self) -> sp.csr_matrix:
        """Binary user x item matrix (duplicates collapse to 1)."""
        data = np.ones(len(self.users), dtype=np.float32)
        matrix = sp.csr_matrix((data, (self.users, self.items)), shape=(self.n_users, self.n_items))
        matrix.data[:] = 1.0
        return matrix
