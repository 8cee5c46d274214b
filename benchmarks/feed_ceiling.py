"""How much of the oracle's ranking the playground's data can teach: holdout click AUC of signals
that a feed could learn from its log, against the simulator's true P(click).

``feed_quality.py``'s oracle ranks each user's items by the simulator's true click probability,
which comes from the user's and the item's latent vectors. A feed sees only the log. On the
playground's world and random-feed history (the same configuration and seed), the first 80% of
the impressions in time teach each signal and the last 20% score it:

- ``truth``: the simulator's P(click | seen) (what the oracle ranks by);
- ``item_ctr``, ``topic_ctr``: the item's smoothed click rate and the user's smoothed click rate on
  the item's topic (the default features ``item_ctr_7d`` and ``user_topic_ctr_30d``), and ``rule``
  their log sum;
- ``ease``: EASE^R scores (``recstack.models.baselines.EASE``) of the training clicks;
- ``true_vector_similarity``: the candidate's true latent vector against the mean true vector of
  the user's clicked items (what a perfect item embedding would give a last-N feature);
- ``lr_*``: logistic regressions over those signals, fitted on half the scored rows and scored on
  the other half (``lr_rule`` and ``truth_half`` on the same half).

Ends with ``RESULT truth_auc=... rule_auc=... lr_rule_ease_auc=... lr_rule_true_vector_auc=...``.

    .venv/bin/python benchmarks/feed_ceiling.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from _results import record
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from recstack.data.simulator import RandomPolicy, Simulator, World
from recstack.models.baselines import EASE
from recstack.playground import PlaygroundConfig


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    return round(float(roc_auc_score(labels, scores)), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a quarter of the history")
    args = parser.parse_args()
    config = PlaygroundConfig()
    requests = config.history_requests // (4 if args.quick else 1)
    world = World.generate(n_users=config.users, n_items=config.items, seed=config.seed)
    sim = Simulator(world, seed=config.seed, requests_per_day=4_000, slate=config.slate)
    events = pa.concat_tables(list(sim.run(RandomPolicy(world.n_items, seed=config.seed), requests, 2_000)))
    kinds = np.asarray(events["kind"].to_pylist())
    users = np.array([int(u[1:]) if u else -1 for u in events["user_id"].to_pylist()])
    items = np.array([int(i[1:]) if i else -1 for i in events["item_id"].to_pylist()])
    shown = kinds == "impression"
    clicked = {(u, i) for u, i in zip(users[kinds == "click"], items[kinds == "click"], strict=True)}
    u_all, i_all = users[shown], items[shown]  # in time order
    y_all = np.array([(u, i) in clicked for u, i in zip(u_all, i_all, strict=True)])
    cut = int(len(u_all) * 0.8)
    u, i, y = u_all[:cut], i_all[:cut], y_all[:cut]  # teaches
    su, si, sy = u_all[cut:], i_all[cut:], y_all[cut:]  # scores

    truth = world.probabilities(su, si[:, None])["click"][:, 0]
    n_users, n_items = world.n_users, world.n_items
    seen = np.bincount(i, minlength=n_items).astype(np.float64)
    clicks = np.bincount(i, weights=y, minlength=n_items)
    item_ctr = (clicks + 20 * 0.05) / (seen + 20)  # the defaults' prior and weight
    topic = world.item_topic
    pair = u * (topic.max() + 1) + topic[i]
    size = n_users * (topic.max() + 1)
    topic_seen = np.bincount(pair, minlength=size).astype(np.float64)
    topic_clicks = np.bincount(pair, weights=y, minlength=size)
    topic_ctr = (topic_clicks + 10 * 0.05) / (topic_seen + 10)
    f_item = np.log(item_ctr[si])
    f_topic = np.log(topic_ctr[su * (topic.max() + 1) + topic[si]])
    matrix = sp.csr_matrix((np.ones(int(y.sum())), (u[y], i[y])), shape=(n_users, n_items), dtype=np.float64)
    matrix.data[:] = 1.0  # repeated clicks count once
    ease = EASE().fit(matrix).score(np.arange(n_users))[su, si]
    vectors = world.item_vecs
    mean_clicked = np.zeros((n_users, vectors.shape[1]))
    np.add.at(mean_clicked, u[y], vectors[i[y]])
    mean_clicked /= np.maximum(np.bincount(u[y], minlength=n_users), 1)[:, None]
    true_similarity = (mean_clicked[su] * vectors[si]).sum(axis=1)

    figures: dict[str, object] = {
        "impressions": len(u_all),
        "truth_auc": auc(sy, truth),
        "item_ctr_auc": auc(sy, f_item),
        "topic_ctr_auc": auc(sy, f_topic),
        "rule_auc": auc(sy, f_item + f_topic),
        "ease_auc": auc(sy, ease),
        "true_vector_similarity_auc": auc(sy, true_similarity),
    }
    half = len(sy) // 2
    for name, columns in {
        "lr_rule": [f_item, f_topic],
        "lr_rule_ease": [f_item, f_topic, ease],
        "lr_rule_true_vector": [f_item, f_topic, true_similarity],
    }.items():
        x = np.column_stack(columns)
        model = LogisticRegression().fit(x[:half], sy[:half])
        figures[f"{name}_auc"] = auc(sy[half:], model.decision_function(x[half:]))
    figures["truth_half_auc"] = auc(sy[half:], truth[half:])
    for key, value in figures.items():
        print(f"{key:30s} {value}")
    record(
        "feed_ceiling" + (" --quick" if args.quick else ""),
        figures,
        f"the playground's world ({config.users} users, {config.items} items, seed {config.seed}) and "
        f"random history ({requests} requests of {config.slate}); first 80% of impressions teach, last "
        "20% score",
    )


if __name__ == "__main__":
    main()
