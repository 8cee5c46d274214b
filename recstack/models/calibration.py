"""Calibration of predicted probabilities, fitted on validation data.

- ``Platt``: a logistic regression on the logit of the score (two parameters).
- ``Isotonic``: a monotone step function (scikit-learn's IsotonicRegression), clipped to [eps, 1-eps].
- ``correct_downsampling``: when negatives were kept with probability ``rate`` in training, the
  model's odds are inflated by 1/rate; p' = p / (p + (1 - p) / rate) undoes it (He et al., 2014).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from recstack.errors import RecstackError

EPS = 1e-6


class Calibrator(Protocol):
    def fit(self, probs: np.ndarray, labels: np.ndarray) -> Calibrator: ...
    def transform(self, probs: np.ndarray) -> np.ndarray: ...


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    out: np.ndarray = np.log(p / (1 - p))
    return out


def _check(probs: np.ndarray, labels: np.ndarray) -> None:
    if len(probs) != len(labels) or len(probs) == 0:
        raise RecstackError("calibration needs equally long, non-empty probabilities and labels")
    if len(np.unique(labels)) < 2:
        raise RecstackError("calibration needs both classes in the validation labels")


class Platt:
    def __init__(self) -> None:
        self.a, self.b = 1.0, 0.0

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> Platt:
        _check(probs, labels)
        model = LogisticRegression(C=1e6, solver="lbfgs").fit(_logit(probs)[:, None], labels)
        self.a, self.b = float(model.coef_[0, 0]), float(model.intercept_[0])
        return self

    def transform(self, probs: np.ndarray) -> np.ndarray:
        out: np.ndarray = expit(self.a * _logit(probs) + self.b)
        return out


class Isotonic:
    def __init__(self) -> None:
        self.model = IsotonicRegression(y_min=EPS, y_max=1 - EPS, out_of_bounds="clip")

    def fit(self, probs: np.ndarray, labels: np.ndarray) -> Isotonic:
        _check(probs, labels)
        self.model.fit(np.asarray(probs, dtype=np.float64), labels)
        return self

    def transform(self, probs: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.model.predict(np.asarray(probs, dtype=np.float64))
        return out


def correct_downsampling(probs: np.ndarray, rate: float) -> np.ndarray:
    if not 0 < rate <= 1:
        raise RecstackError("the negative sampling rate must be in (0, 1]")
    p = np.asarray(probs, dtype=np.float64)
    out: np.ndarray = p / (p + (1 - p) / rate)
    return out


def reliability_curve(
    labels: np.ndarray, probs: np.ndarray, bins: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal-width bins: (mean predicted, observed rate, count) for the non-empty bins."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    pred = np.bincount(which, weights=probs, minlength=bins)
    hits = np.bincount(which, weights=labels, minlength=bins)
    keep = count > 0
    return pred[keep] / count[keep], hits[keep] / count[keep], count[keep]


def reliability_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, bins: int = 15) -> Path:
    """One line per name from (labels, probs); writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for name, (labels, probs) in curves.items():
        pred, observed, _ = reliability_curve(labels, probs, bins)
        ax.plot(pred, observed, marker="o", label=name)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed rate")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
