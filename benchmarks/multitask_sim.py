"""Multi-task ranking on the simulator, where every action's true probability is known:
shared-bottom, MMoE and PLE side by side, one head per action (click, like, share, hide).

Impressions: uniformly drawn (user, item) pairs at a uniformly drawn slot 0..9. The world's
response model decides each action: examined with probability 1/(1+position); if examined, click
with the world's P(click); a click is liked / shared with P(like | click) / P(share | click); an
examined item that is not clicked is hidden with P(hide). Labels are unconditional (like = clicked
and liked), as the value model consumes them. Features: user, item, topic and creator ids; the
position goes through the shallow position tower. Reported per action on held-out rows: AUC of
each model and of the truth itself (the ceiling), and logloss.

    .venv/bin/python benchmarks/multitask_sim.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np
import pandas as pd
from _results import bench_settings, record

from recstack.data.simulator import World
from recstack.eval.metrics import auc, logloss
from recstack.train.ranking import NeuralRanker

TASKS = ("click", "like", "share", "hide")


def impressions(world: World, n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, world.n_users, n)
    items = rng.integers(0, world.n_items, n)
    position = rng.integers(0, 10, n)
    p = {k: v[:, 0] for k, v in world.probabilities(users, items[:, None]).items()}
    examined = rng.random(n) < world.response.examination(position)
    click = examined & (rng.random(n) < p["click"])
    like = click & (rng.random(n) < p["like"])
    share = click & (rng.random(n) < p["share"])
    hide = examined & ~click & (rng.random(n) < p["hide"])
    top = world.response.examination(np.zeros(n))  # the truth as if shown first
    return pd.DataFrame(
        {
            "user": users,
            "item": items,
            "topic": world.item_topic[items],
            "creator": world.item_creator[items],
            "position": position,
            "click": click.astype(float),
            "like": like.astype(float),
            "share": share.astype(float),
            "hide": hide.astype(float),
            "true_click": top * p["click"],
            "true_like": top * p["click"] * p["like"],
            "true_share": top * p["click"] * p["share"],
            "true_hide": top * (1 - p["click"]) * p["hide"],
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rows and epochs")
    args = parser.parse_args()
    world = World.generate(n_users=2000, n_items=3000, seed=7)
    n = 60_000 if args.quick else 400_000
    frame = impressions(world, n, seed=8)
    train, valid, test = np.split(frame, [int(0.8 * n), int(0.9 * n)])
    print(
        f"{len(train):,} training impressions; positive rates "
        + ", ".join(f"{t} {train[t].mean():.4f}" for t in TASKS)
    )
    rows: dict[str, dict[str, float]] = {}
    for model in ("shared_bottom", "mmoe", "ple"):
        settings = bench_settings(
            {
                "RECSTACK_TRAIN__EPOCHS": "2" if args.quick else "8",
                "RECSTACK_TRAIN__PATIENCE": "2",
                "RECSTACK_TRAIN__BATCH_SIZE": "2048",
                "RECSTACK_TRAIN__LR": "0.002",
                "RECSTACK_RANKING__MODEL": model,
                "RECSTACK_RANKING__TASKS": '{"click": 1.0, "like": 1.0, "share": 1.0, "hide": 1.0}',
                "RECSTACK_RANKING__EMBEDDING_DIM": "16",
                "RECSTACK_RANKING__HIDDEN": "[128, 64]",
                "RECSTACK_RANKING__EXPERT_HIDDEN": "[128, 64]",
                "RECSTACK_RANKING__EXPERTS": "4" if model == "mmoe" else "2",
                "RECSTACK_RANKING__POSITION": "tower",
                "RECSTACK_RANKING__MAX_POSITION": "9",
            },
        )
        ranker = NeuralRanker(
            settings, ["user", "item", "topic", "creator"], position="position", run_name=model
        )
        started = time.perf_counter()
        ranker.fit(train, valid)
        took = time.perf_counter() - started
        probs = ranker.predict_proba(test)
        rows[model] = {"train_s": took}
        for t, task in enumerate(TASKS):
            rows[model][f"auc_{task}"] = auc(test[task].to_numpy(), probs[:, t])
            rows[model][f"logloss_{task}"] = logloss(test[task].to_numpy(), probs[:, t])
    truth = {f"auc_{t}": auc(test[t].to_numpy(), test[f"true_{t}"].to_numpy()) for t in TASKS}
    print(f"\n{'model':14s} " + " ".join(f"{'AUC ' + t:>10s}" for t in TASKS) + f" {'train s':>8s}")
    for model, r in rows.items():
        print(f"{model:14s} " + " ".join(f"{r[f'auc_{t}']:10.4f}" for t in TASKS) + f" {r['train_s']:8.1f}")
    print(
        f"{'truth':14s} "
        + " ".join(f"{truth[f'auc_{t}']:10.4f}" for t in TASKS)
        + "  (position-free ceiling)"
    )
    for model, r in rows.items():
        record(
            f"multitask_sim{' --quick' if args.quick else ''}",
            {"model": model} | {k: round(v, 4) for k, v in r.items()},
            f"simulator, {len(train):,} impressions, 4 heads; truth AUCs "
            + " ".join(f"{t}={truth[f'auc_{t}']:.4f}" for t in TASKS),
        )


if __name__ == "__main__":
    main()
