"""One training round, what ``recstack train`` runs: train a bundle from the log, register it as the
challenger, and promote it if the gate passes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from recstack.config import Settings
from recstack.events.base import EventLog
from recstack.registry import GateResult, Registry
from recstack.train.feed import train_bundle
from recstack.train.loop import check_stop


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
    check_stop()  # stopped after the last model trained: nothing is registered
    version = registry.register(folder, report.metrics, report.lineage)
    registry.set_alias("challenger", version)
    gate = None
    promoted = False
    if promote:
        gate = registry.promote(version)
        promoted = gate.passed
    return TrainRound(version, report.metrics, gate, promoted, report.data_start, report.data_end)
