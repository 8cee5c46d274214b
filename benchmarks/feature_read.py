"""Online feature read latency: one user and 500 candidate items, every default feature, as arrays.

The online state is built from simulated events; then requests with a random user and 500 random
candidates are timed.

- ``feed``: what the served feed reads, the worker state's columnar features (``FeedState.features``,
  built by the feed worker from the log; in the Redis topology each API process holds the same
  state, synced from the worker's snapshots), every default feature but ``retrieval_score`` (the
  towers' dot product, computed at the request). The clock moves 5 ms a request and each request's
  first 20 candidates count their impressions, as served; ``feed_cold`` times the same reads with
  the item totals cache emptied before each (what a read costs after the window moved on a bucket).
- ``memory``: the standalone online store (``OnlineFeatures``, ``[online] backend = "memory"``).
- ``redis``: the standalone store in Redis: every request fetches the 501 entity records (MGET)
  and decodes them (the in-process cache is kept at 1 record so that each read goes to Redis), as
  a serving replica with a cold cache would.

    .venv/bin/python benchmarks/feature_read.py [--quick] [--store feed|memory|redis|all]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _results import record

from recstack.config import load_settings
from recstack.data.simulator import RandomPolicy, Simulator, World
from recstack.events.parquet import ParquetEventLog
from recstack.features.online import OnlineFeatures
from recstack.features.stores import MemoryStore, RedisStore
from recstack.features.stream import Ingestor

CANDIDATES = 500


def measure_feed(requests: int, events: int) -> dict[str, float]:
    from recstack.serving.state import FeedState
    from recstack.serving.worker import FeedWorker

    settings = load_settings(None, {})
    world = World.generate(n_users=20_000, n_items=20_000, seed=1)
    sim = Simulator(world, seed=2, requests_per_day=100_000)
    state = FeedState.for_settings(settings)
    with tempfile.TemporaryDirectory() as tmp:
        log = ParquetEventLog(Path(tmp) / "events")
        log.append_table(sim.catalog_events())
        for table in sim.run(RandomPolicy(world.n_items, seed=3), events // 12, batch_requests=2_000):
            log.append_table(table)
        FeedWorker(log, state, MemoryStore()).drain(10_000)
        log.close()
    rng = np.random.default_rng(0)
    now, created = sim.now_us, state.created_us.values
    warm, cold = [], []
    for n in range(requests + 50):
        user = f"u{rng.integers(world.n_users)}"
        items = np.array(
            [state.item_index[f"i{i}"] for i in rng.choice(world.n_items, CANDIDATES, replace=False)]
        )
        now += 5_000  # 200 requests a second
        timings = []
        table = state.features.items
        for forget in (False, True):  # the totals cache as serving finds it, then emptied
            if forget:
                kept = table.totals.copy(), table.totals_at.copy()
                table.forget(np.arange(table.n))
            started = time.perf_counter_ns()
            values = state.features.read(user, items, now, "feed", {"device": "ios"}, created)
            timings.append((time.perf_counter_ns() - started) / 1000)
        table.totals, table.totals_at = kept  # as it was after the first read
        if n >= 50:
            warm.append(timings[0])
            cold.append(timings[1])
        assert values["item_ctr_1d"].shape == (CANDIDATES,)
        # the 20 served count their impressions, as the API records them
        state.record_served(user, items[:20].tolist(), f"r{n}", now)
    p, c = np.percentile(warm, [50, 99]), np.percentile(cold, [50, 99])
    print(
        f"feed: p50 {p[0]:.0f} us, p99 {p[1]:.0f} us for {CANDIDATES} candidates x "
        f"{len(settings.features) - 1} features ({len(warm)} requests, {state.n_items:,} items, "
        f"{len(state.users):,} users); with the totals cache emptied before each read: p50 {c[0]:.0f} us, "
        f"p99 {c[1]:.0f} us"
    )
    return {
        "p50_us": round(float(p[0])),
        "p99_us": round(float(p[1])),
        "cold_p50_us": round(float(c[0])),
        "cold_p99_us": round(float(c[1])),
    }


def measure(store_name: str, requests: int, events: int) -> dict[str, float]:
    settings = load_settings(None, {})
    world = World.generate(n_users=20_000, n_items=20_000, seed=1)
    sim = Simulator(world, seed=2, requests_per_day=100_000)
    store = MemoryStore() if store_name == "memory" else RedisStore(prefix="recstack:bench:f:")
    if isinstance(store, RedisStore):
        store.drop()
    with tempfile.TemporaryDirectory() as tmp:
        online = OnlineFeatures(settings.features, store)
        ingestor = Ingestor(ParquetEventLog(Path(tmp)), online)
        ingestor.ingest_table(sim.catalog_events())
        for table in sim.run(RandomPolicy(world.n_items, seed=3), events // 12, batch_requests=2_000):
            ingestor.ingest_table(table)
        ingestor.flush()
    reader = online if store_name == "memory" else OnlineFeatures(settings.features, store, cache_size=1)
    rng = np.random.default_rng(0)
    now = sim.now_us
    times = []
    for n in range(requests + 50):
        user = f"u{rng.integers(world.n_users)}"
        items = [f"i{i}" for i in rng.choice(world.n_items, CANDIDATES, replace=False)]
        started = time.perf_counter_ns()
        values = reader.read(user, items, now, "feed", {"device": "ios"})
        elapsed = time.perf_counter_ns() - started
        if n >= 50:  # warm-up excluded
            times.append(elapsed / 1000)
        assert values["item_ctr_1d"].shape == (CANDIDATES,)
    if isinstance(store, RedisStore):
        store.drop()
    p = np.percentile(times, [50, 99])
    print(
        f"{store_name}: p50 {p[0]:.0f} us, p99 {p[1]:.0f} us for {CANDIDATES} candidates x "
        f"{len(settings.features)} features ({len(times)} requests)"
    )
    return {"p50_us": round(float(p[0])), "p99_us": round(float(p[1]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--store", choices=["feed", "memory", "redis", "all"], default="all")
    args = parser.parse_args()
    requests, events = (300, 100_000) if args.quick else (2_000, 1_000_000)
    stores = ["feed", "memory", "redis"] if args.store == "all" else [args.store]
    figures: dict[str, object] = {"candidates": CANDIDATES}
    for name in stores:
        result = measure_feed(requests, events) if name == "feed" else measure(name, requests, events)
        figures[f"{name}_p50_us"] = result["p50_us"]
        figures[f"{name}_p99_us"] = result["p99_us"]
        if name == "feed":
            figures["feed_cold_p99_us"] = result["cold_p99_us"]
    figures["p99_us"] = figures[f"{stores[0]}_p99_us"]
    record(
        "feature_read" + (" --quick" if args.quick else ""),
        {
            "candidates": CANDIDATES,
            "p99_us": figures["p99_us"],
            **{k: v for k, v in figures.items() if k not in ("candidates", "p99_us")},
        },
        "p99_us: the first store measured (feed: the served feed's columnar state; memory and redis: "
        "the standalone [online] store)",
    )


if __name__ == "__main__":
    main()
