"""The spine's figures: event-log ingest and join throughput, and MF-BPR on MovieLens-100k.

Ingest: synthetic feed events (dicts, as a client sends them) validated and appended to the
embedded Parquet log in batches of 10,000; join: engagements joined back to impressions in DuckDB.
Training: MF with BPR through the one training loop on MovieLens-100k with RecBole's protocol
(random 8:1:1 per user, full ranking, training and validation items masked); RecBole's documented
BPR run on this protocol reports Recall@10 0.2523, NDCG@10 0.2920 (tuned; ours is untuned defaults).

    .venv/bin/python benchmarks/spine.py [--quick] [--data ../shared/data]
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

from _results import DATA_DIR, record

from recstack.config import load_settings
from recstack.data.readers import read_movielens_100k
from recstack.data.splits import random_ratio_split
from recstack.demo import SyntheticWorld, synthetic_events
from recstack.events.base import chunked
from recstack.events.join import join_engagements
from recstack.events.parquet import ParquetEventLog
from recstack.train.recipes import encode_split, train_mf_bpr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a run under a minute")
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    args = parser.parse_args()

    world = SyntheticWorld(requests=5_000 if args.quick else 40_000)
    events = synthetic_events(world)
    with tempfile.TemporaryDirectory() as tmp:
        log = ParquetEventLog(Path(tmp) / "log")
        started = time.perf_counter()
        for chunk in chunked(events, 10_000):
            log.append(chunk)
        ingest_s = time.perf_counter() - started
        table = log.table()
        started = time.perf_counter()
        joined = join_engagements(table)
        join_s = time.perf_counter() - started
    figures: dict[str, object] = {
        "events": len(events),
        "ingest_events_per_s": round(len(events) / ingest_s),
        "join_impressions_per_s": round(joined.table.num_rows / join_s),
    }
    print(
        f"ingest {figures['ingest_events_per_s']} events/s; join {figures['join_impressions_per_s']} rows/s"
    )

    ml = args.data / "movielens-100k"
    if ml.exists():
        settings = load_settings(
            None,
            {
                "RECSTACK_TRACKING__ENABLED": "false",
                "RECSTACK_TRAIN__PROGRESS": "false",
                "RECSTACK_TRAIN__BATCH_SIZE": "1024",
                "RECSTACK_TRAIN__LR": "0.005",
                "RECSTACK_TRAIN__EPOCHS": "8" if args.quick else "60",
                "RECSTACK_TRAIN__PATIENCE": "5",
                "RECSTACK_PATHS__STATE_DIR": tempfile.mkdtemp(),
            },
        )
        train, valid, test = encode_split(*random_ratio_split(read_movielens_100k(ml).ratings))
        run = train_mf_bpr(train, valid, test, settings, run_name="bench_mf_bpr")
        figures |= {
            "ml100k_mf_bpr_recall@10": round(run.test_metrics["recall@10"], 4),
            "ml100k_mf_bpr_ndcg@10": round(run.test_metrics["ndcg@10"], 4),
            "train_samples_per_s": round(run.fit.samples_per_s),
            "best_epoch": run.fit.best_epoch,
        }
    else:
        print(f"MovieLens-100k not found at {ml}: training figures skipped")
    record(
        "spine" + (" --quick" if args.quick else ""),
        figures,
        "2-core box; ingest includes pydantic validation and Parquet writes",
    )


if __name__ == "__main__":
    main()
