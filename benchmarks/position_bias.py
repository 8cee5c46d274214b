"""Position-bias correction judged on the Open Bandit Dataset (the small sample in ../shared/data).

Train on the Bernoulli-Thompson-sampling logs (all three campaigns pooled), where what was shown in
which slot depends on the policy; evaluate on the uniform-random logs, where item and position are
independent, so a position-free score's AUC there measures relevance without position confounding.
Methods, all on the same DCN-v2 (small, for ~100 clicks) and the same features:

- none: position ignored.
- feature: position as a categorical feature, pinned to the top slot at serving.
- tower: a shallow position tower added to the logit in training, dropped at serving.
- ips: rows weighted by 1 / propensity_score (the logging policy's known probability of the
  action), normalized to mean 1 and clipped at 10.
- item_ctr (a reference, not a method): each item's shrunk click rate in the training logs.

The click rate is about 0.4% (a few dozen clicks per 10,000 impressions in this sample), so every
AUC comes with a 95% bootstrap interval and each method's difference from "none" with a paired one.

    .venv/bin/python benchmarks/position_bias.py [--quick] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np
import pandas as pd
from _results import DATA_DIR, bench_settings, record

from recstack.data.readers import OBD_CAMPAIGNS, read_open_bandit
from recstack.eval.metrics import auc, bootstrap_ci, logloss
from recstack.train.ranking import NeuralRanker

CATEGORICAL = ["item_id", "user_feature_0", "user_feature_1", "user_feature_2", "user_feature_3"]
CATEGORICAL += ["item_feature_1", "item_feature_2", "item_feature_3"]
DENSE = ["item_feature_0", "affinity"]


def load(folder: Path, policy: str) -> pd.DataFrame:
    frames = []
    for campaign in OBD_CAMPAIGNS:
        obd = read_open_bandit(folder, policy, campaign)
        log = obd.log.merge(obd.item_context, on="item_id", how="left")
        columns = [f"user-item_affinity_{i}" for i in range(obd.n_items)]
        affinity = log[columns].to_numpy()[np.arange(len(log)), log["item_id"].to_numpy()]
        frame = log.drop(columns=columns).assign(affinity=affinity, campaign=campaign)
        frame["item_id"] = campaign + ":" + frame["item_id"].astype(str)  # item ids are per campaign
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    out["position"] = out["position"] - 1  # 0-based slots
    out["click"] = out["click"].astype(np.float64)
    weight = 1.0 / out["propensity_score"].to_numpy()
    out["ips_weight"] = np.minimum(weight / weight.mean(), 10.0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="three epochs, 200 bootstrap rounds")
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    args = parser.parse_args()
    folder = args.data / "open_bandit_dataset_small"
    logged, random_logs = load(folder, "bts"), load(folder, "random")
    order = np.random.default_rng(0).permutation(len(logged))
    cut = int(len(logged) * 0.85)
    train, valid = logged.iloc[order[:cut]], logged.iloc[order[cut:]]
    print(
        f"train (Bernoulli TS) {len(train):,} impressions, {int(train.click.sum())} clicks; "
        f"validation {len(valid):,} / {int(valid.click.sum())}; "
        f"evaluation (uniform random) {len(random_logs):,} / {int(random_logs.click.sum())}"
    )
    y = random_logs["click"].to_numpy()
    rounds = 200 if args.quick else 1000
    scores: dict[str, np.ndarray] = {}
    for method in ("none", "feature", "tower", "ips"):
        settings = bench_settings(
            {
                "RECSTACK_TRAIN__EPOCHS": "3" if args.quick else "15",
                "RECSTACK_TRAIN__PATIENCE": "4",
                "RECSTACK_TRAIN__BATCH_SIZE": "512",
                "RECSTACK_TRAIN__LR": "0.003",
                "RECSTACK_TRAIN__WEIGHT_DECAY": "0.0001",
                "RECSTACK_RANKING__EMBEDDING_DIM": "8",
                "RECSTACK_RANKING__TASKS": '{"click": 1.0}',
                "RECSTACK_RANKING__MODEL": "dcn_v2",
                "RECSTACK_RANKING__HIDDEN": "[64]",
                "RECSTACK_RANKING__CROSS_LAYERS": "1",
                "RECSTACK_RANKING__EMBEDDING_L2": "0.0001",
                "RECSTACK_RANKING__POSITION": method,
                "RECSTACK_RANKING__MAX_POSITION": "2",
            },
        )
        ranker = NeuralRanker(
            settings, CATEGORICAL, DENSE, position="position", weight="ips_weight", run_name=f"obd_{method}"
        )
        ranker.fit(train, valid)
        scores[method] = ranker.predict_proba(random_logs)[:, 0]
    counts = train.groupby("item_id")["click"].agg(["sum", "count"])
    prior = train["click"].mean()
    item_ctr = (counts["sum"] + 100 * prior) / (counts["count"] + 100)  # shrunk per-item CTR
    scores["item_ctr"] = random_logs["item_id"].map(item_ctr).fillna(prior).to_numpy()
    rows = {}
    for method, p in scores.items():
        value, low, high = bootstrap_ci(auc, y, p, rounds=rounds)
        diff, d_low, d_high = bootstrap_ci(auc, y, p, baseline=scores["none"], rounds=rounds)
        rows[method] = (value, low, high, diff, d_low, d_high, logloss(y, p))
    print(f"\n{'method':8s} {'AUC on random logs [95% CI]':>30s} {'vs none [95% CI]':>28s} {'logloss':>8s}")
    for method, (value, low, high, diff, d_low, d_high, ll) in rows.items():
        print(
            f"{method:8s} {value:10.4f} [{low:.4f}, {high:.4f}]   "
            f"{diff:+.4f} [{d_low:+.4f}, {d_high:+.4f}] {ll:8.4f}"
        )
    for method, (value, low, high, diff, d_low, d_high, ll) in rows.items():
        record(
            f"position_bias{' --quick' if args.quick else ''}",
            {
                "method": method,
                "auc": round(value, 4),
                "auc_low": round(low, 4),
                "auc_high": round(high, 4),
                "vs_none": round(diff, 4),
                "vs_none_low": round(d_low, 4),
                "vs_none_high": round(d_high, 4),
                "logloss": round(ll, 5),
                "eval_clicks": int(y.sum()),
            },
            "train: OBD small bts logs (3 campaigns); evaluate: uniform-random logs; 95% bootstrap CIs",
        )


if __name__ == "__main__":
    main()
