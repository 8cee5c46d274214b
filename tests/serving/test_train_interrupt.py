"""``recstack train --feed`` stopped by SIGTERM (as by Ctrl-C): it says so, exits 130, leaves no
MLflow run RUNNING and nothing registered, and the next run starts clean and registers version 1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from recstack.data.simulator import World
from recstack.events.parquet import ParquetEventLog
from tests.serving.conftest import feed_settings


def test_sigterm_during_training_ends_the_runs_as_killed_and_a_rerun_starts_clean(
    feed_world: tuple[World, Path, Path], feed_log: ParquetEventLog, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    from recstack.registry import Registry

    env = os.environ | {
        "RECSTACK_PATHS__STATE_DIR": str(tmp_path / "state"),
        "RECSTACK_EVENT_LOG__PATH": str(feed_log.root),
        "RECSTACK_TRAIN__PROGRESS": "false",
        "RECSTACK_TRAIN__EPOCHS": "200",  # long enough to be stopped in the middle
        "RECSTACK_TRAIN__PATIENCE": "200",
        "RECSTACK_TWO_TOWER__DIM": "16",
        "RECSTACK_RETRIEVAL__INDEX": "flat",
    }
    command = [str(Path(sys.executable).with_name("recstack")), "train", "--feed"]
    settings = feed_settings(tmp_path / "state")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    best = tmp_path / "state" / "checkpoints" / "feed_two_tower" / "best.pt"
    while not best.exists():  # until the two-tower's first epoch is done: training is under way
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()  # type: ignore[union-attr]
        time.sleep(0.2)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert "training interrupted: nothing was registered" in output and "marked KILLED" in output
    client = MlflowClient(tracking_uri=settings.tracking_uri())
    experiment = client.get_experiment_by_name(settings.tracking.experiment)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    statuses = {run.info.status for run in runs}
    assert runs and "RUNNING" not in statuses  # a run under way is KILLED (tests/train/test_loop.py)
    assert Registry(settings).versions() == []

    env |= {"RECSTACK_TRAIN__EPOCHS": "1"}
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "registered version 1" in rerun.stdout
