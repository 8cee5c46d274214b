"""Off-policy estimators on logs whose target value is known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.errors import RecstackError
from recstack.eval.ope import LoggedData, dm, dr, evaluate, fit_reward_model, ips, snips


def _log(n: int = 20_000, seed: int = 11) -> tuple[LoggedData, np.ndarray, np.ndarray]:
    """Uniform logging over 5 actions x 2 positions; click rate = rate[a] * exam[k]."""
    rng = np.random.default_rng(seed)
    rate = np.array([0.02, 0.05, 0.1, 0.2, 0.3])
    exam = np.array([1.0, 0.5])
    actions, positions = rng.integers(5, size=n), rng.integers(2, size=n)
    rewards = (rng.random(n) < rate[actions] * exam[positions]).astype(float)
    truth = rate[:, None] * exam[None, :]  # (A, K)
    return LoggedData(actions, rewards, np.full(n, 0.2), positions), rate, truth


def test_estimators_recover_a_known_policy_value() -> None:
    data, _rate, truth = _log()
    n = len(data)
    target = np.zeros((n, 5, 2))
    target[:, 4, :] = 1.0  # always the best action, in either slot
    value = float(truth[4, data.positions].mean())  # the target's click rate on these slots
    q_perfect = np.broadcast_to(truth, (n, 5, 2)).copy()
    estimates = evaluate(data, target, q_perfect, rounds=200)
    for name, est in estimates.items():
        assert est.ci_low <= value <= est.ci_high, (name, est, value)
    assert dm(data, target, q_perfect) == pytest.approx(value)
    # a perfect reward model: DR's correction only adds noise around DM's exact answer
    assert dr(data, target, q_perfect) == pytest.approx(value, abs=0.01)
    assert snips(data, target) == pytest.approx(value, abs=0.02)
    fitted = fit_reward_model(data, 5, 2)
    assert fitted.shape == (n, 5, 2)
    assert dr(data, target, fitted) == pytest.approx(value, abs=0.02)
    # and the position-free shape (n, A)
    flat = LoggedData(data.actions, data.rewards, data.propensities)
    t2 = np.zeros((n, 5))
    t2[:, 4] = 1.0
    assert ips(flat, t2) == pytest.approx(float(truth[4].mean()), abs=0.02)


def test_bad_logs_are_clear_errors_and_no_clicks_is_zero() -> None:
    data, _, _ = _log(200)
    with pytest.raises(RecstackError, match=r"propensities must be in \(0, 1\]"):
        LoggedData(data.actions, data.rewards, np.zeros(200))
    with pytest.raises(RecstackError, match="propensities"):
        LoggedData(data.actions, data.rewards, np.full(200, np.nan))
    with pytest.raises(RecstackError, match="at least one"):
        LoggedData(np.zeros(0, int), np.zeros(0), np.zeros(0))
    quiet = LoggedData(data.actions, np.zeros(200), data.propensities, data.positions)
    target = np.full((200, 5, 2), 0.2)
    q = fit_reward_model(quiet, 5, 2)
    assert (q == 0).all()
    assert ips(quiet, target) == snips(quiet, target) == dr(quiet, target, q) == 0.0
    with pytest.raises(RecstackError, match="sum to 1"):
        evaluate(quiet, np.full((200, 5, 2), 0.5))
    with pytest.raises(RecstackError, match="reward model"):
        dm(quiet, target)
