"""Covariate shift between logged (shown) and serving (pre-auction candidate) rows, on the simulator
where the true click probability of every (user, item) is known.

Serving rows: (user, item) pairs drawn uniformly, the candidate pool a ranker must score. Logged
rows: the same kind of draw filtered by an "auction" that shows an item with probability
sigmoid(2 * (quality + 0.5)), so the training data over-represents high-quality items. Labels are
clicks drawn from the world's truth. The ranker is deliberately simple (logistic regression on the
item's topic one-hot and the user-topic match; the quality signal the auction used is not among its
features, as happens when the auction reads signals the ranker does not), so it cannot fit the truth
everywhere and must choose where to be right: unweighted, where the logged rows are;
importance-weighted by a domain classifier (recstack.models.shift.DomainWeights, which does see
quality: any signal present both at logging and at serving time may feed it), where the serving
rows are.

Reported on fresh serving rows: logloss against drawn clicks and the mean absolute error of the
predicted probability against the true one, and the gap between the mean prediction and the mean
truth (calibration in the large), unweighted vs weighted, averaged over 5 seeds.

    .venv/bin/python benchmarks/covariate_shift.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _results import record
from sklearn.linear_model import LogisticRegression

from recstack.data.simulator import World, sigmoid
from recstack.eval.metrics import logloss
from recstack.models.shift import DomainWeights


def features(world: World, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    topics = world.item_topic[items]
    one_hot = np.eye(int(world.item_topic.max()) + 1)[topics]
    user_topic = np.argmax(
        world.user_vecs[users]
        @ np.array([world.item_vecs[world.item_topic == t].mean(0) for t in range(one_hot.shape[1])]).T,
        axis=1,
    )
    match = (user_topic == topics).astype(float)[:, None]
    return np.hstack([world.item_quality[items][:, None], one_hot, match])


def draw(
    world: World, rng: np.random.Generator, n: int, shown: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    users = rng.integers(0, world.n_users, n * (4 if shown else 1))
    items = rng.integers(0, world.n_items, len(users))
    if shown:
        keep = rng.random(len(items)) < sigmoid(2.0 * (world.item_quality[items] + 0.5))
        users, items = users[keep][:n], items[keep][:n]
    truth = world.probabilities(users, items[:, None])["click"][:, 0]
    clicks = (rng.random(len(truth)) < truth).astype(float)
    return features(world, users, items), clicks, truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one seed, fewer rows")
    args = parser.parse_args()
    seeds = [0] if args.quick else [0, 1, 2, 3, 4]
    n = 20_000 if args.quick else 60_000
    results: dict[str, list[tuple[float, float, float]]] = {"unweighted": [], "weighted": []}
    for seed in seeds:
        world = World.generate(n_users=2000, n_items=5000, seed=seed)
        rng = np.random.default_rng(seed + 100)
        x_log, y_log, _ = draw(world, rng, n, shown=True)
        x_pool, _, _ = draw(world, rng, n, shown=False)  # unlabeled candidates, as serving sees them
        x_eval, y_eval, p_eval = draw(world, rng, n, shown=False)
        weights = DomainWeights(clip=20.0).fit(x_log, x_pool).weights(x_log)
        for name, w in (("unweighted", None), ("weighted", weights)):
            model = LogisticRegression(max_iter=2000).fit(x_log[:, 1:], y_log, sample_weight=w)
            p = model.predict_proba(x_eval[:, 1:])[:, 1]  # column 0 (quality) is the auction's
            bias = float(p.mean() - p_eval.mean())  # calibration in the large on the serving rows
            results[name].append((logloss(y_eval, p), float(np.abs(p - p_eval).mean()), bias))
    summary = {}
    for name, rows in results.items():
        ll, mae, bias = np.array(rows).mean(axis=0)
        summary[name] = (ll, mae, bias)
        print(
            f"{name:10s} serving logloss {ll:.5f}  mean |p - truth| {mae:.5f}  "
            f"mean p - mean truth {bias:+.5f}  ({len(rows)} seeds)"
        )
    record(
        f"covariate_shift{' --quick' if args.quick else ''}",
        {
            "unweighted_logloss": round(summary["unweighted"][0], 5),
            "weighted_logloss": round(summary["weighted"][0], 5),
            "unweighted_mae": round(summary["unweighted"][1], 5),
            "weighted_mae": round(summary["weighted"][1], 5),
            "unweighted_bias": round(summary["unweighted"][2], 5),
            "weighted_bias": round(summary["weighted"][2], 5),
            "seeds": len(seeds),
        },
        "simulator truth; logged = quality-biased auction winners; serving = uniform candidates",
    )


if __name__ == "__main__":
    main()
