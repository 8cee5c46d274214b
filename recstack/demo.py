"""``recstack demo``: the spine end to end on embedded defaults (no data, no services).

It generates a small synthetic feed history (users and items with latent tastes, served lists with
positions, clicks that depend on taste and on a position-dependent examination curve), ingests it
into the Parquet event log (showing rejection and idempotency), joins clicks back to impressions,
trains matrix factorization with BPR through the one training loop (tracked in MLflow on SQLite),
and reports full-ranking metrics beside a popularity baseline. ``--data`` switches to
MovieLens-100k. The closed-loop playground of later milestones grows from here.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from recstack.config import Settings
from recstack.data.readers import read_movielens_100k
from recstack.data.splits import leave_last_out, random_ratio_split
from recstack.eval.metrics import full_ranking_eval
from recstack.events.join import join_engagements
from recstack.events.parquet import ParquetEventLog
from recstack.models.baselines import Popularity
from recstack.train.recipes import encode_split, train_mf_bpr

EXAMINATION = (1.0, 0.8, 0.65, 0.55, 0.47, 0.41, 0.36, 0.32, 0.29, 0.26)  # P(look | position)


@dataclass(frozen=True)
class SyntheticWorld:
    n_users: int = 400
    n_items: int = 300
    dim: int = 4
    requests: int = 15000
    slate: int = 10
    seed: int = 7


def synthetic_events(world: SyntheticWorld) -> list[dict[str, Any]]:
    """Raw event dicts (as a client would send them) for a synthetic history; deterministic by seed."""
    rng = np.random.default_rng(world.seed)
    users = rng.normal(size=(world.n_users, world.dim))
    items = rng.normal(size=(world.n_items, world.dim))
    popularity = rng.normal(scale=1.0, size=world.n_items)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    events: list[dict[str, Any]] = []
    for i in range(world.n_items):
        events.append(
            {
                "event_id": f"item-{i}",
                "kind": "item",
                "timestamp": start.isoformat(),
                "item_id": f"i{i}",
                "creator_id": f"c{i % 50}",
                "attributes": {"topic": f"t{int(np.argmax(items[i]))}"},
            }
        )
    for u in range(world.n_users):
        events.append(
            {"event_id": f"user-{u}", "kind": "user", "timestamp": start.isoformat(), "user_id": f"u{u}"}
        )
    exam = np.asarray(EXAMINATION[: world.slate])
    for r in range(world.requests):
        u = int(rng.integers(world.n_users))
        ts = start + timedelta(seconds=int(r * 86400 * 14 / world.requests))
        shown = rng.choice(world.n_items, size=world.slate, replace=False)
        affinity = items[shown] @ users[u] / np.sqrt(world.dim) + 0.5 * popularity[shown]
        p_click = exam * (1 / (1 + np.exp(-(affinity * 3.0 - 2.5))))
        clicks = rng.random(world.slate) < p_click
        for pos, item in enumerate(shown):
            events.append(
                {
                    "event_id": f"imp-{r}-{pos}",
                    "kind": "impression",
                    "timestamp": ts.isoformat(),
                    "request_id": f"req-{r}",
                    "user_id": f"u{u}",
                    "item_id": f"i{item}",
                    "position": pos,
                    "surface": "feed",
                    "model_versions": {"ranker": "random"},
                }
            )
            if clicks[pos]:
                later = (ts + timedelta(seconds=5 + pos)).isoformat()
                events.append(
                    {
                        "event_id": f"click-{r}-{pos}",
                        "kind": "click",
                        "timestamp": later,
                        "request_id": f"req-{r}",
                        "user_id": f"u{u}",
                        "item_id": f"i{item}",
                    }
                )
                if rng.random() < 0.3:  # likes often come without a request id: joined by ASOF
                    events.append(
                        {
                            "event_id": f"like-{r}-{pos}",
                            "kind": "like",
                            "user_id": f"u{u}",
                            "timestamp": (ts + timedelta(seconds=60)).isoformat(),
                            "item_id": f"i{item}",
                        }
                    )
    return events


def run_demo(
    settings: Settings,
    data: Path | None = None,
    console: Console | None = None,
    world: SyntheticWorld | None = None,
) -> dict[str, Any]:
    """Run the demo; returns the figures it printed (tests read them)."""
    console = console or Console()
    out: dict[str, Any] = {}
    if data is None:
        console.rule("[bold]1. events: a synthetic feed history into the Parquet event log")
        log_dir = settings.event_log_path()
        if log_dir.exists():
            shutil.rmtree(log_dir)
        log = ParquetEventLog(log_dir)
        raw = synthetic_events(world or SyntheticWorld())
        raw.insert(
            3,
            {
                "event_id": "bad-1",
                "kind": "click",
                "timestamp": "yesterday",
                "user_id": "u1",
                "item_id": "i1",
            },
        )
        raw.insert(
            5,
            {
                "event_id": "bad-2",
                "kind": "impression",
                "timestamp": "2026-11-01T00:00:00Z",
                "request_id": "r",
                "user_id": "u1",
                "item_id": "i1",
                "position": -3,
            },
        )
        result = log.append(raw)
        console.print(
            f"appended {len(raw):,} events: accepted {result.accepted:,}, rejected "
            f"{len(result.rejected)}, duplicates {result.duplicates}"
        )
        for rejected in result.rejected:
            console.print(f"  rejected #{rejected.index}: {rejected.error}")
        again = log.append(raw[:1000])
        console.print(
            f"re-sent the first 1,000: accepted {again.accepted}, duplicates {again.duplicates}, "
            f"rejected {len(again.rejected)} (idempotent by event id)"
        )
        out["accepted"], out["rejected"] = result.accepted, len(result.rejected)

        console.rule("[bold]2. join: clicks and likes back to the impressions that caused them")
        joined = join_engagements(log.table(), settings.event_log.attribution_window_s)
        rows = joined.table.to_pandas()
        by_pos = rows.groupby("position")[["click", "like"]].mean()
        table = Table("position", "impressions", "CTR", "like rate")
        for pos, row in by_pos.iterrows():
            table.add_row(
                str(pos),
                f"{int((rows['position'] == pos).sum()):,}",
                f"{row['click']:.4f}",
                f"{row['like']:.4f}",
            )
        console.print(table)
        console.print(f"{len(rows):,} training rows; unattributed engagements: {joined.unattributed}")
        out["ctr_by_position"] = by_pos["click"].round(4).tolist()
        clicks = rows.loc[rows["click"] == 1, ["user_id", "item_id", "timestamp"]].copy()
        clicks["timestamp"] = clicks["timestamp"].astype("int64") // 10**6
        split = leave_last_out(clicks.drop_duplicates(["user_id", "item_id"]))
        source = "synthetic clicks, leave-last-out"
    else:
        console.rule(f"[bold]1. data: MovieLens-100k from {data}")
        ml = read_movielens_100k(data)
        console.print(ml.summary())
        split = random_ratio_split(ml.ratings)
        source = "MovieLens-100k, RecBole random 8:1:1"

    console.rule(f"[bold]3. train: MF with BPR through the training loop ({source})")
    train, valid, test = encode_split(*split)
    if data is None:  # a small data set: smaller batches and a higher rate than the defaults
        settings = settings.model_copy(
            update={
                "train": settings.train.model_copy(
                    update={"batch_size": 256, "lr": 0.01, "epochs": 30, "patience": 5}
                )
            }
        )
    run = train_mf_bpr(train, valid, test, settings, run_name="demo_mf_bpr")
    console.print(
        f"epochs {run.fit.epochs_run} (best {run.fit.best_epoch}), "
        f"{run.fit.samples_per_s:,.0f} samples/s, MLflow run {run.fit.run_id}"
    )
    mask = (train.csr() + valid.csr()).tocsr()
    pop = full_ranking_eval(Popularity().fit(train.csr()).score, test.csr(), mask, settings.eval.ks)

    console.rule("[bold]4. evaluate: full ranking on test, training and validation items masked")
    keys = [f"{m}@{k}" for k in settings.eval.ks for m in ("recall", "ndcg", "hit")]
    table = Table("model", *keys)
    for name, metrics in (("popularity", pop), ("MF-BPR", run.test_metrics)):
        table.add_row(name, *(f"{metrics[k]:.4f}" for k in keys))
    console.print(table)
    console.print(f"users evaluated: {int(run.test_metrics['users'])}")
    out["mf"] = run.test_metrics
    out["popularity"] = pop
    return out
