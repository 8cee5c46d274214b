"""Experiment tracking: MLflow (SQLite under the state dir by default) or nothing."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Protocol


class Tracker(Protocol):
    """Where a run's parameters and metrics go."""

    run_id: str | None

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def end(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Tracks nothing (tracking disabled)."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        del params

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        del metrics, step

    def end(self, status: str = "FINISHED") -> None:
        del status


_OPEN: dict[str, MlflowTracker] = {}  # runs started in this process and not ended yet


def end_open_runs(status: str = "KILLED") -> int:
    """End every run this process started and did not end (an interrupted training's); returns
    how many."""
    open_runs = list(_OPEN.values())
    for tracker in open_runs:
        tracker.end(status)
    return len(open_runs)


class MlflowTracker:
    """One MLflow run. ``uri`` like ``sqlite:///.recstack/mlflow.db`` or a server URL."""

    def __init__(
        self, uri: str, experiment: str, run_name: str | None = None, tags: Mapping[str, str] | None = None
    ) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        run = self.client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {}))
        self.run_id: str | None = run.info.run_id
        _OPEN[run.info.run_id] = self

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        assert self.run_id is not None
        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        assert self.run_id is not None
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id,
            metrics=[Metric(k.replace("@", "_at_"), float(v), now, step) for k, v in metrics.items()],
        )

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            _OPEN.pop(self.run_id, None)
            self.client.set_terminated(self.run_id, status=status)
            self.run_id = None
