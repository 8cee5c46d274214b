"""Quality over simulated days when the world moves: no retraining, scheduled retraining and
drift-triggered retraining, on the simulator with a sudden shift in interests.

The system is the real one, in process: the event log (Parquet), the API (``create_app`` driven by a
FastAPI TestClient) with its worker, the registry (MLflow on SQLite) and ``recstack.monitoring``'s
Monitor. Time is simulated: the API's clock is the simulation's, every day has ``--per-day``
requests spread over its 24 hours, and the simulated users answer each list with the simulator's
response model (clicks, likes, shares, hides), posted back through ``/v1/events``.

Every arm starts the same way: a random feed's history, the first bundle trained on it and promoted,
a warm-up day served by it and a second bundle trained incrementally on that day (so the reference
saved with the bundle is traffic the API served). Then ``--days`` days; on day ``--shift-day`` what
people like moves (``World.shift_interests(--shift)``: the users' tastes turn by one common
rotation and the items' appeal is reshuffled among them). Between shifts the world stands still
(``--drift`` 0, the users' daily Gaussian step).

- ``stable``: the triggered arm on a world without the shift: each day with a breach is a false alarm;
- ``none``: the warm-up bundle serves every day;
- ``scheduled``: ``recstack train --incremental`` every ``--every`` days;
- ``triggered``: the Monitor checks each day's window after it ends and acts ([monitoring] defaults:
  incremental training through the gate on drift or lost quality, then recovery rounds; recalibration
  on calibration alone);
- ``gentle``: the stable arm with the simulator's usual gentle drift (``--gentle-drift``, 0.02 a
  day): its alarms are reported beside the goal (a world that moves slowly is not a stable one).

Quality: the true expected click rate of what was served each day (the simulator's truth) and the
online AUC of the served click head. ``detect_days``: days from the shift to the triggered arm's
first breach (0: breached on the check after the shift day). ``recovered_share``: over the days from
the shift on, (triggered - none) / (stable - none) of the mean true CTR (1: all the loss recovered).
The monitoring cost is the checks' CPU seconds per served request.

    .venv/bin/python benchmarks/drift_sim.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _results import record
from fastapi.testclient import TestClient

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from recstack.config import Settings, load_settings
from recstack.data.simulator import RandomPolicy, Simulator, World
from recstack.events.parquet import ParquetEventLog
from recstack.features.stores import MemoryStore
from recstack.monitoring.monitor import Monitor
from recstack.playground import SimClock, serve_simulated
from recstack.registry import Registry
from recstack.serving.api import Runtime, create_app, registry_source
from recstack.train.rounds import train_and_register

DAY = 86_400.0
KEY = {"X-API-Key": "recstack-local"}


@dataclass
class Day:
    day: int
    version: str
    true_ctr: float
    ctr: float
    auc_click: float | None
    breaches: list[str] = field(default_factory=list)
    action: str = ""


def arm_settings(root: Path, retrain_from: str = "champion") -> Settings:
    return load_settings(
        None,
        {
            "RECSTACK_PATHS__STATE_DIR": str(root),
            "RECSTACK_TRACKING__ENABLED": "false",
            "RECSTACK_TRAIN__PROGRESS": "false",
            "RECSTACK_TRAIN__EPOCHS": "4",
            "RECSTACK_TRAIN__PATIENCE": "2",
            "RECSTACK_TRAIN__BATCH_SIZE": "1024",
            "RECSTACK_TWO_TOWER__DIM": "32",
            "RECSTACK_TWO_TOWER__HIDDEN": "[64]",
            "RECSTACK_TWO_TOWER__HISTORY": "20",
            "RECSTACK_RETRIEVAL__INDEX": "flat",
            "RECSTACK_MONITORING__ENABLED": "false",  # the benchmark runs the checks itself, daily
            "RECSTACK_MONITORING__COOLDOWN_S": str(DAY / 2),
            "RECSTACK_MONITORING__RETRAIN_FROM": retrain_from,
            "RECSTACK_MONITORING__SKEW_SAMPLE": "500",
        },
    )


def run_arm(
    mode: str, shifted: bool, args: argparse.Namespace, root: Path, drift: float, name: str
) -> tuple[list[Day], dict[str, float]]:
    folder = root / name
    shutil.rmtree(folder, ignore_errors=True)
    settings = arm_settings(folder, args.retrain_from)
    world = World.generate(n_users=args.users, n_items=args.items, seed=args.seed, drift=drift)
    total_days = args.history_days + 1 + args.days
    start = datetime.now(UTC) - timedelta(days=total_days + 1)
    sim = Simulator(world, seed=args.seed, start=start, requests_per_day=args.per_day, slate=args.slate)
    log = ParquetEventLog(settings.event_log_path())
    log.append_table(sim.catalog_events())
    history = Simulator(
        world, seed=args.seed, start=start, requests_per_day=args.history_per_day, slate=args.slate
    )
    for table in history.run(
        RandomPolicy(world.n_items, seed=args.seed), args.history_days * args.history_per_day, 2_000
    ):
        log.append_table(table)
    sim.now_us = history.now_us
    train_and_register(settings, log)
    clock = SimClock(sim.now_us / 1e6 + 60)
    runtime = Runtime(
        settings, log, store=MemoryStore(), bundle_source=registry_source(settings), clock=clock
    )
    runtime.rng = np.random.default_rng(args.seed)
    assert runtime.worker is not None
    runtime.worker.drain()
    runtime.reload()
    monitor = Monitor(settings, log, clock=clock)

    def sync() -> None:  # the impressions to the log, what arrived into the state
        runtime.flush_impressions()
        assert runtime.worker is not None
        runtime.worker.drain()

    days: list[Day] = []
    cpu = requests = 0.0
    with TestClient(create_app(runtime)) as client:
        # warm-up: a day served by the first bundle, then the bundle every arm starts from
        serve_simulated(client, world, sim, clock, args.per_day, args.slate, tag="d0", after_batch=sync)
        clock.t += settings.event_log.attribution_window_s
        warm = train_and_register(
            settings, log, incremental=True, promote=False, end=datetime.fromtimestamp(clock.t, UTC)
        )
        Registry(settings).promote(warm.version, force=True)  # every arm starts from it
        runtime.reload()
        for day in range(1, args.days + 1):
            world.step_days(1.0, sim.rng)
            if shifted and day == args.shift_day:
                world.shift_interests(args.shift, sim.rng)
            day_start = datetime.fromtimestamp(clock.t, UTC)
            version = runtime.version or "?"
            truth, ctr, _ = serve_simulated(
                client, world, sim, clock, args.per_day, args.slate, tag=f"d{day}", after_batch=sync
            )
            day_end = datetime.fromtimestamp(clock.t, UTC)
            clock.t += settings.event_log.attribution_window_s  # the day's outcomes settle
            act = mode == "triggered"
            run = monitor.run_once(day_start, day_end, act=act)
            cpu += run.cpu_s
            requests += args.per_day
            auc = next((f.value for v, f in run.findings if f.check == "online" and f.subject == "auc_click"
                        and v == version), None)  # fmt: skip
            record_day = Day(
                day,
                version,
                truth,
                ctr,
                auc,
                sorted({f"{f.check}:{f.subject}" for f in run.breaches(version)}),
            )
            if run.action is not None:
                record_day.action = f"{run.action.kind} v{run.action.version} promoted={run.action.promoted}"
            if mode == "scheduled" and day % args.every == 0:
                trained = train_and_register(
                    settings, log, incremental=True, end=datetime.fromtimestamp(clock.t, UTC)
                )
                record_day.action = f"scheduled v{trained.version} promoted={trained.promoted}"
            runtime.reload()
            days.append(record_day)
            print(
                f"  {name:9s} day {day}: v{version} true CTR {truth:.4f} "
                f"CTR {ctr:.4f} AUC {auc if auc is None else round(auc, 4)} breaches {record_day.breaches} "
                f"{record_day.action}",
                flush=True,
            )
    runtime.close()
    return days, {"cpu_s": cpu, "requests": requests}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller world and fewer days")
    parser.add_argument("--users", type=int, default=600)
    parser.add_argument("--items", type=int, default=1_500)
    parser.add_argument("--per-day", type=int, default=800)
    parser.add_argument("--history-days", type=int, default=4)
    parser.add_argument("--history-per-day", type=int, default=2_000, help="requests/day of the random feed")
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--shift-day", type=int, default=4)
    parser.add_argument("--shift", type=float, default=1.0, help="share of users and items whose tastes move")
    parser.add_argument("--drift", type=float, default=0.0, help="the users' daily Gaussian step, every arm")
    parser.add_argument("--gentle-drift", type=float, default=0.02, help="the gentle arm's daily step")
    parser.add_argument("--every", type=int, default=3, help="scheduled arm: retrain every this many days")
    parser.add_argument("--slate", type=int, default=10)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--retrain-from", default="champion", help="[monitoring] retrain_from")
    parser.add_argument("--arms", default="", help="run only these arms (comma-separated; figures need all)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the arms' state dirs here")
    args = parser.parse_args()
    if args.quick:  # a smoke run of the whole loop; its figures are not the benchmark's
        args.users, args.items, args.per_day, args.history_days, args.history_per_day = (
            200,
            500,
            300,
            2,
            1_000,
        )
        args.days, args.shift_day, args.every = 5, 4, 2
    logging.basicConfig(level=logging.ERROR)
    root = args.keep or Path(tempfile.mkdtemp(prefix="drift_sim."))
    started = time.perf_counter()
    results: dict[str, list[Day]] = {}
    cost = {"cpu_s": 0.0, "requests": 0.0}
    arms = [("stable", "triggered", False), ("none", "none", True), ("scheduled", "scheduled", True),
            ("triggered", "triggered", True), ("gentle", "triggered", False)]  # fmt: skip
    if args.quick:
        arms = arms[:4]
    if args.arms:
        arms = [a for a in arms if a[0] in args.arms.split(",")]
    for name, mode, shifted in arms:
        drift = args.gentle_drift if name == "gentle" else args.drift
        days, spent = run_arm(mode, shifted, args, root, drift, name)
        results[name] = days
        cost = {k: cost[k] + spent[k] for k in cost}
    after = slice(args.shift_day - 1, None)
    mean = {m: float(np.mean([d.true_ctr for d in ds][after])) for m, ds in results.items()}
    loss = mean["stable"] - mean["none"]
    recovered = (mean["triggered"] - mean["none"]) / loss if loss > 0 else float("nan")
    alarms = [d.day for d in results["triggered"] if d.breaches and d.day >= args.shift_day]
    detect = alarms[0] - args.shift_day if alarms else float("nan")
    false_alarms = sum(len(d.breaches) > 0 for d in results["stable"])
    gentle = sum(len(d.breaches) > 0 for d in results.get("gentle", []))
    gentle_breaches = sorted({f"day {d.day} {b}" for d in results.get("gentle", []) for b in d.breaches})
    # the shifted arms' days before the shift are a stable world too (reported beside the goal)
    pre_shift = sum(len(d.breaches) > 0 for m in ("none", "scheduled", "triggered") for d in results[m]
                    if d.day < args.shift_day)  # fmt: skip
    stable_breaches = sorted({b for d in results["stable"] for b in d.breaches})
    print("\nday  " + "  ".join(f"{m:>10s}" for m in results) + "   (true CTR of what was served)")
    for i in range(args.days):
        print(f"{i + 1:3d}  " + "  ".join(f"{results[m][i].true_ctr:10.4f}" for m in results))
    print(f"mean from the shift on: {json.dumps({m: round(v, 4) for m, v in mean.items()})}")
    print(f"stable world breaches: {stable_breaches or 'none'}")
    print(f"gentle-drift world breaches: {gentle_breaches or 'none'}")
    triggered_breaches = {d.day: d.breaches for d in results["triggered"] if d.breaches}
    print(f"triggered arm breaches by day: {triggered_breaches}")
    cpu_per_request_ms = 1e3 * cost["cpu_s"] / max(cost["requests"], 1)
    spent = time.perf_counter() - started
    print(f"monitoring CPU: {cost['cpu_s']:.1f} s over {int(cost['requests'])} requests "
          f"({cpu_per_request_ms:.3f} ms per request); {spent:.0f} s in all")  # fmt: skip
    record(
        "drift_sim" + (" --quick" if args.quick else ""),
        {
            "detect_days": detect,
            "false_alarms": false_alarms,
            "pre_shift_alarm_days": pre_shift,
            "gentle_drift_alarm_days": gentle,
            "recovered_share": round(recovered, 3),
            "true_ctr_stable": round(mean["stable"], 4),
            "true_ctr_none": round(mean["none"], 4),
            "true_ctr_scheduled": round(mean["scheduled"], 4),
            "true_ctr_triggered": round(mean["triggered"], 4),
            "monitor_cpu_ms_per_request": round(cpu_per_request_ms, 3),
        },
        f"{args.users} users, {args.items} items, {args.per_day} requests/day, {args.days} days, "
        f"shift {args.shift:.0%} on day {args.shift_day}, drift {args.drift}/day, scheduled every "
        f"{args.every} days; stable-world breaches: {', '.join(stable_breaches) or 'none'}; gentle-drift "
        f"({args.gentle_drift}/day) breaches: {', '.join(gentle_breaches) or 'none'}",
    )
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
