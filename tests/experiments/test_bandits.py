from __future__ import annotations

import math

import numpy as np
import pytest

from recstack.config import Allocator
from recstack.errors import RecstackError
from recstack.experiments.bandits import (
    UCB1,
    BetaPrior,
    Thompson,
    Uniform,
    allocate,
    bernoulli_kl,
    fit_prior,
    lai_robbins,
    make_policy,
    pick_probabilities,
    plan,
    score_draws,
    thompson_pick_probabilities,
)


def test_empirical_bayes_prior_recovers_the_generating_beta() -> None:
    rng = np.random.default_rng(0)
    rates = rng.beta(2.0, 60.0, size=5_000)  # mean 0.032
    shown = rng.integers(50, 500, size=5_000)
    clicks = rng.binomial(shown, rates)
    prior = fit_prior(shown, clicks)
    assert prior.mean == pytest.approx(2 / 62, rel=0.05)
    # the concentration a + b: a few thousand items pin it to within ~25%
    assert prior.a + prior.b == pytest.approx(62, rel=0.25)
    assert fit_prior(np.zeros(10), np.zeros(10)) == BetaPrior()  # nothing to fit: Beta(1, 1)
    assert fit_prior(np.full(10, 5), np.zeros(10)) == BetaPrior()  # no clicks at all


def test_lai_robbins_known_answer() -> None:
    # two arms 0.5 and 0.4: (0.1 / KL(0.4 || 0.5)) ln T
    kl = 0.4 * math.log(0.4 / 0.5) + 0.6 * math.log(0.6 / 0.5)
    assert bernoulli_kl(0.4, 0.5) == pytest.approx(kl)
    assert lai_robbins(np.array([0.5, 0.4]), 1000) == pytest.approx(0.1 / kl * math.log(1000))
    assert lai_robbins(np.array([0.3, 0.3]), 1000) == 0.0


def test_thompson_spends_the_budget_where_the_clicks_are() -> None:
    rng = np.random.default_rng(1)
    rates = np.array([0.01, 0.02, 0.05, 0.10])
    zero = np.zeros(4)
    regrets = {}
    for name, policy in {"thompson": Thompson(), "ucb1": UCB1(), "uniform": Uniform()}.items():
        given, _got = allocate(policy, zero, zero, 20_000, np.random.default_rng(2), rates=rates)
        assert given.sum() == 20_000
        regrets[name] = float((rates.max() - rates) @ given)
    assert regrets["thompson"] < regrets["ucb1"] < regrets["uniform"]
    # the bound is asymptotic, but Thompson is known to be near it on such problems
    assert regrets["thompson"] < 3 * lai_robbins(rates, 20_000)
    assert rng is not None


def test_allocation_of_fixed_counts_and_bad_budgets() -> None:
    shown = np.array([1000.0, 1000.0, 10.0])
    clicks = np.array([10.0, 50.0, 1.0])
    given, got = allocate(make_policy(Allocator.greedy), shown, clicks, 100, np.random.default_rng(0))
    assert given.tolist() == [0, 0, 100] and got.sum() == 0  # greedy: the best mean, 1 / 10
    # a budget smaller than the number of items: whole impressions, adding up to the budget
    given = plan(Thompson(), np.zeros(50), np.zeros(50), 10, np.random.default_rng(0))
    assert given.sum() == 10 and (given > 0).sum() <= 10
    # Thompson's plan follows the posterior probability of being best: two clear leaders share it
    given = plan(
        Thompson(), np.array([1e4, 1e4, 1e4]), np.array([100.0, 500, 500]), 1000, np.random.default_rng(0)
    )
    assert given[0] == 0 and abs(int(given[1]) - 500) < 60 and given.sum() == 1000
    with pytest.raises(RecstackError, match="clicks <= impressions"):
        plan(Thompson(), np.array([1.0]), np.array([2.0]), 10, np.random.default_rng(0))
    with pytest.raises(RecstackError):
        allocate(Uniform(), np.zeros(0), np.zeros(0), 10, np.random.default_rng(0))
    with pytest.raises(RecstackError):
        allocate(Uniform(), np.zeros(3), np.zeros(3), -1, np.random.default_rng(0))
    draws = score_draws(Thompson(BetaPrior(2, 50)), shown, clicks, np.random.default_rng(0), 4000)
    assert draws.shape == (4000, 3)
    # Beta(2 + 50, 50 + 950) has mean 52 / 1052
    assert draws[:, 1].mean() == pytest.approx(52 / 1052, rel=0.01)


@pytest.mark.parametrize("kind", list(Allocator))
def test_pick_probabilities_match_the_frequencies_of_repeated_calls(kind: Allocator) -> None:
    """Each item's pick probability for 2 slots against the share of 4,000 real calls of the policy
    that put it in their top 2 (binomial noise: sd <= 0.008)."""
    shown = np.array([500.0, 500, 500, 40, 0, 300])
    clicks = np.array([25.0, 24, 10, 2, 0, 3])
    policy = make_policy(kind, BetaPrior(2, 40), epsilon=0.2)
    rng = np.random.default_rng(0)
    counts = np.zeros(6)
    calls = 4_000
    for _ in range(calls):
        counts[np.argsort(-policy.scores(shown, clicks, rng))[:2]] += 1
    exact = pick_probabilities(policy, shown, clicks, 2, np.random.default_rng(1), draws=20_000)
    assert exact.sum() == pytest.approx(2.0, abs=1e-6 if kind is not Allocator.thompson else 0.01)
    assert exact == pytest.approx(counts / calls, abs=0.04)


def test_rao_blackwellized_thompson_pick_probabilities_match_real_calls_and_are_unbiased() -> None:
    """Against the share of 4,000 real Thompson calls that put each item in their top 2 (binomial
    sd <= 0.008): with many draws the estimate is within 0.04; with 4 draws its mean over 400 seeds
    is within 0.04 too (unbiased), and an item that cannot contend gets 0."""
    shown = np.array([500.0, 500, 500, 40, 0, 300, 5_000])
    clicks = np.array([25.0, 24, 10, 2, 0, 3, 5])  # the last: a rate of 0.001 over 5,000, no contender
    prior = BetaPrior(2, 40)
    policy = Thompson(prior)
    rng = np.random.default_rng(0)
    counts = np.zeros(7)
    calls = 4_000
    for _ in range(calls):
        counts[np.argsort(-policy.scores(shown, clicks, rng))[:2]] += 1
    of = np.arange(7)
    many = thompson_pick_probabilities(prior, shown, clicks, 2, of, np.random.default_rng(1), draws=5_000)
    assert many.sum() == pytest.approx(2.0, abs=0.01)
    assert many == pytest.approx(counts / calls, abs=0.04)
    few = [
        thompson_pick_probabilities(prior, shown, clicks, 2, of, np.random.default_rng(s), 4)
        for s in range(400)
    ]
    assert np.mean(few, axis=0) == pytest.approx(counts / calls, abs=0.04)
    assert many[6] == 0.0 and counts[6] == 0
    picked = thompson_pick_probabilities(
        prior, shown, clicks, 2, np.array([3, 0]), np.random.default_rng(1), 5_000
    )
    assert picked == pytest.approx(many[[3, 0]], abs=0.02)  # a subset, in any order
