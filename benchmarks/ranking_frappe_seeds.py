"""Is the DCN-v2 AUC gap to FuxiCTR larger than seed noise? Both trained with several seeds on
recstack's Frappe split (the configuration and protocol of ``ranking_frappe.py``); reports each
side's mean and standard deviation and the mean paired difference with a t interval.

    .venv/bin/python benchmarks/ranking_frappe_seeds.py [--seeds 3] [--quick]

Ends with ``RESULT auc_mean=<x> peer_auc_mean=<x> diff=<x> diff_ci_low=<x> diff_ci_high=<x>``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import DATA_DIR, record
from ranking_frappe import DCN, FIELDS, ensure_peer, run_peer, settings_for

from recstack.data.readers import read_frappe
from recstack.data.splits import frappe_split
from recstack.eval.metrics import auc
from recstack.train.ranking import NeuralRanker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="two seeds of two epochs")
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    args = parser.parse_args()
    seeds = list(range(1, (2 if args.quick else args.seeds) + 1))
    epochs = 2 if args.quick else 40
    frappe = read_frappe(args.data / "frappe_x1_partial")
    train, valid, test = frappe_split(frappe.valid, frappe.test)
    frames = {"train": train, "valid": valid, "test": test}
    for frame in frames.values():
        frame["click"] = frame["label"].astype(np.float64)
    python = ensure_peer()
    if python is None:
        raise SystemExit("the FuxiCTR peer environment could not be created")
    ours, theirs = [], []
    for seed in seeds:
        env = DCN | {"RECSTACK_TRAIN__SEED": str(seed)}
        ranker = NeuralRanker(settings_for(env, epochs, 4096), FIELDS, run_name=f"frappe_dcn_seed{seed}")
        ranker.fit(train, valid)
        ours.append(auc(test["label"].to_numpy(np.float64), ranker.predict_proba(test)[:, 0]))
        peer = run_peer(python, frames, epochs, seed)
        if peer is None:
            raise SystemExit("the peer failed")
        theirs.append(peer["auc"])
        print(f"seed {seed}: recstack {ours[-1]:.4f}, FuxiCTR {theirs[-1]:.4f}")
    diff = np.asarray(ours) - np.asarray(theirs)
    half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else 0.0
    print(
        f"recstack {np.mean(ours):.4f} ± {np.std(ours, ddof=1):.4f}, FuxiCTR {np.mean(theirs):.4f} ± "
        f"{np.std(theirs, ddof=1):.4f}; paired difference {diff.mean():+.4f} "
        f"[{diff.mean() - half:+.4f}, {diff.mean() + half:+.4f}] (95% t interval, {len(seeds)} seeds)"
    )
    quick = " --quick" if args.quick else ""
    record(
        f"ranking_frappe_seeds{quick}",
        {
            "seeds": len(seeds),
            "auc_mean": round(float(np.mean(ours)), 4),
            "auc_sd": round(float(np.std(ours, ddof=1)), 4),
            "peer_auc_mean": round(float(np.mean(theirs)), 4),
            "peer_auc_sd": round(float(np.std(theirs, ddof=1)), 4),
            "diff": round(float(diff.mean()), 4),
            "diff_ci_low": round(float(diff.mean() - half), 4),
            "diff_ci_high": round(float(diff.mean() + half), 4),
        },
        "recstack Frappe split (pooled BARS valid+test, seed 2026, 70/10/20); DCN-v2 as in ranking_frappe.py",
    )


if __name__ == "__main__":
    main()
