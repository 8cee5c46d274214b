"""``recstack monitor``: run every check on a window of the serving log, record what it found, and act.

A run reads the window (``[monitoring] window_s`` up to now, or the range given), and for each model
version that served in it (the registry's bundles) runs the checks of ``monitoring.checks``. Every
finding becomes a row of the monitoring table (SQLite, ``[monitoring] table``), a Prometheus gauge
(``recstack_monitor_value`` and ``recstack_monitor_breach`` by check and subject) and, when it is a
breach, a structured log event (logger ``recstack.monitoring``, a JSON object).

Acting (``[monitoring] act``), on the champion's breaches only, at most once per ``cooldown_s``:

- drift (a feature or prediction head) or lost quality (the online CTR, hides and reports per
  request): ``recstack train --incremental``, a training round warm-started from the champion,
  through the promotion gate, on the log from the breached window's start (what came before is the
  world that moved; the champion's data end if that is later);
- after a drift retrain was promoted, ``recovery_rounds`` more rounds, one per check (the cooldown
  applies), each on the log from the same start: the data since the shift grows every window;
- calibration alone: the calibration maps are refitted on the window's settled impressions (the
  first 70% by time) and the recalibrated bundle is promoted if its log loss on the last 30% beats
  the champion's (the gate on ``neg_logloss_recent``);
- skew, latency and degraded requests raise alarms only: retraining does not mend them.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from recstack.config import ReferenceKind, RetrainFrom, Settings
from recstack.errors import CheckpointError, RecstackError
from recstack.events.base import EventLog
from recstack.monitoring import checks
from recstack.monitoring.checks import BREACH, MISSING, Finding
from recstack.monitoring.reference import load_reference, window_reference
from recstack.monitoring.window import Window, read_window
from recstack.servables.bundle import ServingBundle

log = logging.getLogger("recstack.monitoring")

DRIFT_CHECKS = ("feature_drift", "prediction_drift")
QUALITY = ("ctr", "hides_reports_per_request")  # online metrics whose breach retrains


@dataclass
class Action:
    kind: str  # retrain | recover | recalibrate | cooldown | failed
    version: str | None = None  # the version it registered
    promoted: bool = False
    detail: str = ""
    since: str | None = None  # retrain, recover: where the data it trained on starts (ISO-8601)


@dataclass
class MonitorRun:
    run_id: str
    at: datetime
    start: datetime
    end: datetime
    champion: str | None
    findings: list[tuple[str, Finding]] = field(default_factory=list)  # (version, finding)
    impressions: int = 0
    action: Action | None = None
    cpu_s: float = 0.0
    window: Window | None = field(default=None, repr=False)  # what was read (the actions reuse it)

    def breaches(self, version: str | None = None) -> list[Finding]:
        return [f for v, f in self.findings if f.breached and (version is None or v == version)]


class MonitorTable:
    """The monitoring table: one row per finding of each run, and one per action taken."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.executescript(
                """
                CREATE TABLE IF NOT EXISTS findings (
                  run_id TEXT, at TEXT, window_start TEXT, window_end TEXT, version TEXT,
                  check_name TEXT, subject TEXT, status TEXT, breached INTEGER, value REAL,
                  threshold REAL, stats TEXT, detail TEXT);
                CREATE INDEX IF NOT EXISTS findings_at ON findings (window_end);
                CREATE TABLE IF NOT EXISTS actions (
                  run_id TEXT, at TEXT, kind TEXT, version TEXT, promoted INTEGER, detail TEXT,
                  since TEXT);
                """
            )

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30)
        con.execute("PRAGMA journal_mode=WAL")
        return con

    def write(self, run: MonitorRun) -> None:
        rows = [
            (
                run.run_id,
                run.at.isoformat(),
                run.start.isoformat(),
                run.end.isoformat(),
                version,
                f.check,
                f.subject,
                f.status,
                int(f.breached),
                f.value,
                f.threshold,
                json.dumps(f.values, default=str),
                f.detail,
            )
            for version, f in run.findings
        ]
        with self._connect() as con:
            con.executemany("INSERT INTO findings VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            if run.action is not None:
                a = run.action
                con.execute(
                    "INSERT INTO actions VALUES (?,?,?,?,?,?,?)",
                    (run.run_id, run.at.isoformat(), a.kind, a.version, int(a.promoted), a.detail, a.since),
                )

    def findings(self, since: datetime | None = None, until: datetime | None = None) -> pd.DataFrame:
        query, args = "SELECT * FROM findings WHERE 1=1", list[str]()
        if since is not None:
            query, args = query + " AND window_end > ?", [*args, since.isoformat()]
        if until is not None:
            query, args = query + " AND window_end <= ?", [*args, until.isoformat()]
        with self._connect() as con:
            return pd.read_sql_query(query + " ORDER BY window_end, rowid", con, params=args)

    def actions(self) -> pd.DataFrame:
        with self._connect() as con:
            return pd.read_sql_query("SELECT * FROM actions ORDER BY at", con)

    def recovering(self, champion: str) -> tuple[str, int] | None:
        """(where the data starts, rounds done) when ``champion`` came from a drift retrain or its
        recovery rounds, else None."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT kind, version, promoted, since FROM actions WHERE kind IN ('retrain', 'recover', "
                "'recalibrate') ORDER BY at"
            ).fetchall()
        promoted = [r for r in rows if r[2]]
        if not promoted or promoted[-1][1] != champion or promoted[-1][0] == "recalibrate":
            return None
        for rounds, (kind, _, _, since) in enumerate(reversed(promoted)):
            if kind == "retrain":
                return str(since), rounds
        return None

    def last_action(self) -> datetime | None:
        with self._connect() as con:
            row = con.execute(
                "SELECT max(at) FROM actions WHERE kind IN ('retrain', 'recover', 'recalibrate')"
            ).fetchone()
        return datetime.fromisoformat(row[0]) if row and row[0] else None


class Gauges:
    def __init__(self, registry: Any | None = None) -> None:
        from prometheus_client import CollectorRegistry, Gauge

        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ["check", "subject"]
        self.value = Gauge(
            "recstack_monitor_value", "Monitoring statistic (PSI, ECE, ...)", labels, registry=self.registry
        )
        self.breach = Gauge(
            "recstack_monitor_breach", "1 when the check breached", labels, registry=self.registry
        )
        self.last = Gauge(
            "recstack_monitor_last_run_timestamp", "When monitoring last ran", registry=self.registry
        )

    def set(self, run: MonitorRun) -> None:
        for version, f in run.findings:
            if version != run.champion:
                continue
            if f.value is not None:
                self.value.labels(f.check, f.subject).set(f.value)
            self.breach.labels(f.check, f.subject).set(1.0 if f.breached else 0.0)
        self.last.set(run.at.timestamp())


BundleLoader = Callable[[str], Path | None]


def registry_loader(settings: Settings) -> BundleLoader:
    from recstack.registry import Registry

    registry = Registry(settings)

    def load(version: str) -> Path | None:
        try:
            return registry.fetch(version)
        except RecstackError:
            return None

    return load


class Monitor:
    """Checks windows of ``log`` for the versions the registry has (``bundles``: version -> local
    bundle folder, or None when unknown), records and exports the findings, and acts on them."""

    def __init__(
        self,
        settings: Settings,
        log_: EventLog,
        bundles: BundleLoader | None = None,
        champion: Callable[[], str | None] | None = None,
        clock: Callable[[], float] = time.time,
        metrics: Any | None = None,
    ) -> None:
        self.settings = settings
        self.log = log_
        self.bundles = bundles or registry_loader(settings)
        self.champion = champion or _registry_champion(settings)
        self.clock = clock
        self.table = MonitorTable(settings.monitoring_table())
        self.gauges = Gauges(metrics)
        self.loaded: dict[str, tuple[ServingBundle, dict[str, Any] | None]] = {}

    def _bundle(self, version: str) -> tuple[ServingBundle, dict[str, Any] | None] | str:
        """(bundle, reference) of ``version``, or why there is none."""
        if version in self.loaded:
            return self.loaded[version]
        folder = self.bundles(version)
        if folder is None:
            return f"version {version} is not in the registry"
        try:
            bundle = ServingBundle.load(folder)
            reference = load_reference(folder)
        except CheckpointError as exc:
            return str(exc)
        self.loaded[version] = (bundle, reference)
        return bundle, reference

    def _state_path(self, version: str) -> Path:
        table = self.settings.monitoring_table()  # one table, one state: beside it, named after it
        name = self.settings.registry.model_name
        return table.parent / f"{table.stem}-versions" / name / f"{version}.json"

    def version_state(self, version: str) -> dict[str, Any]:
        """What monitoring keeps of a version it has seen serve: ``windows`` (how many windows of
        ``min_rows`` settled impressions it checked), the ``first`` and the ``last`` of those windows'
        profiles (the serving references)."""
        path = self._state_path(version)
        if not path.exists():
            return {"windows": 0}
        try:
            found: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.error(
                "monitoring's state of version %s (%s) is unreadable, starting it again: %s",
                version,
                path,
                exc,
            )
            return {"windows": 0}
        return found

    def save_version_state(self, version: str, state: dict[str, Any]) -> None:
        path = self._state_path(version)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".partial")
        tmp.write_text(json.dumps(state))
        tmp.replace(path)

    def check(self, start: datetime | None = None, end: datetime | None = None) -> MonitorRun:
        """Run every check on [start, end) (default: the last ``window_s`` up to now) and record it."""
        cpu = time.process_time()
        now = datetime.fromtimestamp(self.clock(), UTC)
        end = end or now
        start = start or end - timedelta(seconds=self.settings.monitoring.window_s)
        if start >= end:
            raise RecstackError(
                f"the window is empty: start {start.isoformat()} is not before end {end.isoformat()}"
            )
        window = read_window(self.log, start, end, self.settings.event_log.attribution_window_s, now)
        run = MonitorRun(
            uuid.uuid4().hex[:12], now, start, end, self.champion(), impressions=len(window.impressions)
        )
        run.findings = self.findings(window)
        run.window = window
        run.cpu_s = time.process_time() - cpu
        return run

    def findings(self, window: Window) -> list[tuple[str, Finding]]:
        cfg = self.settings.monitoring
        if len(window.impressions) == 0:
            return [
                (
                    "",
                    Finding(
                        "online", "requests", checks.TOO_SMALL, 0.0, None, {}, "no impression in the window"
                    ),
                )
            ]
        out: list[tuple[str, Finding]] = []
        for version in window.versions() or [""]:
            part = window.of_version(version)
            if not version:
                out.append(
                    (
                        "",
                        Finding(
                            "online",
                            "unversioned",
                            checks.OK,
                            float(len(part.impressions)),
                            None,
                            {},
                            "impressions that name no feed version (imported or backfilled)",
                        ),
                    )
                )
                continue
            loaded = self._bundle(version)
            if isinstance(loaded, str):
                out.append((version, Finding("feature_drift", "*", MISSING, detail=loaded)))
                continue
            bundle, training = loaded
            found: list[Finding] = []
            state = self.version_state(version)
            settling = state["windows"] < cfg.settle_windows
            reference = {
                ReferenceKind.training: training,
                ReferenceKind.serving: state.get("first") or training,
                ReferenceKind.previous: state.get("last") or training,
            }[cfg.reference]
            if reference is None:
                found.append(
                    Finding(
                        "feature_drift",
                        "*",
                        checks.TOO_SMALL,
                        detail="the bundle has no reference "
                        "(trained before monitoring): drift and the online reference are not checked",
                    )
                )
                reference = {"served": False, "online": {}}
            else:
                found += checks.feature_drift(part, bundle, reference, self.settings)
                found += checks.prediction_drift(part, bundle, reference, self.settings)
            found += checks.calibration(part, bundle, reference, self.settings)
            if settling:  # a new policy's first windows: its own feedback loop still moves them
                for f in found:
                    moved = f.check in (*DRIFT_CHECKS, "calibration")
                    if moved and f.status in (BREACH, checks.OFF_POLICY):
                        f.status = checks.SETTLING
                        at = f"window {state['windows'] + 1} of {cfg.settle_windows}"
                        f.detail += f" (version {version} is settling: {at})"
            if len(part.settled) >= cfg.min_rows:  # this window becomes the version's latest reference
                profile = window_reference(
                    part.impressions,
                    part.settled,
                    bundle.features,
                    bundle.tasks,
                    bundle.calibrate,
                    cfg,
                    self.settings.train.seed,
                ) | {"window": [window.start.isoformat(), window.end.isoformat()]}
                state = {
                    "windows": state["windows"] + 1,
                    "first": state.get("first") or profile,
                    "last": profile,
                }
                self.save_version_state(version, state)
            if cfg.skew_sample:
                found += checks.skew(part, bundle, self.log, self.settings, seed=self.settings.train.seed)
            found += checks.online(part, bundle, reference, self.settings, len(bundle.retriever.item_ids))
            out += [(version, f) for f in found]
        return out

    def record(self, run: MonitorRun) -> None:
        self.table.write(run)
        self.gauges.set(run)
        for version, f in run.findings:
            if f.breached:
                log.warning(
                    "monitoring breach %s",
                    json.dumps(
                        {
                            "event": "monitoring_breach",
                            "run_id": run.run_id,
                            "window_start": run.start.isoformat(),
                            "window_end": run.end.isoformat(),
                            "version": version,
                            "check": f.check,
                            "subject": f.subject,
                            "status": f.status,
                            "value": f.value,
                            "threshold": f.threshold,
                            "detail": f.detail,
                        }
                    ),
                )

    def act(self, run: MonitorRun) -> Action | None:
        """What the champion's breaches call for (see the module docstring), done."""
        mine = run.breaches(run.champion) if run.champion else []
        drift = [
            f
            for f in mine
            if f.status == BREACH
            and (f.check in DRIFT_CHECKS or (f.check == "online" and f.subject in QUALITY))
        ]
        calibration = [f for f in mine if f.check == "calibration" and f.status == BREACH]
        recovering = self.table.recovering(run.champion) if run.champion and not drift else None
        if recovering is not None and recovering[1] >= self.settings.monitoring.recovery_rounds:
            recovering = None
        if not drift and not calibration and recovering is None:
            return None
        last = self.table.last_action()
        cooldown = self.settings.monitoring.cooldown_s
        if last is not None and (run.at - last).total_seconds() < cooldown:
            return Action(
                "cooldown",
                detail=f"the last action was at {last.isoformat()}, within cooldown_s = {cooldown:g}",
            )
        why = ", ".join(f"{f.check}:{f.subject}" for f in (drift or calibration))
        try:
            if recovering is not None and not calibration:  # after a shift: the data since it grew
                from recstack.train.rounds import train_and_register

                origin = datetime.fromisoformat(recovering[0])
                warm = self.settings.monitoring.retrain_from is RetrainFrom.champion
                trained = train_and_register(self.settings, self.log, incremental=warm, start=origin)
                gate = trained.gate.reason if trained.gate else ""
                rounds = f"{recovering[1] + 1} of {self.settings.monitoring.recovery_rounds}"
                detail = (
                    f"round {rounds} after the drift retrain, on the log since {recovering[0]}; gate: {gate}"
                )
                return Action("recover", trained.version, trained.promoted, detail, recovering[0])
            if drift:
                from recstack.train.rounds import train_and_register

                start = self._retrain_start(run)
                warm = self.settings.monitoring.retrain_from is RetrainFrom.champion
                trained = train_and_register(self.settings, self.log, incremental=warm, start=start)
                gate = trained.gate.reason if trained.gate else ""
                begins = start.isoformat() if start else None
                return Action("retrain", trained.version, trained.promoted, f"on {why}; gate: {gate}", begins)
            from recstack.monitoring.recalibrate import recalibrate

            assert run.champion is not None and run.window is not None
            return recalibrate(self.settings, run.window, run.champion, why)
        except RecstackError as exc:
            return Action("failed", detail=f"on {why}: {exc}")

    def _retrain_start(self, run: MonitorRun) -> datetime | None:
        """Where a drift-triggered round starts: the breached window's start (what came before it
        is the world that moved), or the champion's data end when that is later."""
        from recstack.registry import Registry

        versions = {v["version"]: v["data_end"] for v in Registry(self.settings).versions()}
        ended = versions.get(run.champion or "")
        if not ended:
            return run.start
        return max(run.start, datetime.fromisoformat(ended))

    def run_once(
        self, start: datetime | None = None, end: datetime | None = None, act: bool | None = None
    ) -> MonitorRun:
        run = self.check(start, end)
        if self.settings.monitoring.act if act is None else act:
            run.action = self.act(run)
            if run.action is not None:
                log.warning(
                    "monitoring action %s", json.dumps({"event": "monitoring_action", **run.action.__dict__})
                )
                if run.action.promoted:
                    self.loaded.clear()
        self.record(run)
        return run


def _registry_champion(settings: Settings) -> Callable[[], str | None]:
    def champion() -> str | None:
        from recstack.registry import Registry

        return Registry(settings).alias("champion")

    return champion


def scheduled(
    settings: Settings,
    log_: EventLog,
    stop: threading.Event,
    clock: Callable[[], float] = time.time,
    metrics: Any | None = None,
) -> None:
    """The worker's monitoring schedule: a run every ``[monitoring] every_s`` (the first one
    ``every_s`` after the start) until ``stop``."""
    if stop.wait(settings.monitoring.every_s):
        return
    try:
        monitor = Monitor(settings, log_, clock=clock, metrics=metrics)
    except Exception as exc:  # the registry or the table is unreachable: no schedule
        log.error("monitoring could not start: %s", exc)
        return
    while True:
        try:
            monitor.run_once()
        except Exception as exc:  # the schedule survives a bad window, a dead store
            log.error("monitoring run failed: %s", exc)
        if stop.wait(settings.monitoring.every_s):
            return
