"""The one training loop on Ray Train (2 workers of a 2-CPU local cluster): one worker is the local
fit to the last bit, two reach the local validation metric within the stated tolerance, and a
worker that dies is restarted or fails the fit with a clear error."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from recstack.config import ComputeConfig, Engine, Settings, TrainConfig
from recstack.data.interactions import Interactions
from recstack.scale.engine import EngineError
from recstack.train.batch import Batch, BatchLoader, ColumnRoles
from recstack.train.loop import Trainer
from recstack.train.recipes import TwoTowerRun, train_two_tower
from tests.scale.conftest import settings_for


def clustered(seed: int = 0) -> tuple[list[Interactions], int]:
    """Users who engage with items of their own cluster (10 clusters over 200 items); 8:1:1 split.
    Returns (train, valid, test) and the number of validation users."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 300, 200
    user_cluster, item_cluster = rng.integers(0, 10, n_users), rng.integers(0, 10, n_items)
    pairs = []
    for u in range(n_users):
        pool = np.flatnonzero(item_cluster == user_cluster[u])
        pairs += [(u, i) for i in rng.choice(pool, size=min(12, len(pool)), replace=False)]
    rows = np.array(pairs)
    rng.shuffle(rows)
    a, b = int(len(rows) * 0.8), int(len(rows) * 0.9)
    parts = [
        Interactions.from_indices(pd.DataFrame({"user_id": r[:, 0], "item_id": r[:, 1]}), n_users, n_items)
        for r in (rows[:a], rows[a:b], rows[b:])
    ]
    return parts, len(np.unique(rows[a:b, 0]))


def fit(root: Path, **env: str) -> TwoTowerRun:
    parts, _ = clustered()
    settings: Settings = settings_for(
        root, RECSTACK_TRAIN__EPOCHS="10", RECSTACK_TRAIN__LR="0.01", RECSTACK_TRAIN__BATCH_SIZE="256", **env
    )
    return train_two_tower(*parts, settings, run_name="tower")


def test_one_ray_worker_is_the_local_fit_and_two_reach_its_metric(ray_cluster: Any, tmp_path: Path) -> None:
    local = fit(tmp_path / "local")
    one = fit(tmp_path / "one", RECSTACK_COMPUTE__ENGINE="ray", RECSTACK_COMPUTE__WORKERS="1")
    two = fit(tmp_path / "two", RECSTACK_COMPUTE__ENGINE="ray", RECSTACK_COMPUTE__WORKERS="2")
    assert local.fit.best_metric is not None and one.fit.best_metric is not None
    # one worker runs the same loop on the same rows with the same seed and one thread
    assert one.fit.best_metric == local.fit.best_metric
    assert one.fit.best_epoch == local.fit.best_epoch
    for name, value in local.model.state_dict().items():
        assert torch.equal(one.model.state_dict()[name], value), name
    # two workers each take half of every epoch (DDP averages their gradients): a different path
    # to the same optimum. Tolerance: 3 standard errors of the difference of two recall@20
    # estimates over the validation users (binomial, p from the local fit), which is conservative
    # since both read the same users
    _, n_valid = clustered()
    p = local.fit.best_metric
    tolerance = 3 * math.sqrt(2 * p * (1 - p) / n_valid)
    assert two.fit.best_metric is not None
    assert abs(two.fit.best_metric - p) <= tolerance, (two.fit.best_metric, p, tolerance)
    assert p > 0.5  # far above chance (about 0.1 for 20 of 200 items): the fit learned the clusters
    assert two.fit.history and two.fit.checkpoint is not None and two.fit.checkpoint.exists()
    assert two.fit.samples_per_s > 0


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
