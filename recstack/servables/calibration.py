"""Calibration as serving applies it: one map per task from the ranker's probability to a
calibrated one, saved by training in ``calibration.json`` as ``{task: {"kind": ..., ...}}``.

- ``platt``: ``{"kind": "platt", "a": a, "b": b}``, p' = sigmoid(a * logit(p) + b); a bare ``[a, b]``
  (bundles written before the kinds existed) reads as Platt.
- ``isotonic``: ``{"kind": "isotonic", "x": [...], "y": [...]}``, the fitted step function's
  thresholds, applied by linear interpolation and clipped at both ends (what scikit-learn's
  ``IsotonicRegression.predict`` with ``out_of_bounds="clip"`` computes).

A task without an entry is served uncalibrated.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit, logit

from recstack.errors import CheckpointError

EPS = 1e-6


class TaskCalibration:
    """p -> calibrated p for one task."""

    def __init__(self, spec: Any) -> None:
        try:
            if isinstance(spec, list):
                spec = {"kind": "platt", "a": spec[0], "b": spec[1]}
            self.kind = str(spec["kind"])
            if self.kind == "platt":
                self.a, self.b = float(spec["a"]), float(spec["b"])
            elif self.kind == "isotonic":
                self.x = np.asarray(spec["x"], dtype=np.float64)
                self.y = np.asarray(spec["y"], dtype=np.float64)
                if self.x.ndim != 1 or self.x.shape != self.y.shape or not len(self.x):
                    raise ValueError("x and y must be equally long, non-empty lists")
                if np.any(np.diff(self.x) < 0):
                    raise ValueError("x must be sorted")
            else:
                raise ValueError(f"unknown calibration kind {self.kind!r} (platt, isotonic)")
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise CheckpointError(f"calibration {spec!r} is invalid: {exc}") from exc

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        if self.kind == "platt":
            out: np.ndarray = expit(self.a * logit(np.clip(probs, EPS, 1 - EPS)) + self.b)
            return out
        interpolated: np.ndarray = np.interp(probs, self.x, self.y)
        return interpolated

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "platt":
            return {"kind": "platt", "a": self.a, "b": self.b}
        return {"kind": "isotonic", "x": self.x.tolist(), "y": self.y.tolist()}


def read_calibration(raw: dict[str, Any]) -> dict[str, TaskCalibration]:
    if not isinstance(raw, dict):
        raise CheckpointError("calibration.json must map tasks to calibrations")
    return {task: TaskCalibration(spec) for task, spec in raw.items()}
