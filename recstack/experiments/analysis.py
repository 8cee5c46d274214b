"""The statistics of an A/B test, on per-user metric values (one number per user and arm).

- ``welch``: the difference of means with Welch's t-test (unequal variances) and its confidence
  interval (Welch–Satterthwaite degrees of freedom); relative difference by the delta method.
- ``cuped``: the metric adjusted by a pre-period covariate, y - theta (x - mean x) with theta =
  cov(x, y) / var(x) pooled over the arms (Deng et al. 2013); its variance shrinks by the squared
  correlation of x and y.
- ``srm``: chi-squared goodness of fit of the arms' user counts against their configured shares.
- ``mde``: the smallest true difference detected with the given power at level alpha.
- ``decide``: ship / no ship from the primary metric, the guardrails and the SRM check.

A metric with zero variance in both arms has no t statistic: the comparison reports p = 1 when the
means are equal and p = 0 otherwise, with a zero-width interval (documented, not an error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from recstack.errors import RecstackError


@dataclass(frozen=True)
class Comparison:
    """Treatment against control on one metric."""

    metric: str
    n_control: int
    n_treatment: int
    mean_control: float
    mean_treatment: float
    diff: float  # treatment - control
    ci_low: float
    ci_high: float
    p_value: float
    rel_diff: float  # diff / mean_control (nan when the control's mean is 0)
    rel_ci_low: float
    rel_ci_high: float
    mde: float  # absolute minimum detectable effect at the configured power

    @property
    def significant(self) -> bool:
        return not (self.ci_low <= 0 <= self.ci_high)


def _check(values: np.ndarray, name: str) -> np.ndarray:
    out = np.asarray(values, dtype=np.float64)
    if out.ndim != 1 or len(out) < 2:
        raise RecstackError(f"{name}: an arm needs at least two users' values, got {out.size}")
    if not np.isfinite(out).all():
        raise RecstackError(f"{name}: values must be finite")
    return out


def welch(
    control: np.ndarray, treatment: np.ndarray, alpha: float = 0.05, power: float = 0.8, metric: str = ""
) -> Comparison:
    """Welch's t-test of mean(treatment) - mean(control) with a (1 - alpha) interval."""
    a, b = _check(control, f"{metric} control"), _check(treatment, f"{metric} treatment")
    n_a, n_b = len(a), len(b)
    m_a, m_b = float(a.mean()), float(b.mean())
    v_a, v_b = float(a.var(ddof=1)) / n_a, float(b.var(ddof=1)) / n_b
    se = math.sqrt(v_a + v_b)
    diff = m_b - m_a
    if se == 0:
        p = 1.0 if diff == 0 else 0.0
        low = high = diff
        df = float(n_a + n_b - 2)
    else:
        df = (v_a + v_b) ** 2 / (v_a**2 / (n_a - 1) + v_b**2 / (n_b - 1))
        t = diff / se
        p = float(2 * stats.t.sf(abs(t), df))
        half = float(stats.t.ppf(1 - alpha / 2, df)) * se
        low, high = diff - half, diff + half
    if m_a != 0:
        # delta method for (m_b / m_a - 1): var ~ v_b / m_a^2 + m_b^2 v_a / m_a^4
        rel = diff / m_a
        rel_se = math.sqrt(v_b / m_a**2 + m_b**2 * v_a / m_a**4)
        z = float(stats.norm.ppf(1 - alpha / 2))
        rel_low, rel_high = rel - z * rel_se, rel + z * rel_se
    else:
        rel = rel_low = rel_high = math.nan
    detectable = mde(math.sqrt(v_a * n_a), math.sqrt(v_b * n_b), n_a, n_b, alpha, power)
    return Comparison(metric, n_a, n_b, m_a, m_b, diff, low, high, p, rel, rel_low, rel_high, detectable)


def mde(std_a: float, std_b: float, n_a: int, n_b: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The absolute difference a two-sided test at ``alpha`` detects with probability ``power``."""
    z = float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))
    return z * math.sqrt(std_a**2 / n_a + std_b**2 / n_b)


def users_needed(std: float, effect: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Users per arm for a two-arm test of equal sizes to detect ``effect`` (absolute)."""
    if effect == 0:
        return math.inf
    z = float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))
    return 2 * (z * std / effect) ** 2


def cuped(
    y_control: np.ndarray, x_control: np.ndarray, y_treatment: np.ndarray, x_treatment: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """The arms' metrics adjusted by their pre-period covariates; returns (control, treatment, theta).

    theta is estimated on both arms pooled, so the adjustment leaves the difference of means
    unbiased (the covariate is measured before assignment, independent of the arm)."""
    y = np.concatenate([y_control, y_treatment]).astype(np.float64)
    x = np.concatenate([x_control, x_treatment]).astype(np.float64)
    if len(x) != len(y):
        raise RecstackError("cuped: each user needs one metric value and one covariate value")
    var = float(x.var())
    theta = float(np.cov(x, y, bias=True)[0, 1] / var) if var > 0 else 0.0
    mean = float(x.mean())
    return (
        y_control - theta * (np.asarray(x_control) - mean),
        y_treatment - theta * (np.asarray(x_treatment) - mean),
        theta,
    )


@dataclass(frozen=True)
class SampleRatio:
    counts: dict[str, int]
    expected: dict[str, float]  # shares
    p_value: float
    mismatch: bool


def srm(counts: dict[str, int], shares: dict[str, float], alpha: float = 0.001) -> SampleRatio:
    """Chi-squared test of the arms' user counts against their configured shares."""
    names = list(shares)
    observed = np.array([counts.get(n, 0) for n in names], dtype=np.float64)
    total = observed.sum()
    weights = np.array([shares[n] for n in names], dtype=np.float64)
    if total == 0:
        return SampleRatio(dict(counts), dict(shares), 1.0, False)
    expected = total * weights / weights.sum()
    p = float(stats.chisquare(observed, expected).pvalue) if len(names) > 1 else 1.0
    return SampleRatio({n: int(c) for n, c in zip(names, observed, strict=True)}, dict(shares), p, p < alpha)


@dataclass(frozen=True)
class GuardrailCheck:
    metric: str
    max_drop: float
    worst: float  # the interval's relative end in the harmful direction
    passed: bool


def guardrail(comparison: Comparison, max_drop: float, higher_is_better: bool = True) -> GuardrailCheck:
    """Non-inferiority: passes when the interval's harmful end is within ``max_drop`` of the
    control's mean (relative). An underpowered test cannot prove that and fails."""
    if math.isnan(comparison.rel_diff):
        worst = comparison.ci_low if higher_is_better else -comparison.ci_high
        return GuardrailCheck(comparison.metric, max_drop, worst, worst >= 0)
    worst = comparison.rel_ci_low if higher_is_better else -comparison.rel_ci_high
    return GuardrailCheck(comparison.metric, max_drop, worst, worst >= -max_drop)


@dataclass(frozen=True)
class Decision:
    ship: bool
    reasons: list[str]


def decide(primary: Comparison, guardrails: list[GuardrailCheck], ratio: SampleRatio) -> Decision:
    """Ship when the primary metric improved significantly, every guardrail passed and the sample
    ratio matches its configuration."""
    reasons = []
    if ratio.mismatch:
        reasons.append(
            f"sample-ratio mismatch (p = {ratio.p_value:.2g}): the split is broken, results untrusted"
        )
    if not primary.significant:
        reasons.append(f"{primary.metric}: no significant difference (p = {primary.p_value:.3g})")
    elif primary.diff < 0:
        reasons.append(f"{primary.metric}: significantly worse")
    reasons += [
        f"guardrail {g.metric}: harm up to {-g.worst:.1%} not excluded (max {g.max_drop:.1%})"
        for g in guardrails
        if not g.passed
    ]
    return Decision(not reasons, reasons or [f"{primary.metric}: significant lift, guardrails held"])
