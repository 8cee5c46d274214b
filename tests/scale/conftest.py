"""A local Ray cluster of 2 CPUs (``ray.init(num_cpus=2)``) shared by the tests of this package,
and a small simulated event log. Ray is the scale extra; `make test` installs it, and under
RECSTACK_REQUIRE_SERVICES=1 (CI) its absence fails the tests instead of skipping them."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recstack.config import Settings, load_settings
from recstack.data.simulator import PopularityPolicy, Simulator, World
from recstack.events.parquet import ParquetEventLog
from tests.conftest import REQUIRE_SERVICES


def settings_for(root: Path, **env: str) -> Settings:
    return load_settings(
        None,
        {
            "RECSTACK_PATHS__STATE_DIR": str(root / "state"),
            "RECSTACK_EVENT_LOG__PATH": str(root / "events"),
            "RECSTACK_TRACKING__ENABLED": "false",
            "RECSTACK_TRAIN__PROGRESS": "false",
            "RECSTACK_TRAIN__EPOCHS": "2",
            "RECSTACK_TRAIN__BATCH_SIZE": "512",
            "RECSTACK_TRAIN__NUM_THREADS": "1",
            "RECSTACK_TWO_TOWER__DIM": "16",
            "RECSTACK_TWO_TOWER__HIDDEN": "[32]",
            "RECSTACK_TWO_TOWER__HISTORY": "10",
            "RECSTACK_RETRIEVAL__INDEX": "flat",
            **env,
        },
    )


@pytest.fixture(scope="package")
def ray_cluster() -> Iterator[Any]:
    if importlib.util.find_spec("ray") is None:
        reason = "Ray (the scale extra) is not installed: pip install 'recstack[scale]'"
        if REQUIRE_SERVICES:
            pytest.fail(f"{reason} (RECSTACK_REQUIRE_SERVICES=1)")
        pytest.skip(reason)
    import ray
    from ray import cloudpickle

    import tests

    cloudpickle.register_pickle_by_value(tests)  # the workers get the tests' own classes by value
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from recstack.scale.engine import _quiet_data

    _quiet_data()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="package")
def sim_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``events/``: a simulated catalog and 1,000 requests of a popularity feed
    over a day (100 users, 200 items). Read-only."""
    root = tmp_path_factory.mktemp("scale")
    world = World.generate(n_users=100, n_items=200, n_creators=30, seed=3)
    sim = Simulator(world, seed=3, requests_per_day=5_000)
    log = ParquetEventLog(root / "events")
    log.append_table(sim.catalog_events())
    for table in sim.run(PopularityPolicy(world.n_items, seed=3), 1_000, 500):
        log.append_table(table)
    log.close()
    return root
