"""Distribution drift between a reference and a window: the population stability index (PSI) and the
two-sample Kolmogorov-Smirnov test for numeric values, PSI and the chi-squared test of the 2 x k
table of counts (reference, window) for categorical ones, with Cramér's V as its effect size.

A reference is summarized once (:func:`profile`) into what the tests need and nothing of the raw
rows: for numeric values the quantile bin edges with the share of the reference in each bin and a
sample of at most ``sample`` values (the KS test's reference); for categorical values the share of
each of the most frequent codes and of the rest (``OTHER``). Profiles are plain JSON (they are saved
in each bundle, ``reference.json``).

PSI = sum over bins of (current share - reference share) x ln(current share / reference share),
empty bins counted as ``EPS`` (as Evidently does); 0.1 is read as a moderate shift and 0.25 as a
large one. KS gives the largest gap between the two empirical CDFs (``D``) and its p-value. Large
windows make every p-value small, so breaches are decided on the effect size (PSI, D, Cramér's V)
with the p-value as a second condition, never on the p-value alone.

Small windows make the effect sizes large: two samples of one distribution differ by chance, and
over many cells that adds up. Two samples of sizes n1 and n2 over k cells have an expected PSI of
(k - 1)(1/n1 + 1/n2) with no change at all (``psi_noise``; 0.12 for 50 categories and two windows
of 800 requests), and Cramér's V of sqrt((k - 1) / N). Both are reported and the decision reads
them beyond that noise: PSI minus ``psi_noise``, and Cramér's V bias-corrected (Bergsma 2013).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from recstack.errors import RecstackError

EPS = 1e-4  # the share an empty bin counts as
OTHER = "__other__"  # the categorical codes outside a profile's most frequent ones


class DriftError(RecstackError):
    """A drift test cannot be run on these values (no reference, an empty window)."""


def _finite(values: np.ndarray, what: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if not len(values):
        raise DriftError(f"{what}: no finite values")
    return values


def one_per_request(requests: np.ndarray, eligible: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Indices of one row per request, drawn at random (among the ``eligible`` rows): the items of
    one list share a user, a context and a ranking, so the request is the unit whose values are
    independent; a test that counted each impression would find noise significant."""
    rows = np.arange(len(requests)) if eligible is None else np.flatnonzero(eligible)
    rows = np.random.default_rng(seed).permutation(rows)
    _, first = np.unique(np.asarray(requests, dtype=object)[rows].astype(str), return_index=True)
    return np.sort(rows[first])


def quantile_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """The inner edges of up to ``bins`` equal-mass bins of ``reference`` (fewer where values
    repeat: a constant feature has none, one bin)."""
    inner = np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1])
    return np.unique(inner)


def bin_shares(values: np.ndarray, inner_edges: np.ndarray) -> np.ndarray:
    """(len(inner_edges) + 1,) the share of ``values`` in each bin: (-inf, e0], (e0, e1], ...,
    (e_last, inf)."""
    index = np.searchsorted(inner_edges, values, side="left")
    counts = np.bincount(index, minlength=len(inner_edges) + 1).astype(np.float64)
    return counts / max(len(values), 1)


def psi_of_shares(reference: np.ndarray, current: np.ndarray) -> float:
    ref = np.where(reference > 0, reference, EPS)
    cur = np.where(current > 0, current, EPS)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def psi_noise(cells: int, n_reference: float, n_current: float) -> float:
    """The expected PSI of two samples of one distribution over ``cells`` cells, of sizes
    ``n_reference`` and ``n_current``: PSI is the symmetric Kullback-Leibler divergence, which for
    shares this close is sum (p - q)^2 / q, and each term's expectation is (1 - q)(1/n1 + 1/n2)."""
    if cells < 2 or n_reference <= 0 or n_current <= 0:
        return 0.0
    return (cells - 1) * (1.0 / n_reference + 1.0 / n_current)


def cramers_v_corrected(chi2: float, n: float, rows: int, columns: int) -> float:
    """Cramér's V of an r x k table with its small-sample bias removed (Bergsma 2013, J. Korean
    Stat. Soc. 42): phi^2 less its expectation under independence, (r - 1)(k - 1) / (n - 1), over
    the corrected min(r, k) - 1; 0 where nothing is left."""
    if n <= 1:
        return 0.0
    phi2 = max(0.0, chi2 / n - (rows - 1) * (columns - 1) / (n - 1))
    r = rows - (rows - 1) ** 2 / (n - 1)
    k = columns - (columns - 1) ** 2 / (n - 1)
    scale = min(r, k) - 1
    return math.sqrt(phi2 / scale) if scale > 0 else 0.0


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """PSI of two numeric samples over ``bins`` quantile bins of the reference."""
    ref, cur = _finite(reference, "reference"), _finite(current, "current")
    edges = quantile_edges(ref, bins)
    return psi_of_shares(bin_shares(ref, edges), bin_shares(cur, edges))


@dataclass(frozen=True)
class DriftStat:
    """One feature (or prediction head) in one window against its reference: ``psi`` always; ``ks``
    (the statistic D) and ``ks_p`` for numeric values; ``chi2_p`` and ``cramers_v`` for categorical
    ones; ``n`` values in the window."""

    name: str
    kind: str  # numeric | categorical
    n: int
    psi: float
    ks: float | None = None
    ks_p: float | None = None
    chi2_p: float | None = None
    cramers_v: float | None = None  # bias-corrected (Bergsma); cramers_v_raw as computed
    cramers_v_raw: float | None = None
    psi_noise: float = 0.0  # the PSI two samples of this size reach with no change: (k - 1)(1/n1 + 1/n2)
    reference_mean: float | None = None
    mean: float | None = None


def profile(
    values: np.ndarray, categorical: bool, bins: int = 10, sample: int = 2_000, top: int = 50, seed: int = 0
) -> dict[str, Any]:
    """The reference summary of ``values`` (see the module docstring); raises DriftError when none
    is finite."""
    ref = _finite(values, "reference")
    if categorical:
        codes, counts = np.unique(ref, return_counts=True)
        order = np.argsort(-counts, kind="stable")[:top]
        shares = {_code(codes[i]): float(counts[i] / len(ref)) for i in order}
        rest = 1.0 - sum(shares.values())
        if rest > 1e-12:
            shares[OTHER] = rest
        return {"kind": "categorical", "n": len(ref), "shares": shares}
    edges = quantile_edges(ref, bins)
    rng = np.random.default_rng(seed)
    kept = ref if len(ref) <= sample else rng.choice(ref, size=sample, replace=False)
    return {
        "kind": "numeric",
        "n": len(ref),
        "edges": edges.tolist(),
        "shares": bin_shares(ref, edges).tolist(),
        "sample": np.sort(kept).tolist(),
        "mean": float(ref.mean()),
        "std": float(ref.std()),
    }


def _code(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def compare(name: str, reference: dict[str, Any], values: np.ndarray) -> DriftStat:
    """The drift of ``values`` (one window) from a :func:`profile`; raises DriftError when the
    window has no finite value."""
    cur = _finite(values, f"{name} in the window")
    if reference["kind"] == "categorical":
        shares: dict[str, float] = reference["shares"]
        known = [k for k in shares if k != OTHER]
        codes = np.array([_code(v) for v in cur], dtype=object)
        counts = np.array([np.sum(codes == k) for k in known] + [0], dtype=np.float64)
        counts[-1] = len(cur) - counts[:-1].sum()
        expected = np.array([shares[k] for k in known] + [shares.get(OTHER, 0.0)])
        current = counts / len(cur)
        keep = (expected > 0) | (counts > 0)
        value = psi_of_shares(expected[keep], current[keep])
        # the two-sample test: the reference's counts (its shares x its size) against the window's
        table = np.vstack([expected[keep] * float(reference["n"]), counts[keep]])
        cells, total = int(keep.sum()), float(table.sum())
        if cells > 1:
            chi2, p, _, _ = stats.chi2_contingency(table, correction=False)
            raw = math.sqrt(float(chi2) / total)  # Cramér's V of a 2 x k table
            v = cramers_v_corrected(float(chi2), total, 2, cells)
        else:  # one category in both: nothing can differ
            p, raw, v = 1.0, 0.0, 0.0
        return DriftStat(
            name,
            "categorical",
            len(cur),
            value,
            chi2_p=float(p),
            cramers_v=v,
            cramers_v_raw=raw,
            psi_noise=psi_noise(cells, float(reference["n"]), len(cur)),
        )
    edges = np.asarray(reference["edges"], dtype=np.float64)
    reference_shares = np.asarray(reference["shares"], dtype=np.float64)
    current_shares = bin_shares(cur, edges)
    value = psi_of_shares(reference_shares, current_shares)
    cells = int(((reference_shares > 0) | (current_shares > 0)).sum())
    sample = np.asarray(reference["sample"], dtype=np.float64)
    ks = stats.ks_2samp(sample, cur)
    return DriftStat(
        name,
        "numeric",
        len(cur),
        value,
        ks=float(ks.statistic),
        ks_p=float(ks.pvalue),
        reference_mean=float(reference["mean"]),
        mean=float(cur.mean()),
        psi_noise=psi_noise(cells, float(reference["n"]), len(cur)),
    )


def residual_sd(y: np.ndarray, expected: np.ndarray, groups: np.ndarray) -> tuple[float, int]:
    """(the standard error of sum(y - expected), the number of groups). One list's impressions are
    not independent, so the request (``groups``) is the unit: the variance is the spread of the
    requests' residual sums, and never less than the binomial variance under the expectation (with a
    few positives the sample's spread alone underestimates it)."""
    _, index = np.unique(groups, return_inverse=True)
    per_group = np.bincount(index, weights=y - expected)
    clustered = len(per_group) * float(per_group.var(ddof=1)) if len(per_group) > 1 else 0.0
    q = np.clip(expected, 0.0, 1.0)
    return math.sqrt(max(clustered, float((q * (1 - q)).sum()), 1e-12)), len(per_group)


def ratio_rse(y: np.ndarray, p: np.ndarray, groups: np.ndarray) -> float:
    """The relative standard error of observed / predicted positives (sum y / sum p), by the delta
    method: the residual y - ratio * p per request (``residual_sd``); inf without a positive."""
    observed = float(y.sum())
    if observed <= 0 or float(p.sum()) <= 0:
        return math.inf
    return residual_sd(y, p * (observed / float(p.sum())), groups)[0] / observed
