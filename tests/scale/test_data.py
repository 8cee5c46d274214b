"""The join and feature jobs on a 2-CPU Ray cluster give exactly the local path's rows: the
features alone, then the command's training set of a window (the join's rows and every feature)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from recstack.cli import app
from recstack.events.join import join_engagements
from recstack.events.parquet import ParquetEventLog
from recstack.features.offline import materialize
from recstack.scale.data import _blocks, materialize_on_ray, shard_of
from tests.scale.conftest import settings_for


def same_columns(a: pa.Table, b: pa.Table) -> None:
    """Equal tables, column by column; NaN equals NaN (a NaN feature value is 'no value')."""
    assert a.column_names == b.column_names
    assert a.num_rows == b.num_rows
    for name in a.column_names:
        x, y = a.column(name), b.column(name)
        if pa.types.is_floating(x.type):
            assert np.array_equal(x.to_numpy(), y.to_numpy(), equal_nan=True), name
        else:
            assert x.equals(y), name


def test_shards_are_the_same_in_every_process_and_cover_every_row(sim_log: Path) -> None:
    ids = pa.array(["u1", "u2", None, "u1", "item-9"])
    first, again = shard_of(ids, 4), shard_of(ids, 4)
    assert first.tolist() == again.tolist() and first[0] == first[3]
    assert ((first >= 0) & (first < 4)).all()
    log = ParquetEventLog(sim_log / "events")
    rows = join_engagements(log.table()).table.select(["timestamp", "user_id", "item_id"])
    blocks = _blocks(rows, "user", 3)
    assert sum(b.num_rows for b in blocks) == rows.num_rows
    assert max(b.num_rows for b in blocks) <= -(-rows.num_rows // 3)


def test_materialize_on_ray_gives_the_local_values(ray_cluster: Any, sim_log: Path) -> None:
    settings = settings_for(sim_log, RECSTACK_COMPUTE__PARTITIONS="5")
    log = ParquetEventLog(sim_log / "events")
    events = log.table()
    rows = join_engagements(events).table.select(["timestamp", "user_id", "item_id", "surface", "context"])
    features = list(settings.features)
    local = materialize(events, rows, features)
    remote = materialize_on_ray(settings, rows, features)
    same_columns(remote, local)
    # the values are not trivially empty: counters counted, sequences hold items
    assert pa.compute.sum(local.column("item_impressions_1d")).as_py() > 0
    assert any(local.column("user_last_items").to_pylist())


def test_features_materialize_writes_the_same_rows_on_both_engines(
    ray_cluster: Any, sim_log: Path, tmp_path: Path
) -> None:
    (tmp_path / "recstack.toml").write_text(
        f'[paths]\nstate_dir = "{tmp_path / "state"}"\n[event_log]\npath = "{sim_log / "events"}"\n'
        "[tracking]\nenabled = false\n"
    )
    runner = CliRunner()
    config = str(tmp_path / "recstack.toml")
    times = ParquetEventLog(sim_log / "events").table().column("timestamp").to_pylist()
    since = (min(times) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")  # a window of the log
    until = (min(times) + (max(times) - min(times)) * 0.8).strftime("%Y-%m-%dT%H:%M:%S")
    for engine in ("local", "ray"):
        out = str(tmp_path / engine)
        args = [
            "features",
            "materialize",
            "-c",
            config,
            "--engine",
            engine,
            "--since",
            since,
            "--until",
            until,
        ]
        result = runner.invoke(app, [*args, "--out", out])
        assert result.exit_code == 0, result.output
        assert f"on {engine}" in result.output
    local = pq.read_table(tmp_path / "local" / "rows.parquet")
    remote = pq.read_table(tmp_path / "ray" / "rows.parquet")
    everything = join_engagements(ParquetEventLog(sim_log / "events").table()).table
    assert 1_000 < local.num_rows < everything.num_rows
    same_columns(remote, local)  # the labelled impressions of the window, then every feature
    assert (tmp_path / "ray" / "features.json").exists()


def test_the_join_and_features_need_the_parquet_log(sim_log: Path) -> None:
    from recstack.scale.data import event_files
    from recstack.scale.engine import EngineError

    with pytest.raises(EngineError, match="Parquet event log"):
        event_files(settings_for(sim_log, RECSTACK_EVENT_LOG__BACKEND="redis"))
    with pytest.raises(EngineError, match="holds no Parquet files"):
        event_files(settings_for(sim_log, RECSTACK_EVENT_LOG__PATH=str(sim_log / "nothing-here")))
