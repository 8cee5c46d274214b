"""MovieLens-100k as a CTR task: a rating of 4 or 5 is a positive, anything lower a negative.

Features: user id, item id, the user's age band, gender, occupation and zip prefix, the movie's
first genre, genre count and release year. Split: global temporal (the first 80% of the ratings by
timestamp train, the next 10% validate, the last 10% test), which is what serving faces. LR, GBDT
and DCN-v2 side by side: test AUC, logloss, ECE before and after isotonic calibration.

    .venv/bin/python benchmarks/ranking_ml100k.py [--quick] [--data ../shared/data]
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
from _results import DATA_DIR, bench_settings, record

from recstack.data.readers import read_movielens_100k
from recstack.eval.metrics import auc, ece, logloss
from recstack.models.calibration import Isotonic
from recstack.models.gbdt import GBDTRanker
from recstack.models.lr import LogisticRanker
from recstack.train.ranking import NeuralRanker

CATEGORICAL = ["user_id", "item_id", "age_band", "gender", "occupation", "zip3", "genre", "year"]
DENSE = ["n_genres"]


def frame(folder: Path) -> pd.DataFrame:
    ml = read_movielens_100k(folder)
    users = ml.users.assign(age_band=(ml.users["age"] // 10).astype(str), zip3=ml.users["zip"].str[:3])
    items = ml.items.assign(
        genre=[g[0] if g else "none" for g in ml.items["genres"]],
        n_genres=[len(g) for g in ml.items["genres"]],
        year=ml.items["release_date"].str[-4:].fillna("unknown"),
    )
    out = ml.ratings.merge(users, on="user_id").merge(items.drop(columns=["genres"]), on="item_id")
    out["click"] = (out["rating"] >= 4).astype(np.float64)
    return out.sort_values("timestamp", kind="stable").reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="two epochs, small GBDT")
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    args = parser.parse_args()
    data = frame(args.data / "movielens-100k")
    n = len(data)
    train, valid, test = data[: int(0.8 * n)], data[int(0.8 * n) : int(0.9 * n)], data[int(0.9 * n) :]
    print(
        f"train {len(train):,}, validation {len(valid):,}, test {len(test):,}; "
        f"positives {data.click.mean():.3f}"
    )
    y_valid, y_test = valid["click"].to_numpy(), test["click"].to_numpy()
    preds: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    started = time.perf_counter()
    lr = LogisticRanker(CATEGORICAL, DENSE, c=0.3).fit(train, train["click"].to_numpy())
    preds["lr"] = (lr.predict_proba(valid), lr.predict_proba(test), time.perf_counter() - started)
    started = time.perf_counter()
    gbdt = GBDTRanker(CATEGORICAL, DENSE, rounds=100 if args.quick else 2000, num_leaves=31)
    gbdt.fit(train, train["click"].to_numpy(), valid, y_valid)
    preds["gbdt"] = (gbdt.predict_proba(valid), gbdt.predict_proba(test), time.perf_counter() - started)
    settings = bench_settings(
        {
            "RECSTACK_TRAIN__EPOCHS": "2" if args.quick else "30",
            "RECSTACK_TRAIN__PATIENCE": "3",
            "RECSTACK_TRAIN__BATCH_SIZE": "2048",
            "RECSTACK_TRAIN__LR": "0.001",
            "RECSTACK_TRAIN__SCHEDULE": "plateau",
            "RECSTACK_RANKING__EMBEDDING_DIM": "16",
            "RECSTACK_RANKING__TASKS": '{"click": 1.0}',
            "RECSTACK_RANKING__MODEL": "dcn_v2",
            "RECSTACK_RANKING__HIDDEN": "[256, 128]",
            "RECSTACK_RANKING__DROPOUT": "0.2",
            "RECSTACK_RANKING__POSITION": "none",
        }
    )
    started = time.perf_counter()
    dcn = NeuralRanker(settings, CATEGORICAL, DENSE, run_name="ml100k_dcn")
    dcn.fit(train, valid)
    preds["dcn_v2"] = (
        dcn.predict_proba(valid)[:, 0],
        dcn.predict_proba(test)[:, 0],
        time.perf_counter() - started,
    )
    for name, (p_valid, p_test, took) in preds.items():
        calibrated = Isotonic().fit(p_valid, y_valid).transform(p_test)
        figures = {
            "model": name,
            "auc": round(auc(y_test, p_test), 4),
            "logloss": round(logloss(y_test, p_test), 4),
            "ece": round(ece(y_test, p_test), 4),
            "ece_isotonic": round(ece(y_test, calibrated), 4),
            "train_s": round(took, 1),
        }
        print(figures)
        record(
            f"ranking_ml100k{' --quick' if args.quick else ''}",
            figures,
            "MovieLens-100k CTR (rating >= 4), global temporal split 80/10/10",
        )


if __name__ == "__main__":
    main()
