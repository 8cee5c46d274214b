"""Wiring for the processes: the runtime ``recstack serve`` runs, the worker ``recstack worker``
runs, and one training round (train a bundle, register it, promote it through the gate)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from recstack.config import EventLogBackend, Settings
from recstack.events.base import EventLog
from recstack.registry import GateResult, Registry
from recstack.serving.api import Runtime, bus_for, registry_source
from recstack.serving.state import FeedState
from recstack.serving.worker import FeedWorker, load_state, state_store

log = logging.getLogger(__name__)


def make_runtime(settings: Settings, bus: EventLog | None = None) -> Runtime:
    """The API's runtime: the embedded default runs the worker in process; with the Redis bus a
    separate ``recstack worker`` owns the state and the API loads its snapshots."""
    embedded = settings.event_log.backend is EventLogBackend.parquet
    store = state_store(settings)
    return Runtime(
        settings,
        bus or bus_for(settings),
        store=store,
        bundle_source=registry_source(settings),
        in_process_worker=embedded,
    )


def run_worker(settings: Settings, stop: threading.Event, consumer: str = "worker-1") -> FeedWorker:
    store = state_store(settings)
    state = load_state(store) or FeedState.for_settings(settings)
    worker = FeedWorker(
        bus_for(settings),
        state,
        store,
        consumer=consumer,
        snapshot_s=settings.serving.state_sync_s,
        full_s=settings.serving.state_full_s,
    )
    worker.run(stop)
    return worker


@dataclass
class TrainRound:
    version: str
    metrics: dict[str, float]
    gate: GateResult | None
    promoted: bool
    data_start: str | None
    data_end: str


def train_and_register(
    settings: Settings,
    log_: EventLog,
    incremental: bool = False,
    promote: bool = True,
    start: datetime | None = None,
    end: datetime | None = None,
) -> TrainRound:
    """Train a bundle (incrementally from the champion on the log since its data range ended, when
    asked and a champion exists), register it as the challenger, and promote it if the gate passes."""
    from recstack.train.feed import train_bundle

    registry = Registry(settings)
    champion = registry.alias("champion")
    champion_folder: Path | None = None
    if incremental and champion is not None:
        champion_folder = registry.fetch(champion)
        versions = {v["version"]: v for v in registry.versions()}
        ended = versions[champion]["data_end"]
        start = start or (datetime.fromisoformat(ended) if ended else None)
    folder = settings.paths.state_dir / "build" / "bundle"
    report = train_bundle(
        settings, log_, folder, start, end, champion=champion_folder, champion_version=champion
    )
    version = registry.register(folder, report.metrics, report.lineage)
    registry.set_alias("challenger", version)
    gate = None
    promoted = False
    if promote:
        gate = registry.promote(version)
        promoted = gate.passed
    return TrainRound(version, report.metrics, gate, promoted, report.data_start, report.data_end)
