"""Ingest throughput and memory: simulated events into the event log plus the online feature updates
they cause, then offline point-in-time materialization of training rows over the same log.

The simulator generates events in batches (generation is not timed); each batch goes through the
bulk path (column-wise validation, idempotent append to day-partitioned Parquet) and then updates the
default feature set (16 features: windowed CTRs, counters, recencies, last-N, attributes, context).
Resident memory is sampled after every batch. Then a sample of impressions is materialized with
DuckDB ASOF joins against the whole log.

    .venv/bin/python benchmarks/ingest.py [--quick] [--events N] [--store memory|redis|sqlite]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pyarrow.compute as pc
from _results import record, rss_mb

from recstack.config import Settings, load_settings
from recstack.data.simulator import RandomPolicy, Simulator, World
from recstack.events.parquet import ParquetEventLog
from recstack.features.offline import materialize
from recstack.features.stores import RedisStore
from recstack.features.stream import Ingestor, open_online


def run(settings: Settings, events_target: int, root: Path) -> dict[str, object]:
    world = World.generate(n_users=50_000, n_items=100_000, seed=1)
    sim = Simulator(world, seed=2, requests_per_day=200_000)
    log = ParquetEventLog(root / "log")
    store = None
    online = open_online(settings)
    if isinstance(online.store, RedisStore):
        store = online.store
        store.drop()
    ingestor = Ingestor(log, online)
    ingestor.ingest_table(sim.catalog_events())
    policy = RandomPolicy(world.n_items, seed=3)
    busy, done, samples = 0.0, 0, []
    requests = events_target // 12 + 1  # about 12 events per request of 10 impressions
    for table in sim.run(policy, requests, batch_requests=2_000):
        started = time.perf_counter()
        result = ingestor.ingest_table(table)
        busy += time.perf_counter() - started
        assert not result.rejected, result.rejected[:3]
        done += table.num_rows
        samples.append((done, rss_mb()))
        if done >= events_target:
            break
    started = time.perf_counter()
    ingestor.flush()
    busy += time.perf_counter() - started
    tenth = next(mb for n, mb in samples if n >= done // 10)
    half = next(mb for n, mb in samples if n >= done // 2)
    peak = max(mb for _, mb in samples)
    print(
        f"ingested {done:,} events in {busy:.1f}s: {done / busy:,.0f} events/s; RSS at 10% {tenth:.0f} MB, "
        f"at 50% {half:.0f} MB, peak {peak:.0f} MB, end {samples[-1][1]:.0f} MB; late dropped "
        f"{online.late_dropped}; dedupe index {done * 8 / 2**20:.0f} MB (8 bytes an event id)"
    )

    # offline: the last impressions of the log, every feature, point in time against the whole log
    events = log.table()
    impressions = events.filter(pc.equal(events.column("kind"), "impression"))
    rows = impressions.slice(max(impressions.num_rows - 1_000_000, 0))
    started = time.perf_counter()
    out = materialize(events, rows, settings.features)
    took = time.perf_counter() - started
    print(
        f"materialized {out.num_rows:,} rows x {len(settings.features)} features over {events.num_rows:,} "
        f"events in {took:.1f}s"
    )
    if store is not None:
        store.drop()
    return {
        "events_per_s": round(done / busy),
        "materialize_rows_per_s": round(out.num_rows / took),
        "events": done,
        "rss_mb_at_10pct": round(tenth),
        "rss_mb_at_50pct": round(half),
        "peak_rss_mb": round(peak),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="300k events, under a minute")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--store", choices=["memory", "redis", "sqlite"], default="memory")
    args = parser.parse_args()
    target = 300_000 if args.quick else args.events
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            None, {"RECSTACK_ONLINE__BACKEND": args.store, "RECSTACK_PATHS__STATE_DIR": tmp}
        )
        figures = run(settings, target, Path(tmp))
    record(
        "ingest" + (" --quick" if args.quick else ""),
        {**figures, "store": args.store},
        "Parquet log (bulk path) + online features (16 default); generation not timed",
    )


if __name__ == "__main__":
    main()
