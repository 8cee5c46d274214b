"""Bad input for the Ray engine: Ray missing, a cluster out of reach, workers that cannot see the
log, a task whose worker dies (Ray retries it; recstack says when retries ran out)."""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from recstack.cli import app
from recstack.config import ComputeConfig, Engine
from recstack.scale import engine
from recstack.scale.data import read_events
from recstack.scale.engine import EngineError, check_visible, connect, job, reachable, require_ray


def test_no_ray_installed_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(EngineError, match=r'pip install "recstack\[scale\]"'):
        require_ray()
    with pytest.raises(EngineError, match="engine = 'local'"):
        connect(ComputeConfig(engine=Engine.ray))
    # through the command: exit 1 with the message, nothing written
    (tmp_path / "recstack.toml").write_text(
        f'[paths]\nstate_dir = "{tmp_path}"\n[tracking]\nenabled = false\n'
    )
    from recstack.events.parquet import ParquetEventLog
    from recstack.schema import ItemUpsert, events_to_table

    log = ParquetEventLog(tmp_path / "events")
    upsert = ItemUpsert(event_id="e1", timestamp=datetime.now(UTC), item_id="i1", attributes={"topic": "a"})
    log.append_table(events_to_table([upsert]))
    log.close()
    result = CliRunner().invoke(
        app, ["features", "materialize", "-c", str(tmp_path / "recstack.toml"), "--engine", "ray"]
    )
    assert result.exit_code == 1
    assert "recstack[scale]" in result.output.replace("\n", "")
    assert not (tmp_path / "training_set").exists()


def test_a_cluster_that_cannot_be_reached_fails_fast_with_the_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = time.perf_counter()
    with pytest.raises(EngineError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:1"):
        reachable("127.0.0.1:1", 2.0)
    with pytest.raises(EngineError, match="cannot reach"):
        reachable("ray://127.0.0.1:1", 2.0)
    assert time.perf_counter() - started < 10  # a closed port answers at once; never ray.init's minutes
    with pytest.raises(EngineError, match="is not host:port"):
        reachable("head-node", 1.0)
    reachable("auto", 1.0)  # Ray finds a local cluster itself
    pytest.importorskip("ray")
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    called: list[Any] = []
    monkeypatch.setattr(ray, "init", lambda *a, **k: called.append(k))
    with pytest.raises(EngineError, match="connect_timeout_s"):
        connect(ComputeConfig(engine=Engine.ray, address="127.0.0.1:1", connect_timeout_s=1))
    assert called == []  # refused before Ray was asked to join


def test_workers_that_cannot_see_the_log_are_named(ray_cluster: Any, tmp_path: Path) -> None:
    seen = tmp_path / "part-000000000001.parquet"
    seen.write_bytes(b"")
    check_visible([str(seen)])  # every node sees it
    missing = str(tmp_path / "elsewhere" / "part-000000000002.parquet")
    with pytest.raises(
        EngineError, match=r"cannot see the event log: .*part-000000000002.*shared file system"
    ):
        check_visible([str(seen), missing])
    with pytest.raises(EngineError, match="cannot see the event log"):
        read_events([missing])  # what a worker raises when the log vanished after the check


def test_a_task_whose_worker_dies_is_retried_and_then_fails_clearly(ray_cluster: Any, tmp_path: Path) -> None:
    ray = ray_cluster
    marker = tmp_path / "died"
    blocks = [pa.table({"a": list(range(n * 10, n * 10 + 10))}) for n in range(4)]

    def dies_once(batch: pa.Table) -> pa.Table:
        if not marker.exists():
            marker.write_text("died")
            os._exit(1)
        return batch

    compute = ComputeConfig(engine=Engine.ray, task_retries=2)
    with job("a test job", compute):
        out = ray.data.from_arrow(blocks).map_batches(
            dies_once, batch_size=None, batch_format="pyarrow", max_retries=compute.task_retries
        )
        rows = pa.concat_tables(ray.get(out.to_arrow_refs()))
    assert marker.exists() and sorted(rows.column("a").to_pylist()) == list(range(40))

    def always_dies(batch: pa.Table) -> pa.Table:
        os._exit(1)

    compute = ComputeConfig(engine=Engine.ray, task_retries=1)
    failed = pytest.raises(
        EngineError, match=r"a test job failed on Ray after 1 retries.*Nothing was written"
    )
    with failed, job("a test job", compute):
        out = ray.data.from_arrow(blocks).map_batches(
            always_dies, batch_size=None, batch_format="pyarrow", max_retries=compute.task_retries
        )
        ray.get(out.to_arrow_refs())


def test_an_error_raised_on_purpose_in_a_task_comes_back_as_it_is(ray_cluster: Any) -> None:
    ray = ray_cluster
    compute = ComputeConfig(engine=Engine.ray)

    def refuses(batch: pa.Table) -> pa.Table:
        raise engine.EngineError("the workers on node-7 cannot see the event log: x")

    with pytest.raises(EngineError, match="node-7 cannot see"), job("a test job", compute):
        ray.get(
            ray.data.from_arrow([pa.table({"a": [1]})])
            .map_batches(refuses, batch_format="pyarrow")
            .to_arrow_refs()
        )
