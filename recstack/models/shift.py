"""Importance weights for covariate shift, from a domain classifier (a density-ratio estimate).

A ranker trains on logged rows (what won the auction and was shown) but scores pre-auction
candidates, a different distribution of features. With a classifier c(x) = P(serving | x) trained to
tell serving rows from logged rows, the density ratio is

    p_serving(x) / p_logged(x) = c(x) / (1 - c(x)) * n_logged / n_serving

and weighting each logged training row by it makes the training loss an estimate of the loss on the
serving distribution (Shimodaira, 2000; Bickel et al., 2009). Weights are clipped (a few huge weights
would dominate the loss) and normalized to mean 1 over the logged rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from recstack.errors import RecstackError


class DomainWeights:
    """fit(logged, serving) on feature matrices; weights(x) for logged rows."""

    def __init__(self, clip: float = 20.0, classifier: Any | None = None) -> None:
        self.clip = clip
        self.classifier = classifier if classifier is not None else LogisticRegression(max_iter=1000)
        self.prior = 1.0
        self.scale = 1.0

    def _ratio(self, x: np.ndarray) -> np.ndarray:
        p = np.clip(self.classifier.predict_proba(x)[:, 1], 1e-6, 1 - 1e-6)
        out: np.ndarray = p / (1 - p) * self.prior
        return out

    def fit(self, logged: np.ndarray, serving: np.ndarray) -> DomainWeights:
        if len(logged) == 0 or len(serving) == 0:
            raise RecstackError("density-ratio weights need logged and serving rows")
        x = np.vstack([logged, serving])
        y = np.r_[np.zeros(len(logged)), np.ones(len(serving))]
        self.classifier.fit(x, y)
        self.prior = len(logged) / len(serving)
        self.scale = 1.0
        self.scale = float(np.minimum(self._ratio(logged), self.clip).mean())
        return self

    def ratio(self, x: np.ndarray) -> np.ndarray:
        """The estimated p_serving(x) / p_logged(x), unclipped."""
        return self._ratio(x)

    def weights(self, logged: np.ndarray) -> np.ndarray:
        """Clipped ratios scaled so that they average 1 over the rows ``fit`` saw."""
        out: np.ndarray = np.minimum(self._ratio(logged), self.clip) / self.scale
        return out
