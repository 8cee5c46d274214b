"""A cost model for 10M, 100M and 1B items and 100M users, from unit costs measured on this machine
in the same run:

- ingest: CPU seconds per event appended to the Parquet event log (validation, deduplication,
  the write), in batches of 1,000 simulated events;
- materialization: CPU seconds per training row for the 18 default feature definitions
  (DuckDB point-in-time joins over the simulated log);
- training: samples per core-second of the two-tower (MovieLens-100k) and of DCN-v2 and MMoE (its
  ratings as click labels), one torch thread;
- index: bytes per item of the flat, HNSW and IVF FAISS indexes recstack builds (64-d, saved size);
- online store: bytes per user of the feed's columnar feature state (its snapshot over the
  simulated users, default features);
- serving: CPU seconds per served request (GET /v1/recommend through the in-process API on a feed
  bundle trained on the simulator, the worker applying the log beside it).

The table's assumptions are printed with it; ``--efficiency`` is the scaling efficiency assumed for
many workers (default: the last ``train_efficiency`` that benchmarks/scale_ray.py recorded in
RESULTS.md, else 0.8).

    .venv/bin/python benchmarks/cost_model.py [--quick] [--data ../shared/data] [--efficiency X]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _results import DATA_DIR, RESULTS, bench_settings, record

ITEMS = (10_000_000, 100_000_000, 1_000_000_000)
USERS = 100_000_000
DIM = 64  # [two_tower] dim
RANK_DIM = 16  # [ranking] embedding_dim
ASSUME = {
    "positives_per_user_epoch": 50,  # retrieval samples: engaged (user, item) pairs per user per epoch
    "impressions_per_user_epoch": 500,  # ranking samples: labelled impressions per user per epoch
    "events_per_user_day": 200,  # impressions + engagements a user sends per day
    "utilization": 0.6,  # share of a core a serving process is planned to use
    "pq_bytes_per_item": 64 + 8,  # IVF-PQ with 64 one-byte codes + the int64 id (FAISS's layout)
    "adam_factor": 3,  # weights + Adam's two moments while training
}


def cpu() -> float:
    return time.process_time()


def measure_ingest_and_features(quick: bool) -> tuple[float, float, Path, object]:
    """(CPU s per ingested event, CPU s per materialized row, the log folder, the world)."""
    from recstack.config import load_settings
    from recstack.data.simulator import PopularityPolicy, Simulator, World
    from recstack.events.join import join_engagements
    from recstack.events.parquet import ParquetEventLog
    from recstack.features.offline import materialize

    root = Path(tempfile.mkdtemp())
    world = World.generate(n_users=500, n_items=1_000, n_creators=100, seed=1)
    sim = Simulator(world, seed=1, requests_per_day=20_000)
    tables = list(sim.run(PopularityPolicy(world.n_items, seed=1), 1_000 if quick else 6_000, 500))
    log = ParquetEventLog(root / "events")
    log.append_table(sim.catalog_events())
    events = sum(t.num_rows for t in tables)
    started = cpu()
    for table in tables:
        for start in range(0, table.num_rows, 1_000):
            log.append_table(table.slice(start, 1_000))
    ingest = (cpu() - started) / events
    history = log.table()
    rows = join_engagements(history).table.select(["timestamp", "user_id", "item_id", "surface", "context"])
    features = load_settings(None, {}).features
    started = cpu()
    materialize(history, rows, features)
    per_row = (cpu() - started) / rows.num_rows
    log.close()
    print(f"ingest: {events:,} events, {ingest * 1e6:.1f} us CPU an event")
    print(f"materialize: {rows.num_rows:,} rows x {len(features)} features, {per_row * 1e6:.1f} us CPU a row")
    return ingest, per_row, root, world


def measure_training(data: Path, quick: bool) -> dict[str, float]:
    """Samples per core-second (one thread) of the two-tower, DCN-v2 and MMoE."""
    import pandas as pd
    import torch

    from recstack.data.readers import read_movielens_100k
    from recstack.data.splits import random_ratio_split
    from recstack.train.ranking import NeuralRanker
    from recstack.train.recipes import encode_split, train_two_tower

    torch.set_num_threads(1)
    ratings = read_movielens_100k(data / "movielens-100k").ratings
    env = {
        "RECSTACK_TRAIN__EPOCHS": "1" if quick else "3",
        "RECSTACK_TRAIN__PATIENCE": "100",
        "RECSTACK_TRAIN__BATCH_SIZE": "1024",
        "RECSTACK_TRAIN__NUM_THREADS": "1",
        "RECSTACK_RANKING__TASKS": '{"click": 1.0, "like": 1.0}',
    }
    out = {
        "two_tower": train_two_tower(
            *encode_split(*random_ratio_split(ratings)), bench_settings(env)
        ).fit.samples_per_s
    }
    frame = ratings.assign(
        click=(ratings["rating"] >= 4).astype(np.float32),
        like=(ratings["rating"] >= 5).astype(np.float32),
        hour=((ratings["timestamp"] // 3600) % 24).astype(np.float64),
        user_id=ratings["user_id"].astype(str),
        item_id=ratings["item_id"].astype(str),
    )
    cut = int(len(frame) * 0.9)
    train, valid = frame.iloc[:cut].reset_index(drop=True), frame.iloc[cut:].reset_index(drop=True)
    for model in ("dcn_v2", "mmoe"):
        ranker = NeuralRanker(
            bench_settings(env | {"RECSTACK_RANKING__MODEL": model}), ["user_id", "item_id"], ["hour"]
        )
        out[model] = ranker.fit(pd.DataFrame(train), pd.DataFrame(valid)).samples_per_s
    for name, value in out.items():
        print(f"training {name}: {value:,.0f} samples per core-second")
    return out


def measure_index(quick: bool) -> dict[str, float]:
    from recstack.config import IndexKind
    from recstack.index.faiss_index import ItemIndex

    n = 20_000 if quick else 100_000
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    out = {}
    for kind in (IndexKind.flat, IndexKind.hnsw, IndexKind.ivf):
        folder = Path(tempfile.mkdtemp())
        ItemIndex(DIM, kind).build(vectors).save(folder)
        out[kind.value] = (folder / "index.faiss").stat().st_size / n
        shutil.rmtree(folder)
        print(f"index {kind.value}: {out[kind.value]:.0f} bytes an item ({n:,} items, {DIM}-d)")
    return out


def measure_online_state(root: Path) -> float:
    """Bytes per user of the columnar feature state after the simulated log."""
    from recstack.config import load_settings
    from recstack.events.parquet import ParquetEventLog
    from recstack.features.columnar import ColumnarFeatures, FeatureChanges
    from recstack.features.definitions import exact_us

    features = ColumnarFeatures(load_settings(None, {}).features)
    log = ParquetEventLog(root / "events")
    table = log.table()
    items: dict[str, int] = {}
    changes = FeatureChanges()
    columns = {
        c: table.column(c).to_pylist() for c in ("kind", "timestamp", "user_id", "item_id", "event_id")
    }
    for kind, stamp, user, item, event in zip(*columns.values(), strict=True):
        if item is not None and item not in items:
            items[item] = len(items)
            features.add_items(len(items))
        features.observe(kind, exact_us(stamp), user, items.get(item) if item else None, event, changes)
    meta, arrays = features.capture(len(items))
    users = len(meta["users"])
    size = (
        arrays["f_user_rows"].nbytes
        + sum(len(r) for r in meta["records"])
        + sum(len(u) for u in meta["users"])
    )
    log.close()
    print(f"online state: {users:,} users, {size / users:.0f} bytes a user")
    return size / users


def measure_serving(root: Path, world: object, quick: bool) -> float:
    """CPU seconds per GET /v1/recommend on the in-process API."""
    from fastapi.testclient import TestClient

    from recstack.events.parquet import ParquetEventLog
    from recstack.features.stores import MemoryStore
    from recstack.serving.api import Runtime, create_app
    from recstack.train.feed import train_bundle

    env = {
        "RECSTACK_TRAIN__EPOCHS": "2",
        "RECSTACK_TRAIN__BATCH_SIZE": "1024",
        "RECSTACK_RETRIEVAL__INDEX": "flat",
        "RECSTACK_EVENT_LOG__PATH": str(root / "events"),
    }
    settings = bench_settings(env)
    log = ParquetEventLog(root / "events")
    train_bundle(settings, log, root / "bundle")
    runtime = Runtime(settings, log, store=MemoryStore(), bundle_source=lambda: ("1", root / "bundle"))
    assert runtime.worker is not None
    runtime.worker.drain()
    runtime.start()
    users = [f"u{n}" for n in range(500)]
    requests = 100 if quick else 600
    with TestClient(create_app(runtime)) as client:
        for user in users[:20]:  # warm
            client.get(
                "/v1/recommend", params={"user_id": user, "n": 20}, headers={"X-API-Key": "recstack-local"}
            )
        started = cpu()
        for n in range(requests):
            response = client.get(
                "/v1/recommend",
                params={"user_id": users[n % len(users)], "n": 20},
                headers={"X-API-Key": "recstack-local"},
            )
            assert response.status_code == 200, response.text
        per_request = (cpu() - started) / requests
    runtime.close()
    print(f"serving: {per_request * 1e3:.2f} ms CPU a request (test client included)")
    return per_request


def last_efficiency() -> float | None:
    if not RESULTS.exists():
        return None
    found = None
    for line in RESULTS.read_text().splitlines():
        if "| scale_ray |" in line and "quick" not in line:
            match = re.search(r"train_efficiency=([0-9.]+)", line)
            if match:
                found = float(match.group(1))
    return found


def gb(x: float) -> str:
    return f"{x / 1e9:,.1f} GB" if x < 1e12 else f"{x / 1e12:,.2f} TB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    parser.add_argument("--efficiency", type=float, default=None)
    args = parser.parse_args()
    efficiency = args.efficiency or last_efficiency() or 0.8
    ingest, per_row, root, world = measure_ingest_and_features(args.quick)
    train = measure_training(args.data, args.quick)
    index = measure_index(args.quick)
    user_bytes = measure_online_state(root)
    serve_cpu = measure_serving(root, world, args.quick)

    a = ASSUME
    print("\nAssumptions:", json.dumps(a), f"scaling efficiency {efficiency:.2f} at every worker count")
    pq, adam = a["pq_bytes_per_item"], a["adam_factor"]
    print(
        f"\n| items | flat index | HNSW index | IVF-PQ index (assumed {pq} B) "
        f"| two-tower tables (training, x{adam}) | ranker id tables |"
    )
    print("|---|---|---|---|---|---|")
    for items in ITEMS:
        tables = (items + USERS) * DIM * 4
        flat, hnsw = gb(items * index["flat"]), gb(items * index["hnsw"])
        print(
            f"| {items:,} | {flat} | {hnsw} | {gb(items * pq)} "
            f"| {gb(tables)} ({gb(tables * adam)}) | {gb((items + USERS) * RANK_DIM * 4)} |"
        )
    retrieval_samples = USERS * a["positives_per_user_epoch"]
    ranking_samples = USERS * a["impressions_per_user_epoch"]
    workers = (1, 8, 64, 256)
    print(
        f"\nTraining hours per epoch ({USERS:,} users; {retrieval_samples:,} retrieval and "
        f"{ranking_samples:,} ranking samples), one core per worker:"
    )
    print("| model | " + " | ".join(f"{w} workers" for w in workers) + " |")
    print("|---|" + "---|" * len(workers))
    hours: dict[str, dict[int, float]] = {}
    for model, samples in (
        ("two_tower", retrieval_samples),
        ("dcn_v2", ranking_samples),
        ("mmoe", ranking_samples),
    ):
        hours[model] = {
            w: samples / (train[model] * w * (efficiency if w > 1 else 1.0)) / 3600 for w in workers
        }
        print(f"| {model} | " + " | ".join(f"{hours[model][w]:,.1f}" for w in workers) + " |")
    print("\nCores:")
    rates = (1_000, 10_000, 100_000)
    cores = {r: r * serve_cpu / a["utilization"] for r in rates}
    print("| requests/s | " + " | ".join(f"{r:,}" for r in rates) + " |")
    print("|---|" + "---|" * len(rates))
    print("| serving cores | " + " | ".join(f"{cores[r]:,.0f}" for r in rates) + " |")
    events_s = USERS * a["events_per_user_day"] / 86_400
    print(f"| ingest cores, {events_s:,.0f} events/s | {events_s * ingest:,.0f} |")
    daily_rows = USERS * a["impressions_per_user_epoch"] / 30  # an epoch's impressions over 30 days
    core_hours = daily_rows * per_row / 3600
    print(f"| materialization core-hours, one day's {daily_rows:,.0f} rows | {core_hours:,.0f} |")
    print(
        f"\nOnline store: {user_bytes:.0f} bytes a user -> {gb(USERS * user_bytes)} for {USERS:,} users "
        "(one copy, no replication)"
    )
    shutil.rmtree(root, ignore_errors=True)
    figures = {
        "ingest_us_per_event": round(ingest * 1e6, 1),
        "materialize_us_per_row": round(per_row * 1e6, 1),
        "tower_samples_per_core_s": round(train["two_tower"]),
        "dcn_samples_per_core_s": round(train["dcn_v2"]),
        "mmoe_samples_per_core_s": round(train["mmoe"]),
        "flat_bytes_per_item": round(index["flat"]),
        "hnsw_bytes_per_item": round(index["hnsw"]),
        "ivf_bytes_per_item": round(index["ivf"]),
        "online_bytes_per_user": round(user_bytes),
        "serve_cpu_ms_per_request": round(serve_cpu * 1e3, 2),
        "hnsw_gb_1b_items": round(1e9 * index["hnsw"] / 1e9, 1),
        "tower_epoch_h_64w": round(hours["two_tower"][64], 2),
        "dcn_epoch_h_64w": round(hours["dcn_v2"][64], 2),
        "serving_cores_10k_rps": round(cores[10_000]),
        "efficiency": efficiency,
    }
    record(
        "cost_model",
        figures,
        ("quick: " if args.quick else "")
        + "unit costs measured in this run; assumptions in the script's output",
    )


if __name__ == "__main__":
    main()
