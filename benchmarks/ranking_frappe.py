"""CTR ranking on Frappe: LR, GBDT, DCN-v2, MMoE and PLE side by side, calibration, ONNX serving
cost, and DCN-v2 against FuxiCTR's on the same split and configuration.

Data: only the BARS validation and test files of Frappe are here, so recstack's fixed split pools
them (86,582 rows), shuffles with seed 2026 and cuts 70 / 10 / 20 (``recstack.data.splits.
frappe_split``). These figures do not compare with BARS's published Frappe figures.

Protocol: each model picks its epoch (or boosting rounds) on validation AUC; calibrators (Platt,
isotonic) are fitted on the validation predictions; test is scored once. Training time is wall
clock on this machine (2 threads). The peer, FuxiCTR 2.3.10, runs in its own virtual environment
(``.bench/fuxictr``, created on first use) with the same DCN-v2 (embedding 10, 3 cross layers,
parallel deep [400, 400, 400], batch norm, dropout 0.2, Adam 1e-3, batch 4096, learning rate cut
tenfold after a validation without gain, early stop after 3) assembled from its public blocks (its
PyPI wheel has no model zoo), on the same rows, fed from memory (not through its Ray loader).

    .venv/bin/python benchmarks/ranking_frappe.py [--quick] [--data ../shared/data] [--no-peer]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np
import pandas as pd
import torch
from _results import DATA_DIR, bench_settings, peer_env, record

from recstack.data.readers import FRAPPE_FIELDS, read_frappe
from recstack.data.splits import frappe_split
from recstack.eval.metrics import auc, ece, logloss, normalized_entropy
from recstack.models.calibration import Isotonic, Platt, reliability_plot
from recstack.models.gbdt import GBDTRanker
from recstack.models.lr import LogisticRanker
from recstack.servables.ranker import OnnxRanker
from recstack.train.ranking import NeuralRanker

HERE = Path(__file__).resolve().parent
PEER_VENV = HERE.parent / ".bench" / "fuxictr"
FIELDS = list(FRAPPE_FIELDS)
DCN = {
    "RECSTACK_RANKING__MODEL": "dcn_v2",
    "RECSTACK_RANKING__TASKS": '{"click": 1.0}',
    "RECSTACK_RANKING__EMBEDDING_DIM": "10",
    "RECSTACK_RANKING__CROSS_LAYERS": "3",
    "RECSTACK_RANKING__STRUCTURE": "parallel",
    "RECSTACK_RANKING__HIDDEN": "[400, 400, 400]",
    "RECSTACK_RANKING__NORM": "batch",
    "RECSTACK_RANKING__DROPOUT": "0.2",
}


def settings_for(model_env: dict[str, str], epochs: int, batch: int) -> Any:
    return bench_settings(
        {
            "RECSTACK_TRAIN__EPOCHS": str(epochs),
            "RECSTACK_TRAIN__PATIENCE": "3",
            "RECSTACK_TRAIN__BATCH_SIZE": str(batch),
            "RECSTACK_TRAIN__LR": "0.001",
            "RECSTACK_TRAIN__SCHEDULE": "plateau",
            "RECSTACK_RANKING__POSITION": "none",
        }
        | model_env,
    )


def evaluate(y_valid: np.ndarray, p_valid: np.ndarray, y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    platt = Platt().fit(p_valid, y_valid).transform(p)
    iso = Isotonic().fit(p_valid, y_valid).transform(p)
    return {
        "auc": auc(y, p),
        "logloss": logloss(y, p),
        "ne": normalized_entropy(y, p),
        "ece": ece(y, p),
        "ece_platt": ece(y, platt),
        "ece_isotonic": ece(y, iso),
        "logloss_platt": logloss(y, platt),
    }


def ensure_peer() -> Path | None:
    return peer_env(PEER_VENV, [["fuxictr==2.3.10", "torch==2.13.0", "polars<2"]])


def run_peer(
    python: Path, split: dict[str, pd.DataFrame], epochs: int, seed: int = 2026
) -> dict[str, float] | None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, frame in split.items():
            np.savez(
                Path(tmp) / f"{name}.npz", x=frame[FIELDS].to_numpy(np.int64), y=frame["label"].to_numpy()
            )
        done = subprocess.run(
            [str(python), str(HERE / "peers" / "fuxictr_dcnv2.py"), tmp, str(epochs), str(seed)],
            capture_output=True,
            text=True,
            env=os.environ | {"OMP_NUM_THREADS": "2"},
        )
        if done.returncode != 0:
            print(f"peer failed:\n{done.stderr[-3000:]}")
            return None
        out: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
        return out


def inference_cost(ranker: NeuralRanker, frame: pd.DataFrame, folder: Path) -> dict[str, float]:
    """Microseconds per candidate at batch 500: ONNX Runtime (1 thread) and eager PyTorch."""
    batch = frame.head(500)
    served = OnnxRanker(ranker.export(folder), threads=1)
    encoded = served.encoder.transform(batch)
    assert ranker.model is not None
    model = ranker.model.eval()
    ids, values = torch.from_numpy(encoded.sparse), torch.from_numpy(encoded.dense)
    torch.set_num_threads(1)
    timings: dict[str, float] = {}
    for name, call in (
        ("onnx", lambda: served.score_encoded(encoded)),
        ("eager", lambda: model(ids, values)),
    ):
        with torch.no_grad():
            for _ in range(20):
                call()
            started = time.perf_counter()
            rounds = 200
            for _ in range(rounds):
                call()
        timings[f"{name}_us_per_candidate"] = (time.perf_counter() - started) / rounds / len(batch) * 1e6
    torch.set_num_threads(2)
    parity = np.abs(served.score(batch)[:, 0] - ranker.predict_proba(batch)[:, 0]).max()
    timings["onnx_max_abs_diff"] = float(parity)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="two epochs, small GBDT, no MMoE/PLE")
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    parser.add_argument("--no-peer", action="store_true")
    args = parser.parse_args()
    frappe = read_frappe(args.data / "frappe_x1_partial")
    train, valid, test = frappe_split(frappe.valid, frappe.test)
    print(f"Frappe (recstack split): train {len(train):,}, validation {len(valid):,}, test {len(test):,}")
    y_train, y_valid, y_test = (f["label"].to_numpy(np.float64) for f in (train, valid, test))
    frames = {"train": train, "valid": valid, "test": test}
    for frame in frames.values():
        frame["click"] = frame["label"].astype(np.float64)
    epochs = 2 if args.quick else 40
    rows: dict[str, dict[str, float]] = {}
    preds: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    started = time.perf_counter()
    lr = LogisticRanker(FIELDS, crosses=True, hash_bits=18, c=0.5).fit(train, y_train)
    rows["lr"] = {"train_s": time.perf_counter() - started}
    preds["lr"] = (lr.predict_proba(valid), lr.predict_proba(test))

    started = time.perf_counter()
    gbdt = GBDTRanker(FIELDS, rounds=100 if args.quick else 2000).fit(train, y_train, valid, y_valid)
    rows["gbdt"] = {"train_s": time.perf_counter() - started}
    preds["gbdt"] = (gbdt.predict_proba(valid), gbdt.predict_proba(test))

    neural = {"dcn_v2": DCN}
    if not args.quick:
        multi = {"RECSTACK_RANKING__EMBEDDING_DIM": "10", "RECSTACK_RANKING__EXPERT_HIDDEN": "[256, 128]"}
        neural["mmoe"] = multi | {"RECSTACK_RANKING__MODEL": "mmoe", "RECSTACK_RANKING__EXPERTS": "4"}
        neural["ple"] = multi | {"RECSTACK_RANKING__MODEL": "ple", "RECSTACK_RANKING__EXPERTS": "2"}
    dcn: NeuralRanker | None = None
    for name, env in neural.items():
        ranker = NeuralRanker(settings_for(env, epochs, 4096), FIELDS, run_name=f"frappe_{name}")
        started = time.perf_counter()
        fit = ranker.fit(train, valid)
        rows[name] = {
            "train_s": time.perf_counter() - started,
            "samples_per_s": fit.samples_per_s,
            "best_epoch": fit.best_epoch,
        }
        preds[name] = (ranker.predict_proba(valid)[:, 0], ranker.predict_proba(test)[:, 0])
        if name == "dcn_v2":
            dcn = ranker
    for name, (p_valid, p_test) in preds.items():
        rows[name] |= evaluate(y_valid, p_valid, y_test, p_test)

    assert dcn is not None
    with tempfile.TemporaryDirectory() as tmp:
        cost = inference_cost(dcn, test, Path(tmp))
    figures = HERE / "figures"
    figures.mkdir(exist_ok=True)
    reliability_plot(
        {
            "DCN-v2": (y_test, preds["dcn_v2"][1]),
            "DCN-v2 + isotonic": (
                y_test,
                Isotonic().fit(preds["dcn_v2"][0], y_valid).transform(preds["dcn_v2"][1]),
            ),
            "GBDT": (y_test, preds["gbdt"][1]),
        },
        figures / "frappe_reliability.png",
    )

    peer: dict[str, float] | None = None
    if not args.no_peer and (python := ensure_peer()) is not None:
        peer = run_peer(python, frames, epochs)

    print(
        f"\n{'model':8s} {'AUC':>7s} {'logloss':>8s} {'NE':>6s} {'ECE':>7s} "
        f"{'ECE Platt':>9s} {'ECE iso':>8s} {'train s':>8s}"
    )
    for name, r in rows.items():
        print(
            f"{name:8s} {r['auc']:7.4f} {r['logloss']:8.4f} {r['ne']:6.3f} {r['ece']:7.4f} "
            f"{r['ece_platt']:9.4f} {r['ece_isotonic']:8.4f} {r['train_s']:8.1f}"
        )
    if peer:
        print(
            f"FuxiCTR DCN-v2: AUC {peer['auc']:.4f} logloss {peer['logloss']:.4f} "
            f"{peer['samples_per_s']:,.0f} samples/s"
        )
    print(
        f"DCN-v2 serving at batch 500: ONNX Runtime {cost['onnx_us_per_candidate']:.2f} us/candidate, "
        f"eager PyTorch {cost['eager_us_per_candidate']:.2f} us/candidate; max |ONNX - eager| "
        f"{cost['onnx_max_abs_diff']:.1e}"
    )
    quick = " --quick" if args.quick else ""
    for name, r in rows.items():
        if name == "dcn_v2":
            continue
        record(
            f"ranking_frappe{quick}",
            {"model": name} | {k: round(v, 4) for k, v in r.items()},
            "recstack Frappe split (pooled BARS valid+test, seed 2026, 70/10/20); not comparable to BARS",
        )
    d = rows["dcn_v2"]
    record(
        f"ranking_frappe{quick}",
        {
            "auc": round(d["auc"], 4),
            "peer_auc": round(peer["auc"], 4) if peer else "n/a",
            "samples_per_s": round(d["samples_per_s"]),
            "peer_samples_per_s": round(peer["samples_per_s"]) if peer else "n/a",
            "logloss": round(d["logloss"], 4),
            "peer_logloss": round(peer["logloss"], 4) if peer else "n/a",
            "ece": round(d["ece"], 4),
            "ece_isotonic": round(d["ece_isotonic"], 4),
            "train_s": round(d["train_s"], 1),
            "onnx_us_per_candidate": round(cost["onnx_us_per_candidate"], 2),
            "eager_us_per_candidate": round(cost["eager_us_per_candidate"], 2),
        },
        "DCN-v2 vs FuxiCTR 2.3.10 DCN-v2, same split and configuration; batch 500 for serving cost",
    )


if __name__ == "__main__":
    main()
