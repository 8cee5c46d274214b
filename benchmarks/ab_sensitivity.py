"""How sensitive the experiment designs are, measured on the simulator (ground truth known).

1. A/A tests: ``--aa`` independent simulated logs (a fresh world and seed each, 500 users and
   20,000 requests, random policy), users split by the salted hash; Welch's test on per-user CTR
   at alpha 0.05. The share of false positives should fall in the binomial interval around 0.05.
2. CUPED: in the same logs, the first half of the requests is the pre-period; the per-user CTR of
   the second half is adjusted by the first half's. Reported: the mean variance reduction of the
   difference estimator and the mean squared correlation rho^2 it should equal.
3. Interleaving against an A/B split, for two rankers on one world (5,000 users): A ranks by the
   true affinity plus Gaussian noise of sd 1.0, B by the same with sd 1.5 (a small true
   difference). A/B: half the users see A, half B; users needed = the total for 80% power at
   alpha 0.05 from the measured per-user CTR difference and spread. Team-draft interleaving: every
   user sees A and B interleaved, clicks credit the ranker that placed the item; users needed for
   the per-user preference to be significant, likewise. The ratio says how many times fewer users
   interleaving needs for the same comparison.

    .venv/bin/python benchmarks/ab_sensitivity.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import pyarrow as pa
from _results import record
from scipy import stats

from recstack.data.simulator import RandomPolicy, Simulator, World
from recstack.experiments.analysis import cuped, users_needed, welch
from recstack.experiments.assignment import bucket
from recstack.experiments.interleaving import credit, preference, team_draft
from recstack.experiments.metrics import user_metrics

WEIGHTS = {"click": 1.0}


def aa_and_cuped(tests: int, users: int, requests: int) -> tuple[float, int, float, float]:
    """(false-positive rate, false positives, mean CUPED variance reduction, mean rho^2)."""
    positives, reductions, rho2s = 0, [], []
    for t in range(tests):
        world = World.generate(n_users=users, n_items=500, seed=1000 + t)
        sim = Simulator(world, seed=1000 + t)
        policy = RandomPolicy(world.n_items, seed=t)
        pre = user_metrics(pa.concat_tables(sim.run(policy, requests // 2)), WEIGHTS)
        post = user_metrics(pa.concat_tables(sim.run(policy, requests // 2)), WEIGHTS)
        joined = post[["ctr"]].join(pre["ctr"].rename("pre"), how="left").fillna(0.0)
        arm = np.array([bucket(f"aa-{t}", u) < 0.5 for u in joined.index])
        y, x = joined["ctr"].to_numpy(), joined["pre"].to_numpy()
        positives += welch(y[~arm], y[arm]).p_value < 0.05
        a, b, _ = cuped(y[~arm], x[~arm], y[arm], x[arm])
        raw = y[arm].var(ddof=1) / arm.sum() + y[~arm].var(ddof=1) / (~arm).sum()
        adj = b.var(ddof=1) / arm.sum() + a.var(ddof=1) / (~arm).sum()
        reductions.append(1 - adj / raw)
        rho2s.append(np.corrcoef(x, y)[0, 1] ** 2)
    return positives / tests, positives, float(np.mean(reductions)), float(np.mean(rho2s))


class Noisy:
    """Ranks every item by the true affinity plus Gaussian noise of sd ``noise`` (drawn per request)."""

    def __init__(self, world: World, noise: float, seed: int) -> None:
        self.world, self.noise, self.rng = world, noise, np.random.default_rng(seed)
        self.all = np.arange(world.n_items)

    def scores(self, users: np.ndarray) -> np.ndarray:
        items = np.broadcast_to(self.all, (len(users), len(self.all)))
        aff = self.world.affinity(users, items)
        out: np.ndarray = aff + self.noise * self.rng.normal(size=aff.shape)
        return out

    def rank(self, users: np.ndarray, k: int, now_us: int) -> np.ndarray:
        s = self.scores(users)
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, top, axis=1), axis=1)
        out: np.ndarray = np.take_along_axis(top, order, axis=1)
        return out


class Split:
    """A/B: each user is served by A or B by the salted hash."""

    def __init__(self, world: World, a: Noisy, b: Noisy) -> None:
        self.world, self.a, self.b = world, a, b

    def rank(self, users: np.ndarray, k: int, now_us: int) -> np.ndarray:
        in_b = np.array([bucket("ab", self.world.user_id(int(u))) < 0.5 for u in users])
        out = np.empty((len(users), k), dtype=np.int64)
        if (~in_b).any():
            out[~in_b] = self.a.rank(users[~in_b], k, now_us)
        if in_b.any():
            out[in_b] = self.b.rank(users[in_b], k, now_us)
        return out


class Interleaved:
    """Team-draft interleaving of A and B per request; remembers each request's teams."""

    def __init__(self, a: Noisy, b: Noisy, seed: int) -> None:
        self.a, self.b, self.rng = a, b, np.random.default_rng(seed)
        self.teams: list[list[int]] = []

    def rank(self, users: np.ndarray, k: int, now_us: int) -> np.ndarray:
        ra, rb = self.a.rank(users, k, now_us), self.b.rank(users, k, now_us)
        out = np.empty((len(users), k), dtype=np.int64)
        for row in range(len(users)):
            items, teams = team_draft(ra[row].tolist(), rb[row].tolist(), k, self.rng)
            out[row] = items
            self.teams.append(teams)
        return out


def clicks_by_request(table: pa.Table) -> dict[int, set[str]]:
    kinds = np.asarray(table["kind"].to_pylist())
    clicks = table.filter(pa.array(kinds == "click"))
    out: dict[int, set[str]] = {}
    for request, item in zip(clicks["request_id"].to_pylist(), clicks["item_id"].to_pylist(), strict=True):
        out.setdefault(int(request[1:]), set()).add(item)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="50 A/A tests, 1,500 users for the comparison")
    parser.add_argument("--aa", type=int, default=200)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--requests-per-user", type=int, default=20)
    args = parser.parse_args()
    if args.quick:
        args.aa, args.users = 50, 1_500
    fpr, positives, reduction, rho2 = aa_and_cuped(args.aa, 500, 20_000)
    low, high = stats.binom.interval(0.95, args.aa, 0.05)
    print(f"A/A: {positives} false positives in {args.aa} tests ({fpr:.3f}; 95% binomial interval "
          f"{low / args.aa:.3f}..{high / args.aa:.3f})")  # fmt: skip
    print(f"CUPED: variance of the difference {reduction:.3f} lower; mean rho^2 of the covariate {rho2:.3f}")

    world = World.generate(n_users=args.users, n_items=1_000, seed=7)
    requests = args.users * args.requests_per_user
    a, b = Noisy(world, 1.0, 1), Noisy(world, 1.5, 2)
    ab = user_metrics(pa.concat_tables(Simulator(world, seed=7).run(Split(world, a, b), requests)), WEIGHTS)
    in_b = np.array([bucket("ab", u) < 0.5 for u in ab.index])
    ctr = ab["ctr"].to_numpy()
    compared = welch(ctr[in_b], ctr[~in_b])  # A - B
    spread = float(np.sqrt((ctr[in_b].var(ddof=1) + ctr[~in_b].var(ddof=1)) / 2))
    ab_users = 2 * users_needed(spread, compared.diff)

    inter = Interleaved(Noisy(world, 1.0, 3), Noisy(world, 1.5, 4), seed=5)
    sim = Simulator(world, seed=8)
    users_of, credits = [], []
    for table in sim.run(inter, requests, 5_000):
        kinds = np.asarray(table["kind"].to_pylist())
        shown = table.filter(pa.array(kinds == "impression"))
        clicked = clicks_by_request(table)
        rows: dict[int, tuple[str, list[str]]] = {}
        for request, user, item in zip(
            shown["request_id"].to_pylist(),
            shown["user_id"].to_pylist(),
            shown["item_id"].to_pylist(),
            strict=True,
        ):
            rows.setdefault(int(request[1:]), (user, []))[1].append(item)
        for request, (user, items) in rows.items():
            hits = clicked.get(request, set())
            users_of.append(user)
            credits.append(credit(inter.teams[request], [i in hits for i in items]))
    pref = preference(np.array(users_of), np.array(credits))
    per_user_sd = (
        (pref.ci_high - pref.ci_low) / (2 * stats.t.ppf(0.975, max(pref.users - 1, 1))) * np.sqrt(pref.users)
    )
    inter_users = float(users_needed(per_user_sd, pref.score) / 2)  # one-sample: half the two-arm formula
    print(f"A/B: CTR A - B = {compared.diff:+.5f} [{compared.ci_low:+.5f}, {compared.ci_high:+.5f}] over "
          f"{len(ctr):,} users; users needed for 80% power: {ab_users:,.0f}")  # fmt: skip
    print(f"interleaving: preference for A {pref.score:+.4f} [{pref.ci_low:+.4f}, {pref.ci_high:+.4f}] over "
          f"{pref.users:,} users; users needed: {inter_users:,.0f}")  # fmt: skip
    record(
        "ab_sensitivity",
        {
            "aa_tests": args.aa,
            "aa_fpr": round(fpr, 3),
            "cuped_reduction": round(reduction, 3),
            "rho2": round(rho2, 3),
            "ab_users": round(ab_users),
            "interleaving_users": round(inter_users),
            "ratio": round(ab_users / inter_users, 1) if inter_users > 0 else "n/a",
        },
        f"A/A on {args.aa} fresh simulated logs (500 users, 20k requests, random policy); rankers: true "
        f"affinity + noise sd 1.0 vs 1.5, {args.users} users x {args.requests_per_user} requests",
    )


if __name__ == "__main__":
    main()
