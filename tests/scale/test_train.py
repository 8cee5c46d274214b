"""The one training loop on Ray Train (2 workers of a 2-CPU local cluster): two workers reach the
local fit's validation metric within the stated tolerance (and its weights), and a worker that
dies is restarted, then fails the fit with a clear error. (The two-tower on Ray is in
test_cli.py: `train --feed --engine ray`.)"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from recstack.config import ComputeConfig, Engine, Settings, TrainConfig
from recstack.scale.engine import EngineError
from recstack.train.batch import Batch, BatchLoader, ColumnRoles
from recstack.train.loop import FitResult, Trainer
from recstack.train.ranking import NeuralRanker
from tests.scale.conftest import settings_for


def click_frames(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Clicks that depend on the (user, item) pair and an hour feature: 3,000 training rows (every
    batch of 256 and the last one split into equal halves) and 1,000 validation rows."""
    rng = np.random.default_rng(seed)
    n = 4_000
    users, items = rng.integers(0, 60, n), rng.integers(0, 80, n)
    hour = rng.integers(0, 24, n).astype(np.float64)
    logit = np.sin(users * 0.7) * np.cos(items * 0.3) * 2.5 + (hour - 12) / 12
    click = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    frame = pd.DataFrame(
        {"user_id": users.astype(str), "item_id": items.astype(str), "hour": hour, "click": click}
    )
    return frame.iloc[:3_000].reset_index(drop=True), frame.iloc[3_000:].reset_index(drop=True)


def fit(root: Path, **env: str) -> tuple[FitResult, nn.Module]:
    train, valid = click_frames()
    settings: Settings = settings_for(
        root,
        RECSTACK_TRAIN__EPOCHS="4",
        RECSTACK_TRAIN__LR="0.01",
        RECSTACK_TRAIN__BATCH_SIZE="256",
        RECSTACK_RANKING__MODEL="dcn_v2",
        RECSTACK_RANKING__TASKS='{"click": 1.0}',
        **env,
    )
    ranker = NeuralRanker(settings, ["user_id", "item_id"], ["hour"], run_name="dcn")
    result = ranker.fit(train, valid)
    assert ranker.model is not None
    return result, ranker.model


def test_two_ray_workers_reach_the_local_fit(ray_cluster: Any, tmp_path: Path) -> None:
    local, local_model = fit(tmp_path / "local")
    two, two_model = fit(tmp_path / "two", RECSTACK_COMPUTE__ENGINE="ray", RECSTACK_COMPUTE__WORKERS="2")
    assert local.best_metric is not None and local.best_metric > 0.6  # the fit learned the pairs
    # two workers: each step's two half-batches are the even and odd rows of the local batch, and
    # DDP averages their mean gradients, which is the local batch's mean gradient (a pointwise loss,
    # no batch norm, no dropout). The fits differ only by float rounding in the sums, so the
    # validation AUC agrees to well within 1e-3 (a tolerance far above rounding, far below what
    # one changed step would move)
    assert two.best_metric is not None
    assert abs(two.best_metric - local.best_metric) < 1e-3, (two.best_metric, local.best_metric)
    assert two.best_epoch == local.best_epoch
    for name, value in local_model.state_dict().items():  # the same weights, but for rounding
        assert torch.allclose(two_model.state_dict()[name], value, atol=1e-4), name
    assert two.history and two.checkpoint is not None and two.checkpoint.exists()
    assert two.samples_per_s > 0


class Regression:
    """MSE of a linear model; on rank 1 of a Ray Train group, the first batch of each attempt kills
    the worker's process, counting the attempts in a file."""

    def __init__(self, attempts: Path) -> None:
        self.attempts = attempts
        self.counted = False

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        if not self.counted:
            import ray.train

            self.counted = True
            if ray.train.get_context().get_world_rank() == 1:
                done = int(self.attempts.read_text()) if self.attempts.exists() else 0
                self.attempts.write_text(str(done + 1))
                os._exit(1)
        pred = model(batch.dense["x"]).squeeze(-1)
        return ((pred - batch.labels["y"]) ** 2).mean()


def linear_data() -> BatchLoader:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 3)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5], dtype=np.float32) + 0.3
    return BatchLoader({"x": x, "y": y}, ColumnRoles(dense=("x",), labels=("y",)), batch_size=64)


def test_a_worker_that_dies_is_restarted_then_fails_the_fit_clearly(ray_cluster: Any, tmp_path: Path) -> None:
    """Ray Train restarts the group once (max_failures = 1): the worker dies again, and the fit
    fails with an error that says so; the model keeps its weights (nothing to register)."""
    config = TrainConfig(progress=False, epochs=3, lr=0.05, num_threads=1)
    compute = ComputeConfig(engine=Engine.ray, workers=2, max_failures=1)
    model = nn.Linear(3, 1)
    before = model.weight.detach().clone()
    attempts = tmp_path / "attempts"
    trainer = Trainer(config, tmp_path / "run", compute=compute)
    with pytest.raises(EngineError, match=r"failed on Ray after 1 restart.*Nothing was registered"):
        trainer.fit(model, Regression(attempts), linear_data())
    assert attempts.read_text() == "2"  # the first attempt and Ray's one restart
    assert torch.equal(model.weight.detach(), before)
