"""Where the next impressions go: allocators over items with Bernoulli click rates, each deciding
from the items' (impressions, clicks) counts so far.

Every allocator implements ``scores(impressions, clicks, rng) -> (N,)``: the item with the highest
score gets the next impression (``allocate`` spreads a batch of impressions by repeated choice with
counts updated in between, which is what the worker's counts do between requests).

- ``Thompson``: one draw from each item's Beta posterior. The prior is Beta(a, b) fitted to all
  items' counts by maximum marginal likelihood of the beta-binomial (empirical Bayes, ``fit_prior``),
  so an item with few impressions starts at the catalog's typical rate, not at 1/2.
- ``UCB1`` (Auer et al. 2002): mean + sqrt(2 ln t / n); untried items first.
- ``Greedy``: the posterior mean (prior as Thompson's); ``EpsilonGreedy``: greedy, but a random
  item with probability epsilon; ``Uniform``: a random item.

``lai_robbins`` is the asymptotic lower bound on any consistent allocator's regret (Lai & Robbins
1985): sum over suboptimal items of (p* - p_i) / KL(p_i, p*) times ln T.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy import optimize, special

from recstack.config import Allocator
from recstack.errors import RecstackError


@dataclass(frozen=True)
class BetaPrior:
    a: float = 1.0
    b: float = 1.0

    @property
    def mean(self) -> float:
        return self.a / (self.a + self.b)


def fit_prior(
    impressions: np.ndarray, clicks: np.ndarray, max_items: int = 20_000, seed: int = 0
) -> BetaPrior:
    """Beta(a, b) maximizing the beta-binomial likelihood of the items' counts (items with at least
    one impression; a random ``max_items`` of them when there are more). Beta(1, 1) when there is
    nothing to fit (no impressions, or no clicks at all: the fit would run to a rate of 0)."""
    n = np.asarray(impressions, dtype=np.float64)
    k = np.asarray(clicks, dtype=np.float64)
    seen = n > 0
    n, k = n[seen], np.minimum(k[seen], n[seen])
    if len(n) > max_items:
        pick = np.random.default_rng(seed).choice(len(n), max_items, replace=False)
        n, k = n[pick], k[pick]
    if len(n) < 2 or k.sum() == 0 or k.sum() == n.sum():
        return BetaPrior()

    def loss(log_ab: np.ndarray) -> float:
        a, b = np.exp(log_ab)
        return -float(np.sum(special.betaln(k + a, n - k + b) - special.betaln(a, b)))

    mean = k.sum() / n.sum()
    start = np.log([mean * 10, (1 - mean) * 10])
    result = optimize.minimize(loss, start, method="L-BFGS-B", bounds=[(-10, 12), (-10, 14)])
    a, b = np.exp(result.x)
    return BetaPrior(float(a), float(b))


class Policy(Protocol):
    def scores(self, impressions: np.ndarray, clicks: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...


class Thompson:
    def __init__(self, prior: BetaPrior = BetaPrior()) -> None:
        self.prior = prior

    def scores(self, impressions: np.ndarray, clicks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        misses = np.maximum(impressions - clicks, 0)
        out: np.ndarray = rng.beta(self.prior.a + clicks, self.prior.b + misses)
        return out


class Greedy:
    def __init__(self, prior: BetaPrior = BetaPrior()) -> None:
        self.prior = prior

    def scores(self, impressions: np.ndarray, clicks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        mean = (self.prior.a + clicks) / (self.prior.a + self.prior.b + impressions)
        # ties (unseen items share the prior mean) broken at random
        out: np.ndarray = mean + 1e-12 * rng.random(len(mean))
        return out


class EpsilonGreedy(Greedy):
    def __init__(self, epsilon: float = 0.1, prior: BetaPrior = BetaPrior()) -> None:
        super().__init__(prior)
        self.epsilon = epsilon

    def scores(self, impressions: np.ndarray, clicks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() < self.epsilon:
            out: np.ndarray = rng.random(len(impressions))
            return out
        return super().scores(impressions, clicks, rng)


class UCB1:
    def scores(self, impressions: np.ndarray, clicks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = np.asarray(impressions, dtype=np.float64)
        t = max(float(n.sum()), 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            bonus = np.sqrt(2 * math.log(t) / n)
            out: np.ndarray = np.where(n > 0, clicks / n + bonus, np.inf)
        return out + 1e-12 * rng.random(len(n))


class Uniform:
    def scores(self, impressions: np.ndarray, clicks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out: np.ndarray = rng.random(len(impressions))
        return out


def score_draws(
    policy: Policy, impressions: np.ndarray, clicks: np.ndarray, rng: np.random.Generator, draws: int
) -> np.ndarray:
    """(draws, N): ``draws`` independent calls of ``policy.scores`` (one array call for Thompson)."""
    if isinstance(policy, Thompson):
        misses = np.maximum(impressions - clicks, 0)
        size = (draws, len(impressions))
        out: np.ndarray = rng.beta(policy.prior.a + clicks, policy.prior.b + misses, size=size)
        return out
    stacked: np.ndarray = np.stack([policy.scores(impressions, clicks, rng) for _ in range(draws)])
    return stacked


def pick_probabilities(
    policy: Policy,
    impressions: np.ndarray,
    clicks: np.ndarray,
    m: int,
    rng: np.random.Generator,
    draws: int = 64,
) -> np.ndarray:
    """(N,) each item's probability of being among the top ``m`` scores of one ``policy.scores``
    call: what a slate of ``m`` exploration picks shows it with (its propensity).

    Exact for the allocators that are not random draws: greedy and UCB1 pick their top ``m`` (items
    tied at the cut share the remaining picks), uniform picks each item with m / N, epsilon-greedy
    mixes the two. Thompson is estimated from ``draws`` posterior draws, drawn only for contenders:
    an item whose mean + 4 sd (normal approximation of its Beta) is below the m-th highest mean - 4 sd
    is picked with probability below 1e-4 and counted as 0."""
    n = len(impressions)
    m = min(m, n)
    shown = np.asarray(impressions, dtype=np.float64)
    clicked = np.asarray(clicks, dtype=np.float64)
    if m <= 0:
        return np.zeros(n)
    if isinstance(policy, Uniform):
        even: np.ndarray = np.full(n, m / n)
        return even
    if isinstance(policy, Thompson):
        a, b, contenders = _contenders(policy.prior, shown, clicked, m)
        out: np.ndarray = np.zeros(n)
        if len(contenders) <= m:
            out[contenders] = 1.0
            return out
        theta = rng.beta(a[contenders], b[contenders], size=(draws, len(contenders)))  # (D, C)
        top = np.argpartition(-theta, m - 1, axis=1)[:, :m]  # (D, m)
        np.add.at(out, contenders[top.ravel()], 1.0 / draws)
        return out
    if isinstance(policy, Greedy):
        deterministic = (policy.prior.a + clicked) / (policy.prior.a + policy.prior.b + shown)
    elif isinstance(policy, UCB1):
        t = max(float(shown.sum()), 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            deterministic = np.where(shown > 0, clicked / shown + np.sqrt(2 * math.log(t) / shown), np.inf)
    else:
        raise RecstackError(f"no pick probabilities for {type(policy).__name__}")
    cut = np.sort(deterministic)[n - m]
    above, tied = deterministic > cut, deterministic == cut
    out = above.astype(np.float64)
    out[tied] = (m - above.sum()) / tied.sum()
    if isinstance(policy, EpsilonGreedy):
        mixed: np.ndarray = (1 - policy.epsilon) * out + policy.epsilon * m / n
        return mixed
    return out


def _contenders(
    prior: BetaPrior, shown: np.ndarray, clicked: np.ndarray, m: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Beta posteriors' (a, b) of every item and the positions of those that can be among the
    top ``m`` draws: within 4 sd (normal approximation) of the m-th best mean; the others are
    picked with probability below 1e-4."""
    n = len(shown)
    a = prior.a + clicked
    b = prior.b + np.maximum(shown - clicked, 0)
    mean = a / (a + b)
    sd = np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    floor = np.partition(mean - 4 * sd, n - m)[n - m] if m < n else -np.inf
    return a, b, np.flatnonzero(mean + 4 * sd >= floor)


def thompson_pick_probabilities(
    prior: BetaPrior,
    impressions: np.ndarray,
    clicks: np.ndarray,
    m: int,
    of: np.ndarray,
    rng: np.random.Generator,
    draws: int = 4,
) -> np.ndarray:
    """(len(of),) the probability that Thompson sampling with ``prior`` puts each item at positions
    ``of`` among its top ``m`` draws, Rao-Blackwellized: for each of ``draws`` joint draws of every
    contender, the exact probability that the item's own Beta draw beats the m-th highest draw of
    the others (its Beta survival function there), averaged.

    Each term is the conditional expectation of the plain estimator's indicator given the others'
    draws, so the average is unbiased with a smaller variance at every ``draws``
    (``benchmarks/explore_cost.py``, 500-item pool, 2 slots: over pick probabilities from 0.91 down
    to 0.002, 4 draws give a relative RMSE of 0.05-1.12 where counting the picks of 64 draws gives
    0.04-2.57, at a quarter of the draws). As in ``pick_probabilities``, only items within 4 sd of
    the m-th best mean contend; an item that cannot contend gets 0."""
    shown = np.asarray(impressions, dtype=np.float64)
    clicked = np.asarray(clicks, dtype=np.float64)
    of = np.asarray(of, dtype=np.int64)
    n = len(shown)
    m = min(m, n)
    if m <= 0 or not len(of):
        return np.zeros(len(of))
    a, b, contenders = _contenders(prior, shown, clicked, m)
    if len(contenders) <= m:
        return np.isin(of, contenders).astype(np.float64)
    theta = rng.beta(a[contenders], b[contenders], size=(max(draws, 1), len(contenders)))  # (D, C)
    top = np.argpartition(-theta, m, axis=1)[:, : m + 1]  # the m + 1 highest of each draw
    values = np.take_along_axis(theta, top, axis=1)
    order = np.argsort(-values, axis=1)
    top, values = np.take_along_axis(top, order, axis=1), np.take_along_axis(values, order, axis=1)
    slot = np.full(n, -1, dtype=np.int64)  # item -> its column among the contenders
    slot[contenders] = np.arange(len(contenders))
    column = slot[of]  # (K,)
    # the m-th highest of the others: the (m+1)-th of the draw when the item is in its top m
    in_top = (top[:, None, :m] == column[None, :, None]).any(axis=2)  # (D, K)
    threshold = np.where(in_top, values[:, m, None], values[:, m - 1, None])
    beats = special.betaincc(a[of][None, :], b[of][None, :], threshold)  # P(own draw > threshold)
    out: np.ndarray = np.where(column >= 0, beats.mean(axis=0), 0.0)
    return out


def make_policy(kind: Allocator, prior: BetaPrior = BetaPrior(), epsilon: float = 0.1) -> Policy:
    """The allocator ``kind`` names (``[serving] explore_allocator``)."""
    if kind is Allocator.thompson:
        return Thompson(prior)
    if kind is Allocator.greedy:
        return Greedy(prior)
    if kind is Allocator.epsilon_greedy:
        return EpsilonGreedy(epsilon, prior)
    if kind is Allocator.ucb1:
        return UCB1()
    return Uniform()


def allocate(
    policy: Policy,
    impressions: np.ndarray,
    clicks: np.ndarray,
    budget: int,
    rng: np.random.Generator,
    batch: int = 1,
    rates: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Spend ``budget`` impressions, ``batch`` at a time, with the counts updated after each batch:
    each impression of a batch goes to the top item of its own policy draw (for Thompson, one
    posterior sample each, so a batch spreads over the items the posteriors still doubt; a
    deterministic allocator gives the whole batch to its top item). Clicks of the new impressions
    are drawn from ``rates`` (the simulator's truth) when given; without them the counts stay fixed.

    Returns (impressions given per item, clicks observed per item), shape (N,) each."""
    n_items = len(impressions)
    if budget < 0 or n_items == 0:
        raise RecstackError("allocate: the budget must be >= 0 and there must be at least one item")
    shown = np.asarray(impressions, dtype=np.float64).copy()
    clicked = np.asarray(clicks, dtype=np.float64).copy()
    given = np.zeros(n_items, dtype=np.int64)
    got = np.zeros(n_items, dtype=np.int64)
    left = budget
    while left > 0:
        size = min(batch, left)
        picks = score_draws(policy, shown, clicked, rng, size).argmax(axis=1)  # (size,)
        counts = np.bincount(picks, minlength=n_items)
        given += counts
        if rates is not None:
            hits = rng.binomial(counts, rates)
            got += hits
            shown += counts
            clicked += hits
        left -= size
    return given, got


def plan(
    policy: Policy,
    impressions: np.ndarray,
    clicks: np.ndarray,
    budget: int,
    rng: np.random.Generator,
    draws: int = 10_000,
) -> np.ndarray:
    """(N,) the next ``budget`` impressions split by the counts so far, with no feedback in between:
    each item gets the share of ``draws`` policy draws in which it scores highest (for Thompson, the
    posterior probability that it is the best item), rounded to whole impressions that add up to the
    budget (largest remainders). Deterministic allocators (greedy, UCB1) give it all to their top."""
    if budget < 0 or len(impressions) == 0:
        raise RecstackError("plan: the budget must be >= 0 and there must be at least one item")
    shown = np.asarray(impressions, dtype=np.float64)
    clicked = np.asarray(clicks, dtype=np.float64)
    if (shown < 0).any() or (clicked < 0).any() or (clicked > shown).any():
        raise RecstackError("plan: counts must be >= 0 with clicks <= impressions for every item")
    wins = np.zeros(len(shown))
    for start in range(0, draws, 1_000):
        scores = score_draws(policy, shown, clicked, rng, min(1_000, draws - start))  # (S, N)
        wins += np.bincount(scores.argmax(axis=1), minlength=len(shown))
    exact = budget * wins / wins.sum()
    out: np.ndarray = np.floor(exact).astype(np.int64)
    rest = int(budget - out.sum())
    if rest > 0:
        out[np.argsort(-(exact - out), kind="stable")[:rest]] += 1
    return out


def bernoulli_kl(p: float, q: float) -> float:
    eps = 1e-15
    p, q = min(max(p, eps), 1 - eps), min(max(q, eps), 1 - eps)
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def lai_robbins(rates: np.ndarray, horizon: int) -> float:
    """Lai–Robbins' asymptotic regret lower bound at ``horizon`` pulls: sum over suboptimal items of
    (p* - p_i) / KL(p_i || p*) * ln(horizon)."""
    best = float(np.max(rates))
    constant = sum((best - p) / bernoulli_kl(float(p), best) for p in rates if p < best)
    return float(constant * math.log(max(horizon, 1)))
