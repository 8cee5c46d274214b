"""The one training loop on Ray Train: ``Trainer.fit`` in every worker of a TorchTrainer.

``fit_on_ray`` ships the model, the task, the loader and the validation function to the workers
through Ray's object store, with ``[train] batch_size`` split between the workers (it stays the
global batch, so an epoch makes as many optimizer steps as locally). Each worker runs the
unchanged loop (``Trainer.fit`` with the local engine): it joins the process group Ray Train set
up (gloo on CPU, NCCL with ``use_gpu``), wraps the model in DistributedDataParallel and reads its
shard of every epoch; DDP averages the gradients of each step. Rank 0 reports the best weights as
a Ray Train checkpoint; the driver loads them into its model, writes ``best.pt`` where the local
loop would, and logs the run (parameters, every epoch's metrics) to the tracker as the local loop
does.

A worker that dies makes Ray Train restart the group up to ``[compute] max_failures`` times; the
fit then starts again from its seed (it keeps no mid-fit state). When the restarts are spent the
fit raises an EngineError and the caller registers nothing.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from recstack.config import ComputeConfig, Engine
from recstack.scale.engine import EngineError, connect
from recstack.train.batch import BatchLoader
from recstack.train.checkpoint import save_checkpoint
from recstack.train.tracking import NullTracker

if TYPE_CHECKING:
    from recstack.train.loop import FitResult, Task, Trainer, Validate


def _worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: the local loop on this worker's shard."""
    import ray
    import ray.train

    from recstack.train.loop import Trainer

    (train_config, folder, run_name, model, task, loader, validate, monitor, params) = ray.get(
        config["payload"][0]
    )
    local = Trainer(train_config, Path(folder), NullTracker(), run_name)
    fit = local.fit(model, task, loader, validate, monitor, params)
    metrics = {
        "best_metric": fit.best_metric if fit.best_metric is not None else float("nan"),
        "best_epoch": fit.best_epoch,
        "epochs_run": fit.epochs_run,
        "samples_per_s": fit.samples_per_s,
        "history": json.dumps(fit.history),
    }
    if ray.train.get_context().get_world_rank() == 0:
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(model.state_dict(), Path(tmp) / "model.pt")
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report(metrics)


def fit_on_ray(
    trainer: Trainer,
    compute: ComputeConfig,
    model: nn.Module,
    task: Task,
    loader: BatchLoader,
    validate: Validate | None,
    monitor: str,
    params: dict[str, object] | None,
) -> FitResult:
    """What ``trainer.fit`` returns, trained by ``compute.workers`` Ray Train workers; ``model``
    ends holding the best weights."""
    from recstack.train.loop import FitResult

    ray = connect(compute)
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    threads = compute.cpus_per_worker
    config = trainer.config.model_copy(
        update={"progress": False, "num_threads": threads, "backend": "nccl" if compute.use_gpu else "gloo"}
    )
    folder = trainer.checkpoint_dir.resolve()
    # [train] batch_size stays the global batch: each of w workers takes 1/w of it, so an epoch
    # makes as many optimizer steps as the local fit's (DDP averages the w gradients of a step)
    loader = copy.copy(loader)
    loader.batch_size = max(1, loader.batch_size // compute.workers)
    payload = ray.put(
        (config, str(folder), trainer.run_name, model, task, loader, validate, monitor, params or {})
    )
    run = TorchTrainer(
        _worker,
        train_loop_config={"payload": [payload]},  # in a list: Ray passes the reference, not the object
        scaling_config=ScalingConfig(
            num_workers=compute.workers,
            use_gpu=compute.use_gpu,
            resources_per_worker={"CPU": threads, **({"GPU": 1} if compute.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=trainer.run_name,
            storage_path=str(folder / "ray"),
            failure_config=FailureConfig(max_failures=compute.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )
    world = {
        "world_size": compute.workers,
        "engine": Engine.ray.value,
        "cpus_per_worker": threads,
        "use_gpu": compute.use_gpu,
    }
    trainer.tracker.log_params(
        {**config.model_dump(mode="json"), **(params or {}), **world, "model": type(model).__name__}
    )
    status = "FAILED"
    try:
        try:
            result = run.fit()
        except Exception as exc:  # TrainingFailedError and what Ray raises when it cannot schedule
            raise EngineError(
                f"training '{trainer.run_name}' failed on Ray after {compute.max_failures} restart(s) of "
                f"the worker group ([compute] max_failures): {type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}. Nothing was registered"
            ) from exc
        if result.checkpoint is None or result.metrics is None:
            raise EngineError(f"training '{trainer.run_name}' on Ray reported no weights")
        with result.checkpoint.as_directory() as where:
            state = torch.load(Path(where) / "model.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        best_path = folder / "best.pt"
        save_checkpoint(best_path, {"model": model.state_dict(), "epoch": int(result.metrics["best_epoch"])})
        history: list[dict[str, float]] = json.loads(result.metrics["history"])
        for row in history:
            trainer.tracker.log_metrics(row, step=int(row["epoch"]))
        best = float(result.metrics["best_metric"])
        fit = FitResult(
            best_metric=None if best != best else best,  # NaN: no validation
            best_epoch=int(result.metrics["best_epoch"]),
            epochs_run=int(result.metrics["epochs_run"]),
            history=history,
            checkpoint=best_path,
            samples_per_s=float(result.metrics["samples_per_s"]),
        )
        trainer.tracker.log_metrics({"samples_per_s": fit.samples_per_s}, step=max(fit.epochs_run, 1))
        status = "FINISHED"
    finally:
        fit_run_id = trainer.tracker.run_id
        trainer.tracker.end(status)
    fit.run_id = fit_run_id
    return fit
