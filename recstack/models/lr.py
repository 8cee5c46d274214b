"""Logistic regression ranker: one-hot categorical fields, hashed pairwise crosses, standardized
dense features, fitted by scikit-learn.

Each categorical field gets its exact one-hot columns (index 0 = unseen); every pair of fields gets a
hashed cross (``2**hash_bits`` shared buckets), which is how a linear model learns "this user likes
this app" without a column per pair. The model saves to ``.npz`` (weights) plus the encoder JSON.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import expit

from recstack.errors import CheckpointError, RecstackError
from recstack.features.tabular import Encoded, TabularEncoder

_MIX = np.uint64(0x9E3779B97F4A7C15)


def _check_binary(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    if len(np.unique(y[~np.isnan(y)])) < 2:
        raise RecstackError("the label has one class only; a ranker cannot learn from it")
    return y


class LogisticRanker:
    def __init__(
        self,
        categorical: Sequence[str] = (),
        dense: Sequence[str] = (),
        crosses: bool = True,
        hash_bits: int = 18,
        c: float = 1.0,
        max_iter: int = 300,
    ) -> None:
        self.encoder = TabularEncoder(categorical, dense)
        self.crosses = crosses
        self.hash_bits = hash_bits
        self.c = c
        self.max_iter = max_iter
        self.coef_: np.ndarray | None = None
        self.intercept_ = 0.0

    def _design(self, encoded: Encoded) -> sp.csr_matrix:
        n, fields = encoded.sparse.shape
        sizes = np.array(self.encoder.vocab_sizes, dtype=np.int64)
        offsets = np.r_[0, np.cumsum(sizes)[:-1]]
        cols = [encoded.sparse + offsets]  # (N, F) exact one-hot columns
        width = int(sizes.sum())
        if self.crosses and fields > 1:
            buckets = np.uint64(1 << self.hash_bits)
            with np.errstate(over="ignore"):  # multiplicative hashing wraps around by design
                for pair, (i, j) in enumerate(combinations(range(fields), 2)):
                    salt = np.full(n, pair + 1, dtype=np.uint64) * _MIX
                    key = (encoded.sparse[:, i].astype(np.uint64) * np.uint64(1_000_003)) ^ (
                        encoded.sparse[:, j].astype(np.uint64) + salt
                    )
                    key = (key * _MIX) >> np.uint64(64 - self.hash_bits)
                    cols.append((key % buckets).astype(np.int64)[:, None] + width)
            width += 1 << self.hash_bits
        hot = np.hstack(cols)  # (N, F + pairs)
        one_hot = sp.csr_matrix(
            (np.ones(hot.size, dtype=np.float32), hot.ravel(), np.arange(0, hot.size + 1, hot.shape[1])),
            shape=(n, width),
        )
        return sp.hstack([one_hot, sp.csr_matrix(encoded.dense)], format="csr")

    def fit(self, frame: pd.DataFrame, y: np.ndarray) -> LogisticRanker:
        return self.fit_encoded(self.encoder.fit_transform(frame), y)

    def fit_encoded(
        self,
        encoded: Encoded,
        y: np.ndarray,
        weight: np.ndarray | None = None,
        init: LogisticRanker | None = None,
    ) -> LogisticRanker:
        """Fit on rows already encoded by ``self.encoder`` (fitted). ``weight``: (N,) sample
        weights; ``init``: a fitted ranker over the same encoder whose weights start the solver
        (a warm start for incremental training)."""
        from sklearn.linear_model import LogisticRegression  # training only: serving needs none of it

        y = _check_binary(y)
        design = self._design(encoded)
        model = LogisticRegression(
            C=self.c, max_iter=self.max_iter, solver="lbfgs", warm_start=init is not None
        )
        if init is not None and init.coef_ is not None and len(init.coef_) == design.shape[1]:
            model.coef_ = init.coef_[None, :].copy()
            model.intercept_ = np.array([init.intercept_])
            model.classes_ = np.array([0.0, 1.0])
        model.fit(design, y, sample_weight=weight)
        self.coef_ = model.coef_.ravel().astype(np.float64)
        self.intercept_ = float(model.intercept_[0])
        return self

    def decision_function(self, frame: pd.DataFrame) -> np.ndarray:
        return self.decision_encoded(self.encoder.transform(frame))

    def decision_encoded(self, encoded: Encoded) -> np.ndarray:
        """(N,) logits of rows encoded by ``self.encoder``."""
        if self.coef_ is None:
            raise RecstackError("the ranker is not fitted")
        out: np.ndarray = self._design(encoded) @ self.coef_ + self.intercept_
        return out

    def predict_encoded(self, encoded: Encoded) -> np.ndarray:
        """(N,) probabilities of rows encoded by ``self.encoder``."""
        out: np.ndarray = expit(self.decision_encoded(encoded))
        return out

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """(N,) click probabilities."""
        out: np.ndarray = expit(self.decision_function(frame))
        return out

    def save(self, folder: Path) -> None:
        if self.coef_ is None:
            raise RecstackError("the ranker is not fitted")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "lr.npz", coef=self.coef_, intercept=np.array([self.intercept_]))
        self.encoder.save(folder / "encoder.json")
        (folder / "lr.json").write_text(json.dumps({"crosses": self.crosses, "hash_bits": self.hash_bits}))

    @classmethod
    def load(cls, folder: Path) -> LogisticRanker:
        folder = Path(folder)
        encoder = TabularEncoder.load(folder / "encoder.json")
        try:
            meta = json.loads((folder / "lr.json").read_text())
            with np.load(folder / "lr.npz") as data:
                coef, intercept = data["coef"], float(data["intercept"][0])
        except Exception as exc:  # numpy raises several types for damaged archives
            raise CheckpointError(f"logistic ranker in {folder} is missing or corrupt: {exc}") from exc
        ranker = cls(encoder.categorical, encoder.dense, meta["crosses"], meta["hash_bits"])
        ranker.encoder, ranker.coef_, ranker.intercept_ = encoder, coef, intercept
        return ranker
