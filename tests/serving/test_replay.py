"""Off-policy estimates of a model on the logs the API served (``recstack experiment ope``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from recstack.data.simulator import FunctionPolicy, Simulator, World
from recstack.errors import RecstackError
from recstack.events.parquet import ParquetEventLog
from recstack.features.stores import MemoryStore
from recstack.serving.api import Runtime, create_app
from recstack.serving.replay import off_policy
from tests.serving.conftest import KEY, feed_settings, history_clock


@pytest.mark.xfail(
    strict=False,
    reason="known defect (issue 18): the replay reproduces 70.5% of the served slots (0.8 needed) with the "
    "serving clock pinned just after the history (3 runs of 3 on 2026-12-07; on the wall clock, where every "
    "window of the 2026-11-01 history has expired, it varied: 60-65% on 2026-12-01 at 21:00, a pass that "
    "day at 18:27 and in the clean-clone CI of 2026-12-07): what the replay rebuilds differently is not "
    "found yet",
)
def test_the_serving_version_replayed_recovers_its_own_click_rate(
    feed_world: tuple[World, Path, Path], feed_log: ParquetEventLog, tmp_path: Path
) -> None:
    world, _, bundle = feed_world
    settings = feed_settings(tmp_path / "state")
    resolve = lambda model: ("1", bundle)  # noqa: E731 (the registry's role)
    with pytest.raises(RecstackError, match="no impressions with propensities"):
        off_policy(settings, feed_log, ["1"], resolve)  # simulated history: no logging probabilities
    clock = history_clock(feed_log)
    runtime = Runtime(
        settings, feed_log, store=MemoryStore(), bundle_source=lambda: ("1", bundle), clock=clock
    )
    runtime.rng = np.random.default_rng(0)
    assert runtime.worker is not None
    runtime.worker.drain()
    runtime.reload()  # no background threads: the test paces the worker (applied after each batch)
    ids: list[str] = []
    try:
        with TestClient(create_app(runtime), headers=KEY) as client:

            def call(user_id: str, k: int) -> list[str]:
                body = client.get("/v1/recommend", params={"user_id": user_id, "n": k}).json()
                ids.append(body["request_id"])
                return [entry["item_id"] for entry in body["items"]]

            sim = Simulator(world, seed=21, requests_per_day=5_000)
            for table in sim.run(FunctionPolicy(world, call), 800, 200):
                clicks = [
                    {"event_id": f"sim-{r['event_id']}", "kind": "click", "user_id": r["user_id"],
                     "item_id": r["item_id"], "request_id": ids[int(r["request_id"][1:])],
                     "timestamp": clock()}
                    for r in table.to_pylist() if r["kind"] == "click"
                ]  # fmt: skip
                client.post("/v1/events", json=clicks).raise_for_status()
                runtime.flush_impressions()
                runtime.worker.drain()  # the clicks are in the state before the next batch, as in the log
            runtime.flush_impressions()
    finally:
        runtime.close()
    report = off_policy(settings, feed_log, ["1"], resolve, rounds=300)
    assert report.logged_version == "1" and report.requests == 800 and report.impressions == 8_000
    (check,) = report.policies
    # the replay rebuilds the state the API served from: most slots are reproduced (exploration
    # draws and the worker's timing differ)
    assert check.agreement > 0.8
    for name in ("snips", "dr"):
        est = check.estimates[name]
        assert est.ci_low <= report.logged_ctr <= est.ci_high, (name, est, report.logged_ctr)
