"""What the exploration stage costs a feed request, by allocator and with or without the logged
propensities (``[serving] explore_propensity_draws``).

A catalog of ``--items`` items, all fresh (so the pool is the stage's full 500), with impression and
click counts drawn from Beta(2, 60) rates; a ranked list of 20 candidates; two exploration slots.
Each configuration runs ``--calls`` requests; p50 and p99 of the stage's own time, in microseconds.

Then the precision of Thompson's estimated propensities on that pool: for 5 items (the 1st, 2nd,
5th, 10th and 20th most likely picks), the relative RMSE over 200 seeds of the Rao-Blackwellized
estimate the stage logs (``thompson_pick_probabilities``, 4 and 8 draws) and of counting the picks
among 16 and 64 draws (``pick_probabilities``), against a count over 200,000 draws.

    .venv/bin/python benchmarks/explore_cost.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _results import record

from recstack.config import Allocator
from recstack.experiments.bandits import Thompson, fit_prior, pick_probabilities, thompson_pick_probabilities
from recstack.schema import parse_event
from recstack.serving.ops.base import Candidates, RecRequest
from recstack.serving.ops.explore import ExploreOp
from recstack.serving.ops.filter import FilterOp
from recstack.serving.ops.retrieve import StateFresh
from recstack.serving.state import FeedState


def catalog(n: int, now: int, seed: int) -> FeedState:
    state = FeedState()
    rows = ({"event_id": f"e{i}", "kind": "item", "timestamp": now, "item_id": f"n{i}", "creator_id": f"c{i}"}
            for i in range(n))  # fmt: skip
    state.apply(parse_event(row) for row in rows)
    rng = np.random.default_rng(seed)
    shown = rng.poisson(300, size=n)
    state.impressions.data[:n] = shown
    state.clicks.data[:n] = rng.binomial(shown, rng.beta(2, 60, size=n))
    return state


def precision(state: FeedState, quick: bool) -> dict[str, float]:
    """Relative RMSE (mean over the 5 items) of each estimator of Thompson's pick probabilities."""
    shown = state.impressions.values[:500].astype(np.float64)
    clicks = state.clicks.values[:500].astype(np.float64)
    prior = fit_prior(shown, clicks)
    policy = Thompson(prior)
    truth = pick_probabilities(policy, shown, clicks, 2, np.random.default_rng(7), draws=200_000)
    ranked = np.argsort(-truth)
    of = ranked[[0, 1, 4, 9, 19]]
    seeds = 50 if quick else 200
    estimators = {
        "rb4": lambda rng: thompson_pick_probabilities(prior, shown, clicks, 2, of, rng, 4),
        "rb8": lambda rng: thompson_pick_probabilities(prior, shown, clicks, 2, of, rng, 8),
        "counted16": lambda rng: pick_probabilities(policy, shown, clicks, 2, rng, 16)[of],
        "counted64": lambda rng: pick_probabilities(policy, shown, clicks, 2, rng, 64)[of],
    }
    out: dict[str, float] = {}
    print("pick probabilities " + " ".join(f"{p:.4f}" for p in truth[of]))
    for name, estimate in estimators.items():
        values = np.array([estimate(np.random.default_rng(s)) for s in range(seeds)])
        rel = np.sqrt(((values - truth[of]) ** 2).mean(axis=0)) / truth[of]
        print(f"{name:10s} relative RMSE " + " ".join(f"{r:.2f}" for r in rel))
        out[f"{name}_rel_rmse"] = round(float(rel.mean()), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1,000 calls each")
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--calls", type=int, default=10_000)
    args = parser.parse_args()
    if args.quick:
        args.calls = 1_000
    now = 1_800_000_000
    state = catalog(args.items, now, 0)
    listed = Candidates(np.arange(20, dtype=np.int64), np.zeros(20), ["two_tower"] * 20)
    figures: dict[str, object] = {"items": args.items, "pool": 500}
    configs = [(Allocator.thompson, 0), (Allocator.thompson, 4), (Allocator.thompson, 16)]
    configs += [(Allocator.thompson, 64)]
    configs += [(Allocator.ucb1, 0), (Allocator.ucb1, 16)]
    for allocator, draws in configs:
        op = ExploreOp(2, StateFresh(state, 3600), FilterOp(), 3, allocator=allocator, draws=draws)
        rng = np.random.default_rng(1)
        times = []
        for _ in range(args.calls):
            request = RecRequest(
                "u", 20, (now + 10) * 1_000_000, rng=np.random.default_rng(rng.integers(2**63))
            )
            started = time.perf_counter()
            op(request, listed, state)
            times.append(time.perf_counter() - started)
        us = np.array(times[len(times) // 10 :]) * 1e6  # the first tenth warms up (and fits the prior)
        p50, p99 = np.percentile(us, [50, 99])
        key = f"{allocator.value}_draws{draws}"
        print(f"{key:22s} p50 {p50:7.1f} us  p99 {p99:7.1f} us")
        figures[f"{key}_p50_us"] = round(float(p50), 1)
        figures[f"{key}_p99_us"] = round(float(p99), 1)
    figures.update(precision(state, args.quick))
    record("explore_cost", figures, f"{args.calls} calls each, 2 slots, pool 500 fresh items, 1 thread")


if __name__ == "__main__":
    main()
