"""The A/B statistics against known answers: scipy's Welch test, the binomial false-positive rate of
A/A tests on the simulator, CUPED's variance reduction against the covariate's squared correlation,
and the sample-ratio check on an injected mismatch."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from recstack.data.simulator import RandomPolicy, Simulator, World
from recstack.errors import RecstackError
from recstack.experiments.analysis import cuped, decide, guardrail, mde, srm, users_needed, welch
from recstack.experiments.assignment import bucket
from recstack.experiments.metrics import user_metrics

WEIGHTS = {"click": 1.0, "like": 2.0, "share": 4.0, "hide": -6.0}


@pytest.fixture(scope="module")
def halves() -> tuple[object, object]:
    """Per-user metrics of a simulated log (random policy, 600 users), first and second half."""
    world = World.generate(n_users=600, n_items=300, seed=3)
    sim = Simulator(world, seed=3)
    policy = RandomPolicy(world.n_items, seed=3)
    first = pa.concat_tables(sim.run(policy, 15_000))
    second = pa.concat_tables(sim.run(policy, 15_000))
    return user_metrics(first, WEIGHTS), user_metrics(second, WEIGHTS)


def test_welch_matches_scipy_and_its_interval_is_consistent() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 400), rng.normal(1.2, 2.0, 300)
    result = welch(a, b, alpha=0.05)
    expected = stats.ttest_ind(b, a, equal_var=False)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-9)
    assert result.diff == pytest.approx(b.mean() - a.mean())
    assert result.ci_low < result.diff < result.ci_high
    # the interval excludes 0 exactly when p < alpha
    assert result.significant == (result.p_value < 0.05)
    # mde: the difference detected with 80% power is (z_.975 + z_.8) standard errors
    se = math.sqrt(a.var(ddof=1) / 400 + b.var(ddof=1) / 300)
    assert result.mde == pytest.approx((1.959964 + 0.841621) * se, rel=1e-4)
    assert users_needed(1.0, result.mde) > 0


def test_zero_variance_and_tiny_arms_have_documented_results() -> None:
    same = welch(np.ones(10), np.ones(12))
    assert same.p_value == 1.0 and same.ci_low == same.ci_high == 0.0
    shifted = welch(np.zeros(10), np.ones(12))
    assert shifted.p_value == 0.0 and shifted.significant
    with pytest.raises(RecstackError, match="at least two"):
        welch(np.ones(1), np.ones(5))
    with pytest.raises(RecstackError, match="finite"):
        welch(np.array([1.0, np.nan]), np.ones(5))


def test_aa_false_positive_rate_is_within_the_binomial_interval(halves: tuple[object, object]) -> None:
    metrics = halves[0]
    users = metrics.index.to_numpy()
    ctr = metrics["ctr"].to_numpy()
    positives = 0
    for salt in range(200):
        arm = np.array([bucket(f"aa{salt}", u) < 0.5 for u in users])
        positives += welch(ctr[~arm], ctr[arm]).p_value < 0.05
    low, high = stats.binom.interval(0.99, 200, 0.05)
    assert low <= positives <= high, positives


def test_cuped_variance_reduction_matches_the_squared_correlation(halves: tuple[object, object]) -> None:
    pre, post = halves
    joined = post[["ctr"]].join(pre["ctr"].rename("pre"), how="left").fillna(0.0)
    y, x = joined["ctr"].to_numpy(), joined["pre"].to_numpy()
    rho2 = np.corrcoef(x, y)[0, 1] ** 2
    raw, adjusted = [], []
    for salt in range(200):
        arm = np.array([bucket(f"cuped{salt}", u) < 0.5 for u in joined.index])
        raw.append(y[arm].mean() - y[~arm].mean())
        a, b, _ = cuped(y[~arm], x[~arm], y[arm], x[arm])
        adjusted.append(b.mean() - a.mean())
    ratio = np.var(adjusted) / np.var(raw)
    assert rho2 > 0.1  # users differ in taste: the pre-period says something
    # the difference's variance shrinks by 1 - rho^2; two variances of 200 splits each, ~10% noise
    assert ratio == pytest.approx(1 - rho2, abs=0.12)


def test_sample_ratio_mismatch_is_flagged_only_when_injected(halves: tuple[object, object]) -> None:
    users = halves[0].index.to_numpy()
    arm = np.array([bucket("srm", u) < 0.5 for u in users])
    fair = srm({"a": int((~arm).sum()), "b": int(arm.sum())}, {"a": 1.0, "b": 1.0})
    assert not fair.mismatch
    # 20% of arm b's users lost (a logging bug, say)
    lost = np.array([bucket("lost", u) < 0.2 for u in users]) & arm
    broken = srm({"a": int((~arm).sum()), "b": int((arm & ~lost).sum())}, {"a": 1.0, "b": 1.0})
    assert broken.mismatch and broken.p_value < 1e-3


def test_guardrails_block_a_ship_and_srm_overrides_a_win() -> None:
    rng = np.random.default_rng(1)
    control, treatment = rng.normal(1.0, 1.0, 5000), rng.normal(1.2, 1.0, 5000)
    primary = welch(control, treatment, metric="ctr")
    ok = srm({"a": 5000, "b": 5000}, {"a": 1, "b": 1})
    assert decide(primary, [], ok).ship
    # a guardrail metric 10% worse with a 1% tolerance
    hides = welch(rng.normal(1.0, 0.5, 5000), rng.normal(1.1, 0.5, 5000), metric="hides_per_request")
    check = guardrail(hides, 0.01, higher_is_better=False)
    assert not check.passed
    assert not decide(primary, [check], ok).ship
    assert not decide(primary, [], srm({"a": 5000, "b": 4000}, {"a": 1, "b": 1})).ship
    assert mde(1.0, 1.0, 100, 100) > mde(1.0, 1.0, 10_000, 10_000)
