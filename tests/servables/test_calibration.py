from __future__ import annotations

import numpy as np
import pytest

from recstack.errors import CheckpointError
from recstack.models.calibration import Isotonic, Platt
from recstack.servables.calibration import TaskCalibration, read_calibration


def test_isotonic_as_served_equals_scikit_learns_prediction() -> None:
    rng = np.random.default_rng(0)
    probs = rng.uniform(0, 1, 4000)
    labels = (rng.uniform(0, 1, 4000) < probs**2).astype(float)  # miscalibrated: truth is p^2
    fitted = Isotonic().fit(probs, labels)
    served = TaskCalibration(
        {
            "kind": "isotonic",
            "x": fitted.model.X_thresholds_.tolist(),
            "y": fitted.model.y_thresholds_.tolist(),
        }
    )
    grid = np.concatenate([np.linspace(-0.5, 1.5, 500), probs[:100]])  # outside the range: clipped
    np.testing.assert_allclose(served(grid), fitted.transform(grid), atol=1e-12)
    assert abs(served(np.array([0.5]))[0] - 0.25) < 0.06  # close to the truth p^2


def test_platt_reads_both_encodings_and_bad_entries_are_clear_errors() -> None:
    rng = np.random.default_rng(1)
    probs = rng.uniform(0.01, 0.99, 2000)
    labels = (rng.uniform(0, 1, 2000) < probs).astype(float)
    platt = Platt().fit(probs, labels)
    new = TaskCalibration({"kind": "platt", "a": platt.a, "b": platt.b})
    old = read_calibration({"click": [platt.a, platt.b]})["click"]  # bundles before the kinds
    np.testing.assert_allclose(new(probs), platt.transform(probs), atol=1e-12)
    np.testing.assert_allclose(old(probs), new(probs))
    with pytest.raises(CheckpointError, match="x must be sorted"):
        TaskCalibration({"kind": "isotonic", "x": [0.5, 0.1], "y": [0.1, 0.2]})
    with pytest.raises(CheckpointError, match="invalid"):
        TaskCalibration({"kind": "platt", "a": 1.0})
