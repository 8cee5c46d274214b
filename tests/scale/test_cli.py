"""The user's path on Ray: `recstack train --feed --engine ray` registers a bundle whose rankers
serve, and `recstack candidates --engine ray` retrieves for every user of the log from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from typer.testing import CliRunner

from recstack.cli import app


def test_train_feed_and_candidates_on_ray(ray_cluster: Any, sim_log: Path, tmp_path: Path) -> None:
    shutil.copytree(sim_log / "events", tmp_path / "events")
    config = tmp_path / "recstack.toml"
    config.write_text(
        f'[paths]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[event_log]\npath = "{tmp_path / "events"}"\n'
        "[tracking]\nenabled = false\n"
        "[train]\nepochs = 2\nbatch_size = 512\nnum_threads = 1\nprogress = false\n"
        "[two_tower]\ndim = 16\nhidden = [32]\nhistory = 10\n"
        '[retrieval]\nindex = "flat"\n'
        # the two-tower trains on Ray here; the neural rankers on Ray are test_train.py's (lean CI)
        '[ranking]\nmodel = "lr"\nlight = "lr"\n'
        "[compute]\nworkers = 2\n"
    )
    runner = CliRunner()
    trained = runner.invoke(app, ["train", "--feed", "-c", str(config), "--engine", "ray"])
    assert trained.exit_code == 0, trained.output
    assert "registered version 1" in trained.output and "promoted to champion" in trained.output
    bundle = next((tmp_path / "state").rglob("bundle.json"))
    meta = json.loads(bundle.read_text())
    assert meta["metrics"]["auc_click"] > 0  # the ranker trained and was scored on the holdout
    assert (bundle.parent / "heavy" / "ranker.json").exists()
    assert (bundle.parent / "retriever" / "index").exists()
    # the two-tower was trained by two Ray Train workers
    assert (tmp_path / "state" / "checkpoints" / "feed_two_tower" / "ray").exists()

    out = tmp_path / "candidates.parquet"
    found = runner.invoke(
        app, ["candidates", "-c", str(config), "--engine", "ray", "--k", "5", "--out", str(out)]
    )
    assert found.exit_code == 0, found.output
    table = pq.read_table(out)
    assert table.column_names == ["user_id", "rank", "item_id", "score"]
    users = set(table.column("user_id").to_pylist())
    assert len(users) >= 90 and table.num_rows == 5 * len(users)  # 100 simulated users, most known
