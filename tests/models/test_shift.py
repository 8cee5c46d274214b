from __future__ import annotations

import numpy as np
import pytest

from recstack.errors import RecstackError
from recstack.models.shift import DomainWeights


def test_density_ratio_of_two_gaussians_has_a_known_answer() -> None:
    rng = np.random.default_rng(0)
    logged = rng.normal(0.0, 1.0, (20_000, 1))
    serving = rng.normal(1.0, 1.0, (10_000, 1))
    estimator = DomainWeights(clip=1e9).fit(logged, serving)
    grid = np.linspace(-1.0, 2.0, 7)[:, None]
    truth = np.exp(grid[:, 0] - 0.5)  # N(1,1) / N(0,1) density ratio
    assert estimator.ratio(grid) == pytest.approx(truth, rel=0.1)
    # the weighted logged mean of x estimates the serving mean (1.0)
    w = estimator.weights(logged)
    assert w.mean() == pytest.approx(1.0)
    assert float((w * logged[:, 0]).mean()) == pytest.approx(1.0, abs=0.08)


def test_clipping_and_empty_inputs() -> None:
    rng = np.random.default_rng(1)
    logged, serving = rng.normal(0, 1, (5000, 1)), rng.normal(2, 1, (5000, 1))
    w = DomainWeights(clip=5.0).fit(logged, serving).weights(logged)
    assert w.max() <= 5.0 / DomainWeights(clip=5.0).fit(logged, serving).scale + 1e-9
    with pytest.raises(RecstackError):
        DomainWeights().fit(logged[:0], serving)
