"""Ray as the engine, from 1 to 2 workers of a local cluster (``ray.init(num_cpus=2)``), against the
local path, in one run:

- training: the two-tower on MovieLens-100k (RecBole's random 8:1:1 split) and DCN-v2 on its
  ratings as click labels (rating >= 4), each fitted locally with one torch thread, then by Ray
  Train with 1 and 2 workers of one CPU each (the unchanged loop under DDP/gloo, the global batch
  split between the workers). Throughput is the loop's training samples per second (optimizer
  work only: no start-up, no validation); wall time is the whole fit, start-up included.
- batch inference: offline candidates (user tower on ONNX Runtime, then the top 100 in a flat
  FAISS index) for every user of a synthetic catalog, locally in one thread, then as a Ray Data
  job with 1 and 2 actors.

``train_speedup`` and ``infer_speedup``: throughput at 2 workers over 1 worker (2.0 is perfect on
2 cores; the driver and Ray's own processes share them). ``overhead_1w``: the wall time of the
two-tower fit on 1 Ray worker over the local fit's (what Ray costs where it brings nothing).

    .venv/bin/python benchmarks/scale_ray.py [--quick] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the local runs get one thread, as each worker does
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import pandas as pd
from _results import DATA_DIR, bench_settings, record

from recstack.config import ComputeConfig, Engine
from recstack.data.readers import read_movielens_100k
from recstack.data.splits import random_ratio_split
from recstack.index.retriever import TwoTowerRetriever
from recstack.models.two_tower import TwoTower
from recstack.scale.inference import candidates
from recstack.train.loop import seed_everything
from recstack.train.ranking import NeuralRanker
from recstack.train.recipes import encode_split, train_two_tower


def settings(epochs: int, engine: str, workers: int, model: str = "dcn_v2") -> object:
    return bench_settings(
        {
            "RECSTACK_TRAIN__EPOCHS": str(epochs),
            "RECSTACK_TRAIN__PATIENCE": "100",  # every epoch runs: throughput over the same work
            "RECSTACK_TRAIN__BATCH_SIZE": "1024",
            "RECSTACK_TRAIN__NUM_THREADS": "1",
            "RECSTACK_TRAIN__LR": "0.003",
            "RECSTACK_TWO_TOWER__DIM": "64",
            "RECSTACK_TWO_TOWER__HIDDEN": "[128]",
            "RECSTACK_TWO_TOWER__HISTORY": "20",
            "RECSTACK_RANKING__MODEL": model,
            "RECSTACK_RANKING__TASKS": '{"click": 1.0}',
            "RECSTACK_COMPUTE__ENGINE": engine,
            "RECSTACK_COMPUTE__WORKERS": str(workers),
        }
    )


def fit_tower(parts: list, epochs: int, engine: str, workers: int) -> tuple[float, float, float]:
    """(samples per second, wall seconds, validation recall@20)."""
    started = time.perf_counter()
    run = train_two_tower(*parts, settings(epochs, engine, workers), run_name="tower")  # type: ignore[arg-type]
    return run.fit.samples_per_s, time.perf_counter() - started, float(run.fit.best_metric or 0.0)


def fit_dcn(
    frames: tuple[pd.DataFrame, pd.DataFrame], epochs: int, engine: str, workers: int
) -> tuple[float, float, float]:
    """(samples per second, wall seconds, validation AUC)."""
    train, valid = frames
    started = time.perf_counter()
    ranker = NeuralRanker(settings(epochs, engine, workers), ["user_id", "item_id"], ["hour"], run_name="dcn")  # type: ignore[arg-type]
    fit = ranker.fit(train, valid)
    return fit.samples_per_s, time.perf_counter() - started, float(fit.best_metric or 0.0)


def ratings_frames(ratings: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = ratings.assign(
        click=(ratings["rating"] >= 4).astype(np.float32),
        hour=((ratings["timestamp"] // 3600) % 24).astype(np.float64),
        user_id=ratings["user_id"].astype(str),
        item_id=ratings["item_id"].astype(str),
    ).sort_values("timestamp", kind="stable")
    cut = int(len(frame) * 0.9)
    return frame.iloc[:cut].reset_index(drop=True), frame.iloc[cut:].reset_index(drop=True)


def inference(
    n_users: int, n_items: int, compute: ComputeConfig, folder: Path, users: list, histories: list
) -> float:
    """Seconds for the candidates of every user."""
    started = time.perf_counter()
    table = candidates(folder, users, histories, 100, compute)
    seconds = time.perf_counter() - started
    assert table.num_rows == n_users * 100, table.num_rows
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    args = parser.parse_args()
    import faiss
    import ray

    faiss.omp_set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from recstack.scale.engine import _quiet_data

    _quiet_data()
    epochs = 2 if args.quick else 6
    ratings = read_movielens_100k(args.data / "movielens-100k").ratings
    parts = list(encode_split(*random_ratio_split(ratings)))

    train: dict[str, dict[str, tuple[float, float, float]]] = {"two_tower": {}, "dcn_v2": {}}
    runs = (("local", "local", 1), ("ray_1w", "ray", 1), ("ray_2w", "ray", 2))
    for name, engine, workers in runs:
        train["two_tower"][name] = sps, wall, metric = fit_tower(parts, epochs, engine, workers)
        print(
            f"two-tower {name}: {sps:,.0f} samples/s, wall {wall:.1f} s, recall@20 {metric:.4f}", flush=True
        )
    if not args.quick:
        frames = ratings_frames(ratings)
        for name, engine, workers in runs:
            train["dcn_v2"][name] = sps, wall, metric = fit_dcn(frames, epochs, engine, workers)
            print(f"dcn-v2 {name}: {sps:,.0f} samples/s, wall {wall:.1f} s, val auc {metric:.4f}", flush=True)

    n_users, n_items = (2_000, 20_000) if args.quick else (20_000, 100_000)
    seed_everything(0)
    model = TwoTower(n_users, n_items, 64, (128,), True, None)
    folder = Path(tempfile.mkdtemp())
    user_ids, item_ids = [f"u{n}" for n in range(n_users)], [f"i{n}" for n in range(n_items)]
    TwoTowerRetriever.build(model, user_ids, item_ids, history_length=20).save(folder / "retriever")
    rng = np.random.default_rng(0)
    histories = [[item_ids[i] for i in rng.integers(0, n_items, 10)] for _ in range(n_users)]
    infer = {"local": inference(n_users, n_items, ComputeConfig(), folder, user_ids, histories)}
    for workers in (1, 2):
        compute = ComputeConfig(engine=Engine.ray, workers=workers, batch_rows=1000)
        infer[f"ray_{workers}w"] = inference(n_users, n_items, compute, folder, user_ids, histories)
    for name, seconds in infer.items():
        print(f"candidates {name}: {seconds:.1f} s, {n_users / seconds:,.0f} users/s", flush=True)

    tower = train["two_tower"]
    train_speedup = tower["ray_2w"][0] / tower["ray_1w"][0]
    infer_speedup = infer["ray_1w"] / infer["ray_2w"]
    figures: dict[str, object] = {
        "workers": 2,
        "train_speedup": round(train_speedup, 2),
        "infer_speedup": round(infer_speedup, 2),
        "overhead_1w": round(tower["ray_1w"][1] / tower["local"][1], 2),
        "train_efficiency": round(train_speedup / 2, 2),
        "infer_efficiency": round(infer_speedup / 2, 2),
        "tower_sps_local": round(tower["local"][0]),
        "tower_sps_1w": round(tower["ray_1w"][0]),
        "tower_sps_2w": round(tower["ray_2w"][0]),
        "tower_recall20_local": round(tower["local"][2], 4),
        "tower_recall20_2w": round(tower["ray_2w"][2], 4),
        "infer_users_per_s_local": round(n_users / infer["local"]),
        "infer_overhead_1w": round(infer["ray_1w"] / infer["local"], 2),
    }
    if train["dcn_v2"]:
        dcn = train["dcn_v2"]
        figures |= {
            "dcn_speedup": round(dcn["ray_2w"][0] / dcn["ray_1w"][0], 2),
            "dcn_sps_local": round(dcn["local"][0]),
            "dcn_auc_local": round(dcn["local"][2], 4),
            "dcn_auc_2w": round(dcn["ray_2w"][2], 4),
            "dcn_overhead_1w": round(dcn["ray_1w"][1] / dcn["local"][1], 2),
        }
    ray.shutdown()
    notes = (
        f"{'quick: ' if args.quick else ''}MovieLens-100k, {epochs} epochs, global batch 1024, 1 thread per "
        f"process; candidates for {n_users:,} users over {n_items:,} items (flat, k=100)"
    )
    record("scale_ray", figures, notes)


if __name__ == "__main__":
    main()
