"""A small feed trained once per session from the simulator, shared by the serving tests."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from recstack.config import Settings, load_settings
from recstack.data.simulator import PopularityPolicy, Simulator, World
from recstack.events.parquet import ParquetEventLog
from recstack.events.redis_stream import RedisStreamLog
from recstack.features.stores import MemoryStore, RedisStore
from recstack.serving.api import Runtime, create_app
from recstack.serving.state import FeedState
from recstack.serving.worker import FeedWorker

FEATURES = load_settings(None, {}).features  # the default [[features]]


def feed_settings(state_dir: Path) -> Settings:
    return load_settings(
        None,
        {
            "RECSTACK_PATHS__STATE_DIR": str(state_dir),
            "RECSTACK_TRACKING__ENABLED": "false",
            "RECSTACK_TRAIN__PROGRESS": "false",
            "RECSTACK_TRAIN__EPOCHS": "2",
            "RECSTACK_TRAIN__BATCH_SIZE": "1024",
            # fixed, not the cores free: the session's bundle must not depend on the machine's load
            # (the monitoring tests' calibration figures moved with it)
            "RECSTACK_TRAIN__NUM_THREADS": "2",
            "RECSTACK_TWO_TOWER__DIM": "16",
            "RECSTACK_TWO_TOWER__HIDDEN": "[32]",
            "RECSTACK_TWO_TOWER__HISTORY": "10",
            "RECSTACK_RETRIEVAL__INDEX": "flat",
            "RECSTACK_SERVING__RELOAD_S": "0.2",
        },
    )


@pytest.fixture(scope="session")
def feed_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, Path, Path]:
    """(world, event log folder, trained bundle folder); treat both folders as read-only."""
    from recstack.train.feed import train_bundle

    root = tmp_path_factory.mktemp("feed")
    world = World.generate(n_users=200, n_items=400, n_creators=60, seed=3)
    sim = Simulator(world, seed=3, requests_per_day=5_000)
    log = ParquetEventLog(root / "events")
    log.append_table(sim.catalog_events())
    for table in sim.run(PopularityPolicy(world.n_items, seed=3), 3_000, 1_000):
        log.append_table(table)
    train_bundle(feed_settings(root / "state"), log, root / "bundle")
    return world, root / "events", root / "bundle"


def history_clock(log: ParquetEventLog, after_s: float = 60.0) -> Callable[[], float]:
    """A serving clock that starts ``after_s`` after the log's last event and runs at the wall
    clock's pace: a closed loop served on it sees the history's windows as they were just after it,
    whatever the calendar date the test runs on (the simulated history is dated 2026-11-01; on the
    wall clock every window of it has expired, later on each day)."""
    last = log.table().column("timestamp").cast("int64").to_numpy().max() / 1e6
    started = time.time()
    return lambda: float(last + after_s + (time.time() - started))


KEY = {"X-API-Key": "recstack-local"}


@pytest.fixture
def served(
    feed_world: tuple[World, Path, Path], feed_log: ParquetEventLog, tmp_path: Path
) -> Iterator[tuple[TestClient, Runtime, dict[str, Path]]]:
    source = {"version": ("1", feed_world[2])}
    runtime = Runtime(
        feed_settings(tmp_path), feed_log, store=MemoryStore(), bundle_source=lambda: source["version"]
    )
    assert runtime.worker is not None
    runtime.worker.drain()
    runtime.start()
    with TestClient(create_app(runtime)) as client:
        yield client, runtime, source  # type: ignore[misc]
    runtime.close()


@pytest.fixture
def feed_log(feed_world: tuple[World, Path, Path], tmp_path: Path) -> Iterator[ParquetEventLog]:
    """A private copy of the session's event log (tests append to it)."""
    target = tmp_path / "events"
    shutil.copytree(feed_world[1], target, ignore=shutil.ignore_patterns("_groups"))
    (target / "_groups").mkdir(exist_ok=True)
    log = ParquetEventLog(target)
    yield log
    log.close()


@dataclass
class RedisFeed:
    """The history on a live Redis bus and a separate worker's snapshot of it in a Redis store,
    under ``namespace``."""

    namespace: str
    bus: RedisStreamLog
    store: RedisStore
    worker: FeedWorker


@pytest.fixture
def redis_feed(redis_url: str, unique: str, feed_log: ParquetEventLog) -> Iterator[RedisFeed]:
    """A :class:`RedisFeed` of the session's history (its stream and keys dropped after)."""
    namespace = f"test:{unique}"
    bus = RedisStreamLog(redis_url, stream=f"{namespace}:events")
    store = RedisStore(redis_url, prefix=f"{namespace}:state:")
    try:
        bus.append_table(feed_log.table())
        worker = FeedWorker(bus, FeedState(features=FEATURES), store)
        worker.drain()
        yield RedisFeed(namespace, bus, store, worker)
    finally:
        bus.drop()
        store.drop()
