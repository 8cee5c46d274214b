"""Feed quality on the simulator, where the truth is known: what each configured feed serves in
closed-loop rounds through the HTTP API (the playground: a random-feed history, training, rounds of
requests over loopback, incremental retraining between rounds), against popularity and an oracle.

Recipes (each a ``recstack.toml`` configuration, the same world, history and request stream):

- ``today``: the recipe the feed served before its features came from config: two-tower
  retrieval, MMoE on the ids plus three dense features (retrieval score, item age, the item's
  smoothed click rate) and the creator, topic, surface and device, Platt calibration;
- ``full_<kind>``: every default ``[[features]]`` definition, the heavy ranker of that kind;
- ``full_<kind>_exploit``: the same without exploration slots and diversity re-ranking (``[serving]
  explore_slots = 0``, ``diversity = "none"``), to show what those policies cost in CTR;
- ``popularity``: the live catalog's most clicked items so far (not through the API);
- ``oracle``: each user's truly most clickable items (the simulator's P(click)), not through the API.

Every policy shows a user no item twice (as the feed excludes seen items). Figures: the true expected
CTR of what was served (mean over the rounds), the true expected value per request (the value model's
weights over the simulator's probabilities), and the click head's holdout AUC of each round's model.
Goal: the best configured feed closes at least half the gap between ``today`` and the oracle in true
CTR (``gap_closed >= 0.5``).

    .venv/bin/python benchmarks/feed_quality.py [--quick]

Ends with ``RESULT recipe=<best> true_ctr=<x> oracle_true_ctr=<x> today_true_ctr=<x> gap_closed=<x>``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import record

from recstack.config import Diversity, RankerKind, Settings, load_settings
from recstack.data.simulator import RandomPolicy, Simulator, World
from recstack.features.definitions import Attribute, Context, ItemAge, Rate, RetrievalScore
from recstack.playground import PlaygroundConfig, run_playground, true_outcome

KINDS = ["lr", "gbdt", "dcn_v2", "shared_bottom", "mmoe", "ple"]
TODAY_FEATURES = [
    RetrievalScore(name="retrieval_score"),
    ItemAge(name="item_age"),
    Rate(
        name="item_ctr",
        entity="item",
        numerator=("click",),
        denominator=("impression",),
        window="30d",
        bucket="1d",
        prior=0.05,
        prior_weight=20.0,
    ),
    Attribute(name="item_creator", entity="item", field="creator_id"),
    Attribute(name="item_topic", entity="item", field="topic", buckets=1009),
    Context(name="request_surface", field="surface", buckets=101),
    Context(name="request_device", field="device", buckets=101),
]


def recipe_settings(name: str, base: Settings) -> Settings:
    ranking = base.ranking
    if name == "today":
        return base.model_copy(
            update={
                "features": TODAY_FEATURES,
                "ranking": ranking.model_copy(update={"model": RankerKind.mmoe}),
            }
        )
    exploit = name.endswith("_exploit")  # no exploration slots, no diversity re-ranking
    kind = RankerKind(name.removeprefix("full_").removesuffix("_exploit"))
    update: dict[str, Any] = {"ranking": ranking.model_copy(update={"model": kind})}
    if exploit:
        update["serving"] = base.serving.model_copy(update={"explore_slots": 0, "diversity": Diversity.none})
    return base.model_copy(update=update)


def run_recipe(name: str, config: PlaygroundConfig) -> dict[str, float]:
    base = load_settings(
        None,
        {
            "RECSTACK_PATHS__STATE_DIR": tempfile.mkdtemp(prefix=f"recstack-quality-{name}-"),
            "RECSTACK_TRAIN__PROGRESS": "false",
        },
    )
    results = run_playground(recipe_settings(name, base), Console(quiet=True), config=config)
    aucs = [r.auc_click for r in results if r.auc_click is not None]
    return {
        "true_ctr": float(np.mean([r.true_ctr for r in results])),
        "true_value": float(np.mean([r.true_value for r in results])),
        "ctr": float(np.mean([r.ctr for r in results])),
        "auc_click": float(np.mean(aucs)) if aucs else float("nan"),
    }


def run_policy(name: str, config: PlaygroundConfig, weights: dict[str, float]) -> dict[str, float]:
    """The playground's world, history and request stream, served by a policy in process."""
    world = World.generate(n_users=config.users, n_items=config.items, seed=config.seed)
    live = world.n_items - min(config.held_back, world.n_items // 5)
    per_day = 4_000
    start = datetime.now(UTC) - timedelta(days=config.history_requests / per_day, minutes=10)
    sim = Simulator(world, seed=config.seed, start=start, requests_per_day=per_day, slate=config.slate)
    seen = [set[int]() for _ in range(world.n_users)]
    clicks = np.zeros(world.n_items)
    for table in sim.run(RandomPolicy(live, seed=config.seed), config.history_requests, 2_000):
        _observe(table, seen, clicks)
    revealed = {"n": live}
    rng = np.random.default_rng(config.seed)

    def scores(user: int) -> np.ndarray:
        items = np.arange(revealed["n"])
        if name == "oracle":
            return world.probabilities(np.array([user]), items[None, :])["click"][0]
        return clicks[: revealed["n"]] + rng.random(revealed["n"]) * 1e-3

    policy = _Unseen(scores, seen)
    arriving = list(range(live, world.n_items))
    ctrs, values = [], []
    for round_ in range(1, config.rounds + 1):
        new = arriving[: len(arriving) // (config.rounds - round_ + 1)]
        arriving = arriving[len(new) :]
        revealed["n"] += len(new)
        import pyarrow as pa

        tables = list(sim.run(policy, config.requests_per_round, 100))
        events = pa.concat_tables(tables)
        kinds = np.asarray(events["kind"].to_pylist())
        shown = events.filter(pa.array(kinds == "impression"))
        users = np.array([int(u[1:]) for u in shown["user_id"].to_pylist()])
        items = np.array([int(i[1:]) for i in shown["item_id"].to_pylist()])
        ctr, value = true_outcome(world, users, items, np.asarray(shown["position"].to_pylist()), weights)
        ctrs.append(ctr)
        values.append(value * len(shown) / config.requests_per_round)
        _observe(events, seen, clicks)
    return {"true_ctr": float(np.mean(ctrs)), "true_value": float(np.mean(values))}


class _Unseen:
    """The k best items by ``scores(user)`` the user was not shown yet."""

    def __init__(self, scores: Callable[[int], np.ndarray], seen: list[set[int]]) -> None:
        self.scores = scores
        self.seen = seen

    def rank(self, users: np.ndarray, k: int, now_us: int) -> np.ndarray:
        out = np.empty((len(users), k), dtype=np.int64)
        for row, user in enumerate(users.tolist()):
            score = self.scores(user).astype(np.float64)
            score[list(self.seen[user])] = -np.inf
            top = np.argsort(-score, kind="stable")[:k]
            out[row] = top
            self.seen[user].update(top.tolist())
        return out


def _observe(table: Any, seen: list[set[int]], clicks: np.ndarray) -> None:
    kinds = table["kind"].to_pylist()
    for kind, user, item in zip(
        kinds, table["user_id"].to_pylist(), table["item_id"].to_pylist(), strict=True
    ):
        if item is None or user is None:
            continue
        if kind == "impression":
            seen[int(user[1:])].add(int(item[1:]))
        elif kind == "click":
            clicks[int(item[1:])] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller world; today, mmoe and gbdt only")
    args = parser.parse_args()
    if args.quick:
        config = PlaygroundConfig(
            users=200, items=400, held_back=60, history_requests=3_000, rounds=2, requests_per_round=150
        )
        recipes = ["today", "full_mmoe", "full_gbdt", "full_gbdt_exploit"]
    else:
        config = PlaygroundConfig()
        recipes = ["today", *(f"full_{k}" for k in KINDS), "full_gbdt_exploit", "full_mmoe_exploit"]
    # the feeds as measured before the playground's users searched: their search clicks would move
    # the features (clicks without impressions), and this compares the feeds alone
    config.history_searches = config.searches_per_round = 0
    weights = load_settings(None, {}).serving.value_weights
    figures: dict[str, dict[str, float]] = {}
    for name in ("oracle", "popularity"):
        figures[name] = run_policy(name, config, weights)
        f = figures[name]
        print(f"{name:14s} true CTR {f['true_ctr']:.4f}  value/request {f['true_value']:.3f}")
    for name in recipes:
        figures[name] = run_recipe(name, config)
        f = figures[name]
        print(
            f"{name:14s} true CTR {f['true_ctr']:.4f}  value/request {f['true_value']:.3f}  "
            f"online CTR {f['ctr']:.4f}  holdout AUC click {f['auc_click']:.4f}"
        )
    configured = [r for r in recipes if r != "today"]
    best = max(configured, key=lambda r: figures[r]["true_ctr"])
    today, oracle = figures["today"]["true_ctr"], figures["oracle"]["true_ctr"]
    gap_closed = (figures[best]["true_ctr"] - today) / (oracle - today) if oracle != today else float("nan")
    out: dict[str, object] = {
        "recipe": best,
        "true_ctr": round(figures[best]["true_ctr"], 4),
        "oracle_true_ctr": round(oracle, 4),
        "today_true_ctr": round(today, 4),
        "popularity_true_ctr": round(figures["popularity"]["true_ctr"], 4),
    }
    for name in recipes:
        out[f"{name}_true_ctr"] = round(figures[name]["true_ctr"], 4)
        out[f"{name}_value"] = round(figures[name]["true_value"], 3)
        out[f"{name}_auc_click"] = round(figures[name]["auc_click"], 4)
    out["gap_closed"] = round(gap_closed, 3)
    record(
        "feed_quality" + (" --quick" if args.quick else ""),
        out,
        f"simulator ({config.users} users, {config.items} items, {config.rounds} rounds of "
        f"{config.requests_per_round} requests through the HTTP API); goal gap_closed >= 0.5",
    )


if __name__ == "__main__":
    main()
