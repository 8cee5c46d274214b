"""Known answers for the drift statistics: PSI of hand-computed shares, KS and chi-squared against
SciPy's own two-sample tests, and the edge cases (constant values, nothing finite)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from recstack.monitoring.drift import (
    EPS,
    OTHER,
    DriftError,
    compare,
    cramers_v_corrected,
    profile,
    psi,
    psi_noise,
    psi_of_shares,
    ratio_rse,
)


def test_psi_of_shares_is_the_textbook_sum() -> None:
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5)
    want = -0.25 * math.log(0.5) + 0.25 * math.log(1.5)
    assert psi_of_shares(np.array([0.5, 0.5]), np.array([0.25, 0.75])) == pytest.approx(want, abs=1e-12)
    # an empty bin counts as EPS, not as zero (the sum stays finite)
    got = psi_of_shares(np.array([0.5, 0.5]), np.array([0.0, 1.0]))
    assert got == pytest.approx((EPS - 0.5) * math.log(EPS / 0.5) + 0.5 * math.log(2.0), rel=1e-12)


def test_psi_is_zero_on_the_reference_and_grows_with_a_mean_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=20_000)
    assert psi(ref, ref) == pytest.approx(0.0, abs=1e-12)
    # same distribution, another sample: PSI ~ (bins - 1) (1/n1 + 1/n2) (chi-squared mean), tiny
    assert psi(ref, rng.normal(size=20_000)) < 0.005
    shifts = [psi(ref, rng.normal(loc=m, size=20_000)) for m in (0.1, 0.3, 0.6)]
    assert shifts[0] < shifts[1] < shifts[2]
    # for a normal mean shift of d, PSI -> d^2 as the bins get fine; with 10 bins a little less
    assert 0.25 < shifts[2] / 0.6**2 < 1.05


def test_numeric_compare_matches_scipy_ks_on_the_kept_sample() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=1_500)  # under the sample size: the profile keeps every value
    cur = rng.normal(0.2, 1.1, size=3_000)
    stat = compare("x", profile(ref, categorical=False), cur)
    want = stats.ks_2samp(ref, cur)
    assert stat.ks == pytest.approx(want.statistic, abs=1e-12)
    assert stat.ks_p == pytest.approx(want.pvalue, rel=1e-9)
    assert stat.mean == pytest.approx(cur.mean()) and stat.n == 3_000


def test_categorical_compare_is_the_chi_squared_test_of_the_two_count_rows() -> None:
    rng = np.random.default_rng(2)
    ref = rng.choice([1.0, 2.0, 3.0], p=[0.5, 0.3, 0.2], size=4_000)
    cur = rng.choice([1.0, 2.0, 3.0], p=[0.3, 0.3, 0.4], size=2_000)
    stat = compare("c", profile(ref, categorical=True), cur)
    table = np.array([[np.sum(ref == v) for v in (1, 2, 3)], [np.sum(cur == v) for v in (1, 2, 3)]])
    chi2, p, _, _ = stats.chi2_contingency(table, correction=False)
    assert stat.chi2_p == pytest.approx(p, rel=1e-6, abs=1e-300)
    n = table.sum()
    assert stat.cramers_v_raw == pytest.approx(math.sqrt(chi2 / n), rel=1e-9)
    # Bergsma's correction by hand: phi^2 - (k - 1)(r - 1)/(n - 1) over min(r~, k~) - 1, r~ = 2 - 1/(n - 1)
    corrected = math.sqrt((chi2 / n - 2 / (n - 1)) / (1 - 1 / (n - 1)))
    assert stat.cramers_v == pytest.approx(corrected, rel=1e-9)
    assert 0 <= stat.cramers_v < stat.cramers_v_raw <= 1
    assert stat.psi_noise == pytest.approx(2 * (1 / 4_000 + 1 / 2_000), rel=1e-12)


def test_two_samples_of_one_distribution_differ_by_the_noise_the_correction_removes() -> None:
    # 50 equally likely categories, a reference and a window of 800 each (a day of requests): with
    # no change at all PSI averages (k - 1)(1/n1 + 1/n2) = 0.1225 and Cramér's V sqrt(49 / 1600) = 0.175,
    # on the order of the 0.25 thresholds; less the noise they average 0
    rng = np.random.default_rng(4)
    codes = np.arange(50, dtype=np.float64)
    raw_psi, beyond, raw_v, v = [], [], [], []
    for _ in range(300):
        stat = compare("c", profile(rng.choice(codes, 800), categorical=True), rng.choice(codes, 800))
        raw_psi.append(stat.psi)
        beyond.append(stat.psi - stat.psi_noise)
        raw_v.append(stat.cramers_v_raw)
        v.append(stat.cramers_v)
    noise = psi_noise(50, 800, 800)
    assert noise == pytest.approx(0.1225)
    # the spread of one PSI is about sqrt(2 (k - 1)) / n_eff = 0.025; over 300 draws the mean's 0.0014
    assert np.mean(raw_psi) == pytest.approx(noise, rel=0.06)
    assert abs(np.mean(beyond)) < 0.008
    assert np.mean(raw_v) == pytest.approx(math.sqrt(49 / 1_600), rel=0.05)
    assert np.mean(v) < 0.06 and max(v) < 0.15  # the clipped corrected V: small, far under 0.25
    # a real change of the mix (half the mass moved to 10 categories) stays far above the noise
    weights = np.where(codes < 10, 6.0, 1.0)
    moved = rng.choice(codes, 800, p=weights / weights.sum())
    stat = compare("c", profile(rng.choice(codes, 800), categorical=True), moved)
    assert stat.psi - stat.psi_noise > 0.25 and stat.cramers_v > 0.25


def test_cramers_v_corrected_edge_cases() -> None:
    assert cramers_v_corrected(0.0, 1.0, 2, 5) == 0.0  # one observation: nothing to correct with
    assert cramers_v_corrected(1.0, 1_000.0, 2, 3) == 0.0  # under its null expectation: 0, not negative
    assert psi_noise(1, 100, 100) == 0.0  # one cell cannot differ


def test_categories_outside_the_profile_count_as_other() -> None:
    ref = np.arange(100, dtype=np.float64).repeat(10)  # 100 codes, the profile keeps 5
    shares = profile(ref, categorical=True, top=5)["shares"]
    assert len(shares) == 6 and shares[OTHER] == pytest.approx(0.95)
    stat = compare("c", profile(ref, categorical=True, top=5), ref)
    assert stat.psi == pytest.approx(0.0, abs=1e-12)


def test_a_constant_feature_has_one_bin_and_no_drift_against_itself() -> None:
    ref = np.full(1_000, 3.0)
    prof = profile(ref, categorical=False)
    assert prof["edges"] == [3.0] or len(prof["edges"]) <= 1
    assert compare("k", prof, np.full(800, 3.0)).psi == pytest.approx(0.0, abs=1e-12)
    assert compare("k", prof, np.full(800, 4.0)).psi > 1  # it moved: every value in the other bin


def test_nothing_finite_is_a_clear_error() -> None:
    with pytest.raises(DriftError, match="no finite values"):
        profile(np.array([np.nan, np.inf]), categorical=False)
    with pytest.raises(DriftError, match="in the window: no finite values"):
        compare("x", profile(np.ones(10), categorical=False), np.array([]))


def test_ratio_rse_is_the_spread_of_observed_over_predicted_across_draws() -> None:
    """Heavy-tailed predictions (most tiny, a few large) and clustered outcomes (a request's ten
    impressions share a factor): the relative spread of sum y / sum p over many windows drawn from
    the same world equals the mean ratio_rse of one window, to the Monte Carlo error (2%, 400 draws)
    and the delta method's bias (a few percent at these counts): 10% allowed."""
    rng = np.random.default_rng(3)
    ratios, rses, unclustered = [], [], []
    for _ in range(400):
        requests = np.repeat(np.arange(150), 10)
        p = np.where(rng.random(1_500) < 0.03, rng.uniform(0.2, 0.6, 1_500), rng.uniform(0.001, 0.02, 1_500))
        lift = np.repeat(rng.gamma(0.5, 2.0, 150), 10)  # the request's own appetite, mean 1
        y = (rng.random(1_500) < np.clip(3.0 * p * lift, 0, 1)).astype(np.float64)
        ratios.append(y.sum() / p.sum())
        rses.append(ratio_rse(y, p, requests))
        unclustered.append(ratio_rse(y, p, np.arange(1_500)))
    spread = float(np.std(ratios, ddof=1) / np.mean(ratios))
    assert float(np.mean(rses)) == pytest.approx(spread, rel=0.10)
    # each impression its own unit, the shared appetite is missed: the spread understated by ~18%
    assert float(np.mean(unclustered)) < 0.9 * spread
    assert ratio_rse(np.zeros(10), np.full(10, 0.1), np.arange(10)) == math.inf
