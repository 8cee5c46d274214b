"""Off-policy evaluation: a new policy's expected reward (click rate) estimated from logs that another
policy collected, with the logging policy's propensities.

The logs are rounds i with an action a_i (an item index), optionally a position k_i, a reward r_i
and the logging probability p_i = pi_0(a_i, k_i | x_i). The target policy is given as its action
distribution ``target`` of shape (n, A) or, position-aware, (n, A, K): pi_e(a, k | x_i). A reward
model ``q`` of the same shape estimates E[r | x_i, a, k] (``fit_reward_model``: a cross-fitted
logistic regression).

    w_i  = pi_e(a_i, k_i | x_i) / p_i
    IPS  = mean(w r)                                  (unbiased; variance grows with w)
    SNIPS= sum(w r) / sum(w)                          (self-normalized; small bias, less variance)
    DM   = mean(sum_a pi_e(a, k_i | x_i) q(x_i, a, k_i))   (no weights; biased by q's error)
    DR   = DM + mean(w (r - q(x_i, a_i, k_i)))        (unbiased if either p or q is right)

Position-aware: each logged row is one slot k_i, and the target's probability is taken at that slot,
so the estimate is the target's reward per impression (the click rate), as the logs' mean reward is
the logging policy's. ``evaluate`` adds percentile-bootstrap intervals (rows resampled).

Bad input: propensities must be in (0, 1] (missing or zero ones are an error, naming the first bad
row); logs with no clicks estimate 0 with IPS, SNIPS and DR and the reward model predicts 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from sklearn.linear_model import LogisticRegression

from recstack.errors import RecstackError


@dataclass(frozen=True)
class LoggedData:
    """Rounds of a log: (n,) actions, rewards and propensities, optional (n,) positions (0-based) and
    (n, d) context features for the reward model."""

    actions: np.ndarray
    rewards: np.ndarray
    propensities: np.ndarray
    positions: np.ndarray | None = None
    context: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.actions)
        if n == 0:
            raise RecstackError("off-policy evaluation needs at least one logged round")
        for name in ("rewards", "propensities", "positions", "context"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise RecstackError(f"{name} has {len(value)} rows, actions {n}")
        p = np.asarray(self.propensities, dtype=np.float64)
        bad = np.flatnonzero(~(np.isfinite(p) & (p > 0) & (p <= 1)))
        if len(bad):
            raise RecstackError(
                f"propensities must be in (0, 1]: {len(bad)} rows are not (first: row {bad[0]}, "
                f"{p[bad[0]]!r}); a log without its logging probabilities cannot be evaluated off-policy"
            )

    def __len__(self) -> int:
        return len(self.actions)


def _at(dist: np.ndarray, data: LoggedData, rows: np.ndarray | None = None) -> np.ndarray:
    """(n,) the distribution's entry at each row's logged action (and position)."""
    idx = np.arange(len(data)) if rows is None else rows
    if dist.ndim == 3:
        if data.positions is None:
            raise RecstackError("a position-aware (n, A, K) distribution needs the logged positions")
        out: np.ndarray = dist[idx, data.actions, data.positions]
        return out
    flat: np.ndarray = dist[idx, data.actions]
    return flat


def _expected(target: np.ndarray, q: np.ndarray, data: LoggedData) -> np.ndarray:
    """(n,) sum over actions of pi_e(a, k_i) q(a, k_i): the model's value of the target per row."""
    if target.ndim == 3:
        n = np.arange(len(data))
        assert data.positions is not None
        out: np.ndarray = (target[n, :, data.positions] * q[n, :, data.positions]).sum(axis=1)
        return out
    out = (target * q).sum(axis=1)
    return out


def _weights(data: LoggedData, target: np.ndarray) -> np.ndarray:
    out: np.ndarray = _at(target, data) / data.propensities
    return out


@dataclass(frozen=True)
class _Terms:
    """The per-row quantities every estimator is a mean (or ratio) of: weights w, rewards r, the
    reward model's value of the target e and its prediction at the logged action qa, each (n,)."""

    w: np.ndarray
    r: np.ndarray
    e: np.ndarray | None
    qa: np.ndarray | None


def _terms(data: LoggedData, target: np.ndarray, q: np.ndarray | None) -> _Terms:
    e = _expected(target, q, data) if q is not None else None
    qa = _at(q, data) if q is not None else None
    return _Terms(_weights(data, target), np.asarray(data.rewards, dtype=np.float64), e, qa)


def _ips(t: _Terms, rows: np.ndarray | slice) -> float:
    return float(np.mean(t.w[rows] * t.r[rows]))


def _snips(t: _Terms, rows: np.ndarray | slice) -> float:
    total = float(t.w[rows].sum())
    return float((t.w[rows] * t.r[rows]).sum() / total) if total > 0 else 0.0


def _dm(t: _Terms, rows: np.ndarray | slice) -> float:
    if t.e is None:
        raise RecstackError("the direct method needs a reward model")
    return float(np.mean(t.e[rows]))


def _dr(t: _Terms, rows: np.ndarray | slice) -> float:
    if t.e is None or t.qa is None:
        raise RecstackError("doubly robust estimation needs a reward model")
    return float(np.mean(t.e[rows] + t.w[rows] * (t.r[rows] - t.qa[rows])))


ESTIMATORS: dict[str, Callable[[_Terms, np.ndarray | slice], float]] = {
    "ips": _ips,
    "snips": _snips,
    "dm": _dm,
    "dr": _dr,
}


def ips(data: LoggedData, target: np.ndarray, q: np.ndarray | None = None) -> float:
    return _ips(_terms(data, target, q), slice(None))


def snips(data: LoggedData, target: np.ndarray, q: np.ndarray | None = None) -> float:
    return _snips(_terms(data, target, q), slice(None))


def dm(data: LoggedData, target: np.ndarray, q: np.ndarray | None = None) -> float:
    return _dm(_terms(data, target, q), slice(None))


def dr(data: LoggedData, target: np.ndarray, q: np.ndarray | None = None) -> float:
    return _dr(_terms(data, target, q), slice(None))


@dataclass(frozen=True)
class Estimate:
    estimator: str
    value: float
    ci_low: float
    ci_high: float


def evaluate(
    data: LoggedData,
    target: np.ndarray,
    q: np.ndarray | None = None,
    estimators: list[str] | None = None,
    rounds: int = 500,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Estimate]:
    """Each estimator's value with a percentile-bootstrap (1 - alpha) interval (rows resampled; the
    per-row terms are computed once). DM and DR are left out when there is no reward model."""
    names = estimators or [n for n in ESTIMATORS if q is not None or n in ("ips", "snips")]
    if unknown := sorted(set(names) - set(ESTIMATORS)):
        raise RecstackError(f"unknown estimators {unknown}; valid: {sorted(ESTIMATORS)}")
    if q is None and (needs := sorted({"dm", "dr"} & set(names))):
        raise RecstackError(f"{needs} need a reward model")
    _check_target(data, target)
    return _bootstrap(_terms(data, target, q), names, rounds, alpha, seed)


def evaluate_rows(
    weights: np.ndarray,
    rewards: np.ndarray,
    expected: np.ndarray | None = None,
    predicted: np.ndarray | None = None,
    rounds: int = 500,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Estimate]:
    """``evaluate`` from per-row terms, for targets too large to write as a distribution over every
    action (a catalog): (n,) importance weights pi_e(a_i, k_i) / p_i and rewards, and optionally
    the reward model's value of the target's choice at each row (``expected``) and its prediction at
    the logged action (``predicted``), which add DM and DR."""
    n = len(weights)
    if n == 0 or len(rewards) != n:
        raise RecstackError(f"evaluate_rows: {n} weights and {len(rewards)} rewards (at least one row)")
    terms = _Terms(np.asarray(weights, np.float64), np.asarray(rewards, np.float64), expected, predicted)
    names = ["ips", "snips"] + (["dm", "dr"] if expected is not None and predicted is not None else [])
    return _bootstrap(terms, names, rounds, alpha, seed)


def _bootstrap(terms: _Terms, names: list[str], rounds: int, alpha: float, seed: int) -> dict[str, Estimate]:
    rng = np.random.default_rng(seed)
    samples = [rng.integers(len(terms.w), size=len(terms.w)) for _ in range(rounds)]
    out = {}
    for name in names:
        fn = ESTIMATORS[name]
        point = fn(terms, slice(None))
        boot = np.array([fn(terms, s) for s in samples])
        low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2]) if rounds else (point, point)
        out[name] = Estimate(name, point, float(low), float(high))
    return out


def _check_target(data: LoggedData, target: np.ndarray) -> None:
    if target.shape[0] != len(data) or target.ndim not in (2, 3):
        raise RecstackError(f"the target distribution must be (n, A) or (n, A, K) with n = {len(data)}")
    sums = target.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-6):
        raise RecstackError("the target policy's probabilities must sum to 1 over actions (per position)")


def fit_reward_model(
    data: LoggedData, n_actions: int, n_positions: int = 1, folds: int = 3, c: float = 0.1, seed: int = 0
) -> np.ndarray:
    """q(x_i, a, k) for every row, action and position: a logistic regression on one-hot action,
    one-hot position, their cross and the context features, cross-fitted (each row predicted by the
    model of the folds it is not in, so DR's correction is not fitted to its own noise).

    Returns (n, A, K), or (n, A) when ``n_positions`` is 1 and the log has no positions."""
    n = len(data)
    k_of = data.positions if data.positions is not None else np.zeros(n, dtype=np.int64)
    rewards = (np.asarray(data.rewards) > 0).astype(np.int64)
    q = np.zeros((n, n_actions, n_positions))
    if rewards.min() == rewards.max():
        q[:] = float(rewards[0])
        return q if data.positions is not None or n_positions > 1 else q[:, :, 0]
    # folds from a permutation (balanced), off a seed sequence apart from the callers' own streams
    fold = np.random.default_rng([seed, 20_190_101]).permutation(n) % folds
    for f in range(folds):
        train, test = fold != f, np.flatnonzero(fold == f)
        model = LogisticRegression(C=c, max_iter=1000)
        x_train = _design(data.actions[train], k_of[train], _ctx(data, train), n_actions, n_positions)
        if rewards[train].min() == rewards[train].max():
            q[test] = float(rewards[train][0])
            continue
        model.fit(x_train, rewards[train])
        for a in range(n_actions):
            for k in range(n_positions):
                rows = len(test)
                x = _design(np.full(rows, a), np.full(rows, k), _ctx(data, test), n_actions, n_positions)
                q[test, a, k] = model.predict_proba(x)[:, 1]
    return q if data.positions is not None or n_positions > 1 else q[:, :, 0]


def _ctx(data: LoggedData, rows: np.ndarray) -> np.ndarray | None:
    return None if data.context is None else np.asarray(data.context, dtype=np.float64)[rows]


def _design(
    actions: np.ndarray, positions: np.ndarray, context: np.ndarray | None, n_actions: int, n_positions: int
) -> sparse.csr_matrix:
    rows = len(actions)
    r = np.arange(rows)
    cols = [actions, n_actions + positions, n_actions + n_positions + actions * n_positions + positions]
    width = n_actions + n_positions + n_actions * n_positions
    one_hot = sparse.csr_matrix(
        (np.ones(3 * rows), (np.concatenate([r, r, r]), np.concatenate(cols))), shape=(rows, width)
    )
    if context is None:
        return one_hot
    return sparse.hstack([one_hot, sparse.csr_matrix(context)], format="csr")
