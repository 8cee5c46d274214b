"""How the typed ranker options compare, measured: DCN-v2 on recstack's Frappe split (see
ranking_frappe.py), one option changed at a time from the base configuration of that benchmark
(embedding 10, 3 cross layers, parallel deep [400, 400, 400], BatchNorm, ReLU, dropout 0.2, plateau
LR). Each variant picks its epoch on validation; test AUC and logloss are reported once.

    .venv/bin/python benchmarks/ranking_options.py [--quick] [--data ../shared/data]
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
from _results import DATA_DIR, record
from ranking_frappe import DCN, FIELDS, settings_for

from recstack.data.readers import read_frappe
from recstack.data.splits import frappe_split
from recstack.eval.metrics import auc, logloss
from recstack.train.ranking import NeuralRanker

VARIANTS: dict[str, dict[str, str]] = {
    "base (BatchNorm, ReLU)": {},
    "LayerNorm": {"RECSTACK_RANKING__NORM": "layer"},
    "no norm": {"RECSTACK_RANKING__NORM": "none"},
    "GELU": {"RECSTACK_RANKING__ACTIVATION": "gelu"},
    "embedding 32": {"RECSTACK_RANKING__EMBEDDING_DIM": "32"},
    "grad clip 1.0": {"RECSTACK_TRAIN__GRAD_CLIP": "1.0"},
    "embedding L2 1e-5": {"RECSTACK_RANKING__EMBEDDING_L2": "0.00001"},
    "stacked": {"RECSTACK_RANKING__STRUCTURE": "stacked"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="two epochs, three variants")
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    args = parser.parse_args()
    frappe = read_frappe(args.data / "frappe_x1_partial")
    train, valid, test = frappe_split(frappe.valid, frappe.test)
    for frame in (train, valid, test):
        frame["click"] = frame["label"].astype(np.float64)
    y = test["click"].to_numpy()
    variants = dict(list(VARIANTS.items())[:3]) if args.quick else VARIANTS
    for name, change in variants.items():
        ranker = NeuralRanker(settings_for(DCN | change, 2 if args.quick else 40, 4096), FIELDS)
        started = time.perf_counter()
        fit = ranker.fit(train, valid)
        took = time.perf_counter() - started
        p = ranker.predict_proba(test)[:, 0]
        figures = {
            "variant": name.replace(" ", "_"),
            "auc": round(auc(y, p), 4),
            "logloss": round(logloss(y, p), 4),
            "best_epoch": fit.best_epoch,
            "train_s": round(took, 1),
            "samples_per_s": round(fit.samples_per_s),
        }
        print(figures, flush=True)
        record(
            f"ranking_options{' --quick' if args.quick else ''}",
            figures,
            "DCN-v2 on recstack's Frappe split, one option changed from the base",
        )


if __name__ == "__main__":
    main()
