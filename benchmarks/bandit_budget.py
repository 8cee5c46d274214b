"""The impression-budget problem on the simulator, where every item's true click rate is known.

Items are the simulator's catalog (World.generate, seed 0, click bias -4.5 for ad-like rates);
an item's true rate is its click probability at the top slot averaged over the users. Day 0: each
item got Poisson(``day0``) impressions under a uniform policy, and their clicks. Day 1: a budget of
``budget`` impressions is spent ``batch`` at a time (each impression of a batch to the top item of
its own draw of the allocator), each allocator seeing the counts so
far (the worker's counts between requests). Regret = sum over impressions of (best rate - rate of
the item shown). Allocators (recstack.experiments.bandits): Thompson (Beta posteriors, the prior
fitted to the day-0 counts by empirical Bayes), uniform, greedy on the posterior mean, UCB1 and
epsilon-greedy (0.1). Averaged over ``--seeds`` repetitions.

Lai–Robbins' bound, sum of (p* - p_i) / KL(p_i || p*) ln T, is the asymptotic regret of any
consistent allocator starting from nothing. Thompson is also run from nothing (no day-0 counts, a
flat Beta(1, 1) prior) and its ratio to the bound printed: the day-0 counts are information the
bound does not assume, so that ratio is the comparison the bound is made for.

    .venv/bin/python benchmarks/bandit_budget.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _results import record

from recstack.data.simulator import ResponseModel, World, sigmoid
from recstack.experiments.bandits import (
    UCB1,
    BetaPrior,
    EpsilonGreedy,
    Greedy,
    Policy,
    Thompson,
    Uniform,
    allocate,
    fit_prior,
    lai_robbins,
)

FIGURES = Path(__file__).resolve().parent / "figures"


def true_rates(n_items: int, seed: int) -> np.ndarray:
    # ad-like click rates (about 1-5%): the simulator's response with a lower click bias
    world = World.generate(n_users=2000, n_items=n_items, seed=seed, response=ResponseModel(click_bias=-4.5))
    users = np.arange(world.n_users)
    rates = np.zeros(n_items)
    r = world.response
    for i in range(n_items):
        aff = world.affinity(users, np.full((len(users), 1), i))[:, 0]
        top = float(r.examination(np.zeros(1))[0])  # examination of the top slot
        rates[i] = float(sigmoid(r.click_scale * aff + r.click_bias).mean()) * top
    return rates


def run(policy: Policy, rates: np.ndarray, shown: np.ndarray, clicked: np.ndarray, budget: int, batch: int,
        seed: int, points: int = 50) -> np.ndarray:  # fmt: skip
    """(points,) cumulative regret at evenly spaced fractions of the budget."""
    rng = np.random.default_rng(seed)
    shown, clicked = shown.copy(), clicked.copy()
    gaps = rates.max() - rates
    out, total = [], 0.0
    chunk = budget // points
    for _ in range(points):
        given, got = allocate(policy, shown, clicked, chunk, rng, batch=batch, rates=rates)
        shown += given
        clicked += got
        total += float(gaps @ given)
        out.append(total)
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100 items, 50k impressions, 2 seeds")
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--budget", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--day0", type=float, default=20.0, help="mean day-0 impressions per item")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    if args.quick:
        args.items, args.budget, args.seeds = 100, 50_000, 2
    rates = true_rates(args.items, 0)
    print(
        f"{args.items} items, true click rates {rates.min():.4f}..{rates.max():.4f} (mean {rates.mean():.4f})"
        f" budget {args.budget:,} in batches of {args.batch}; day 0: Poisson({args.day0:g}) each"
    )
    curves: dict[str, list[np.ndarray]] = {}
    for seed in range(args.seeds):
        rng = np.random.default_rng(100 + seed)
        shown = rng.poisson(args.day0, size=args.items).astype(np.float64)
        clicked = rng.binomial(shown.astype(np.int64), rates).astype(np.float64)
        prior = fit_prior(shown, clicked)
        policies: dict[str, Policy] = {
            "thompson": Thompson(prior),
            "uniform": Uniform(),
            "greedy": Greedy(prior),
            "ucb1": UCB1(),
            "epsilon_greedy": EpsilonGreedy(0.1, prior),
        }
        for name, policy in policies.items():
            curve = run(policy, rates, shown, clicked, args.budget, args.batch, seed)
            curves.setdefault(name, []).append(curve)
        zero = np.zeros(args.items)
        curves.setdefault("thompson_from_scratch", []).append(
            run(Thompson(BetaPrior()), rates, zero, zero, args.budget, args.batch, seed)
        )
    mean = {k: np.mean(v, axis=0) for k, v in curves.items()}
    bound = lai_robbins(rates, args.budget)
    for name, curve in mean.items():
        print(f"  {name:22s} regret {curve[-1]:10.1f}  ({curve[-1] / bound:.3f} x Lai-Robbins)")
    print(f"  Lai-Robbins bound at T = {args.budget:,}: {bound:.1f}")
    FIGURES.mkdir(exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.linspace(args.budget / 50, args.budget, 50)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in mean.items():
        ax.plot(t, curve, label=name)
    ax.plot(t, [lai_robbins(rates, int(x)) for x in t], "k--", label="Lai-Robbins bound")
    ax.set_xlabel("impressions spent on day 1")
    ax.set_ylabel("cumulative regret (clicks)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(FIGURES / "bandit_budget.png", dpi=110)
    ratio = mean["thompson"][-1] / bound
    record(
        "bandit_budget",
        {
            "allocator": "thompson",
            "regret": round(float(mean["thompson"][-1]), 1),
            "lai_robbins": round(bound, 1),
            "ratio": round(float(ratio), 3),
            "ratio_from_scratch": round(float(mean["thompson_from_scratch"][-1] / bound), 3),
            "uniform_regret": round(float(mean["uniform"][-1]), 1),
            "ucb1_regret": round(float(mean["ucb1"][-1]), 1),
            "greedy_regret": round(float(mean["greedy"][-1]), 1),
            "epsilon_greedy_regret": round(float(mean["epsilon_greedy"][-1]), 1),
        },
        f"{args.items} items, T={args.budget}, batch {args.batch}, day-0 Poisson({args.day0:g}), "
        f"{args.seeds} seeds; goal ratio <= 1.5: {'met' if ratio <= 1.5 else 'not met'}",
    )


if __name__ == "__main__":
    main()
