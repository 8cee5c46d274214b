"""A served feed on a simulated clock, shared by the monitoring tests: the session's bundle registered
as the champion, the API with its worker in process, and simulated users served one simulated day
per window (so that every windowed feature of a window describes that window's own traffic)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from fastapi.testclient import TestClient

from recstack.config import Settings, load_settings
from recstack.data.simulator import Simulator, World
from recstack.events.parquet import ParquetEventLog
from recstack.features.stores import MemoryStore
from recstack.playground import SimClock, serve_simulated
from recstack.registry import Registry
from recstack.serving.api import Runtime, create_app, registry_source
from tests.serving.conftest import feed_world  # noqa: F401 (the session's trained feed)

DAY = 86_400.0


def monitor_env(state_dir: Path) -> dict[str, str]:
    return {
        "RECSTACK_PATHS__STATE_DIR": str(state_dir),
        "RECSTACK_TRACKING__ENABLED": "false",
        "RECSTACK_TRAIN__PROGRESS": "false",
        "RECSTACK_TRAIN__EPOCHS": "1",
        "RECSTACK_TRAIN__BATCH_SIZE": "1024",
        # fixed, not the cores free, so the models do not depend on the load. With 1 thread the stable
        # stream's like head trips the calibration check (z -4.3 against 4): issue 19's note
        "RECSTACK_TRAIN__NUM_THREADS": "2",
        "RECSTACK_TWO_TOWER__DIM": "16",
        "RECSTACK_TWO_TOWER__HIDDEN": "[32]",
        "RECSTACK_TWO_TOWER__HISTORY": "10",
        "RECSTACK_RETRIEVAL__INDEX": "flat",
        "RECSTACK_MONITORING__ENABLED": "false",
        "RECSTACK_MONITORING__MIN_ROWS": "100",
        "RECSTACK_MONITORING__SKEW_SAMPLE": "0",
    }


def monitor_settings(state_dir: Path, **extra: str) -> Settings:
    return load_settings(None, monitor_env(state_dir) | extra)


@dataclass
class Served:
    """The served feed: ``days`` holds each served window's [start, end)."""

    root: Path
    settings: Settings
    log: ParquetEventLog
    world: World
    sim: Simulator
    clock: SimClock
    runtime: Runtime
    client: TestClient
    days: list[tuple[datetime, datetime]]

    def serve_day(self, requests: int = 150, after_request: bool = False) -> tuple[datetime, datetime]:
        """One simulated day of ``requests`` requests; returns its window."""
        start = datetime.fromtimestamp(self.clock.t, UTC)
        runtime = self.runtime

        def sync() -> None:
            runtime.flush_impressions()
            assert runtime.worker is not None
            runtime.worker.drain()

        sync()  # what was appended to the log directly (the copies) is in the state first
        serve_simulated(
            self.client,
            self.world,
            self.sim,
            self.clock,
            requests,
            tag=f"w{len(self.days)}",
            after_batch=sync,
            batch=1 if after_request else 20,
        )
        end = datetime.fromtimestamp(self.clock.t + 2.0, UTC)  # the last batch's engagements
        self.clock.t += 3_600 + 5.0  # past the attribution window: the day's outcomes settle
        self.days.append((start, end))
        return start, end

    def copy_day(
        self,
        day: int,
        transform: Callable[[pa.Table], pa.Table] | None = None,
        version: str | None = None,
    ) -> tuple[datetime, datetime]:
        """A new window that repeats served day ``day`` one day later (every impression and its
        engagements, new ids), through ``transform`` (say, one feature's logged values changed)."""
        start, end = self.days[day]
        shift = datetime.fromtimestamp(self.clock.t, UTC) - start + timedelta(seconds=1)
        table = self.log.table(start=start, end=end + timedelta(seconds=3_600))
        table = table.filter(
            pc.is_in(table["kind"], pa.array(["impression", "click", "like", "share", "hide"]))
        )
        n = len(self.days)
        stamps = pc.add(table["timestamp"].cast(pa.int64()), int(shift.total_seconds() * 1e6))
        table = table.set_column(table.schema.get_field_index("timestamp"), "timestamp",
                                 stamps.cast(table.schema.field("timestamp").type))  # fmt: skip
        for column in ("event_id", "request_id"):
            index = table.schema.get_field_index(column)
            table = table.set_column(index, column, pc.binary_join_element_wise(f"c{n}", table[column], ":"))
        if version is not None:
            index = table.schema.get_field_index("model_versions")
            kinds = table["kind"].to_pylist()
            versions = [json.dumps({"feed": version}) if k == "impression" else None for k in kinds]
            table = table.set_column(index, "model_versions", pa.array(versions, pa.string()))
        if transform is not None:
            table = transform(table)
        self.log.append_table(table)
        window = (start + shift, end + shift)
        self.clock.t = window[1].timestamp() + 3_600 + 5.0
        self.days.append(window)
        return window


@pytest.fixture(scope="package")  # served once for tests/monitoring (about 20 s); tests append to it
def served_feed(
    feed_world: tuple[World, Path, Path],  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    world, events, bundle = feed_world
    root = tmp_path_factory.mktemp("monitored")
    shutil.copytree(events, root / "events", ignore=shutil.ignore_patterns("_groups"))
    (root / "events" / "_groups").mkdir(exist_ok=True)
    settings = monitor_settings(root / "state")
    registry = Registry(settings)
    report = json.loads((bundle / "bundle.json").read_text())
    version = registry.register(bundle, report["metrics"], {"data_end": report["data_end"]})
    registry.promote(version)
    log = ParquetEventLog(root / "events")
    sim = Simulator(world, seed=5)
    last = log.table(kinds=["impression"])["timestamp"].to_numpy(zero_copy_only=False).max()
    clock = SimClock(last.astype("datetime64[us]").astype(np.int64) / 1e6 + 3_600)  # right after the history
    runtime = Runtime(
        settings, log, store=MemoryStore(), bundle_source=registry_source(settings), clock=clock
    )
    runtime.rng = np.random.default_rng(0)  # the exploration picks: the same days every run
    assert runtime.worker is not None
    runtime.worker.drain()
    runtime.reload()
    with TestClient(create_app(runtime)) as client:
        served = Served(root, settings, log, world, sim, clock, runtime, client, [])
        for _ in range(4):
            served.serve_day()
        yield served
    runtime.close()
    log.close()


def settings_with(served: Served, **monitoring: Any) -> Settings:
    """The feed's settings with other [monitoring] values."""
    cfg = served.settings.monitoring.model_copy(update=monitoring)
    return served.settings.model_copy(update={"monitoring": cfg})
