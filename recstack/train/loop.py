"""The one training loop for every PyTorch model in recstack.

A task gives the loss (``task.loss(model, batch) -> scalar tensor``); the loop owns the optimizer,
the learning-rate schedule, gradient clipping, early stopping on a validation metric, checkpoints,
seeds, progress, and tracking. It runs under ``torch.distributed`` (gloo): world size 1 by default
(an in-process store), or whatever ``torchrun`` sets up, in which case the model is wrapped in
DistributedDataParallel and the loader reads one shard per rank. With ``[compute] engine = "ray"``
the same loop runs in each worker of Ray Train's TorchTrainer (``train/ray_train.py``), whose
process group it joins as it joins torchrun's.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from recstack.config import ComputeConfig, Engine, Optimizer, Schedule, TrainConfig
from recstack.train.batch import Batch, BatchLoader
from recstack.train.checkpoint import load_checkpoint, restore_model, save_checkpoint
from recstack.train.tracking import NullTracker, Tracker

log = logging.getLogger(__name__)

Validate = Callable[[nn.Module], dict[str, float]]


class Task(Protocol):
    """An objective: the loss of ``model`` on ``batch`` (a scalar tensor)."""

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor: ...


@dataclass
class FitResult:
    """What a fit did: the best validation metric and its epoch, per-epoch history, where the best
    weights are, and the tracking run id."""

    best_metric: float | None
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    run_id: str | None = None
    samples_per_s: float = 0.0


def free_cores() -> int:
    """The cores this process may use that are not busy: its CPU affinity minus the 1-minute load
    average, at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, round(cores - os.getloadavg()[0])))


def training_threads(configured: int | None) -> int:
    return configured if configured is not None else free_cores()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def init_distributed(backend: str = "gloo") -> tuple[int, int]:
    """Join the process group (torchrun's env:// when set, else a world of one); returns (rank, world)."""
    if not dist.is_initialized():
        if "MASTER_ADDR" in os.environ and "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend)
            # left to the interpreter's teardown, gloo's process group can abort the process as it
            # exits (SIGABRT); the group this call joined is left before that
            atexit.register(leave_distributed)
        else:
            store = dist.HashStore()  # type: ignore[attr-defined]
            dist.init_process_group(backend, store=store, rank=0, world_size=1)
    return dist.get_rank(), dist.get_world_size()


def leave_distributed() -> None:
    """Leave the process group this process joined (no barrier: a peer that died must not hang the
    exit)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def make_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer is Optimizer.adam:
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer is Optimizer.adamw:
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer is Optimizer.adagrad:
        return torch.optim.Adagrad(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)


def make_schedule(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if config.schedule is Schedule.cosine:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    if config.schedule is Schedule.linear_warmup:
        warmup = max(config.warmup_steps, 1)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    return None


STOP = threading.Event()  # set by ``request_stop``: training stops at the next batch


def request_stop(signum: int, frame: object) -> None:
    """A signal handler (SIGINT, SIGTERM) for training: the loop stops at its next batch, where no
    write is half done (the MLflow run is then ended as KILLED); a second signal stops at once."""
    del signum, frame
    if STOP.is_set():
        raise KeyboardInterrupt
    STOP.set()


def check_stop() -> None:
    """Raise KeyboardInterrupt when a stop was requested (called between batches and stages)."""
    if STOP.is_set():
        raise KeyboardInterrupt


def _stage(run_name: str) -> str:
    """What a progress bar calls the run: ``feed_heavy_ranker`` -> ``heavy ranker``."""
    return run_name.removeprefix("feed_").replace("_", " ").replace("two tower", "two-tower")


def _agreed(metric: float, world: int) -> float:
    """Rank 0's validation metric on every rank, so that all ranks keep, stop and schedule alike
    (their weights are equal under DDP, but their arithmetic may differ in the last bit)."""
    if world == 1:
        return metric
    value = torch.tensor([metric], dtype=torch.float64)
    dist.broadcast(value, src=0)
    return float(value.item())


def _world_throughput(samples: int, busy: float, world: int) -> tuple[int, float]:
    """(samples of all ranks, the slowest rank's busy seconds): the world's throughput."""
    if world == 1:
        return samples, busy
    values = torch.tensor([float(samples), busy], dtype=torch.float64)
    total = values.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return int(total[0].item()), float(values[1].item())


class Trainer:
    """Fits a model with a task. ``run_name`` names the checkpoint folder and the tracking run."""

    def __init__(
        self,
        config: TrainConfig,
        checkpoint_dir: Path,
        tracker: Tracker | None = None,
        run_name: str = "run",
        compute: ComputeConfig | None = None,
    ) -> None:
        self.config = config
        self.checkpoint_dir = Path(checkpoint_dir)
        self.tracker: Tracker = tracker or NullTracker()
        self.run_name = run_name
        self.compute = compute  # engine = ray: fit in Ray Train's workers

    def fit(
        self,
        model: nn.Module,
        task: Task,
        train: BatchLoader,
        validate: Validate | None = None,
        monitor: str = "loss",
        params: dict[str, object] | None = None,
    ) -> FitResult:
        """Train until ``epochs`` or until ``monitor`` (higher is better) stops improving for
        ``patience`` validations; the model ends holding the best weights. Without ``validate``,
        the last epoch's weights are kept."""
        if self.compute is not None and self.compute.engine == Engine.ray:
            from recstack.train.ray_train import fit_on_ray

            return fit_on_ray(self, self.compute, model, task, train, validate, monitor, params)
        cfg = self.config
        seed_everything(cfg.seed)
        torch.set_num_threads(training_threads(cfg.num_threads))
        rank, world = init_distributed(cfg.backend)
        train.shard(rank, world)
        train.seed = cfg.seed
        net: nn.Module = nn.parallel.DistributedDataParallel(model) if world > 1 else model
        task_params = list(getattr(task, "parameters", list)())  # e.g. a learned temperature
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad] + task_params, cfg)
        schedule = make_schedule(optimizer, cfg, cfg.epochs * len(train))
        plateau = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=0.1, patience=0, min_lr=1e-6
            )
            if cfg.schedule is Schedule.plateau and validate is not None
            else None
        )
        best_path = self.checkpoint_dir / "best.pt"
        self.tracker.log_params(
            {
                **cfg.model_dump(mode="json"),
                **(params or {}),
                "world_size": world,
                "model": type(model).__name__,
                "task": type(task).__name__,
            }
        )
        result = FitResult(best_metric=None, best_epoch=-1, epochs_run=0)
        stale, samples, busy = 0, 0, 0.0
        status = "FAILED"
        try:
            for epoch in range(cfg.epochs):
                net.train()
                started = time.perf_counter()
                total, batches = 0.0, 0
                bar = tqdm(
                    train,
                    desc=f"{_stage(self.run_name)} epoch {epoch + 1}/{cfg.epochs}",
                    leave=False,
                    disable=not cfg.progress or rank != 0,
                )
                for batch in bar:
                    check_stop()
                    loss = task.loss(net, batch)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"loss became {loss.item()} at epoch {epoch + 1}; "
                            "lower the learning rate or clip gradients"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()  # type: ignore[no-untyped-call]
                    if cfg.grad_clip is not None:
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    optimizer.step()
                    if schedule is not None:
                        schedule.step()
                    total += float(loss.detach())
                    batches += 1
                    samples += len(batch)
                busy += time.perf_counter() - started
                row = {
                    "epoch": float(epoch + 1),
                    "loss": total / max(batches, 1),
                    "lr": float(optimizer.param_groups[0]["lr"]),
                }
                result.epochs_run = epoch + 1
                if validate is not None and (epoch + 1) % cfg.validate_every == 0:
                    net.eval()
                    with torch.no_grad():
                        row |= {f"val_{k}": v for k, v in validate(model).items()}
                    metric = row.get(f"val_{monitor}", -row["loss"] if monitor == "loss" else math.nan)
                    metric = _agreed(metric, world)
                    if math.isnan(metric):
                        raise KeyError(
                            f"validation returned no '{monitor}'; it returned "
                            f"{sorted(k[4:] for k in row if k.startswith('val_'))}"
                        )
                    if plateau is not None:
                        plateau.step(metric)
                    if result.best_metric is None or metric > result.best_metric:
                        result.best_metric, result.best_epoch, stale = metric, epoch + 1, 0
                        if rank == 0:
                            save_checkpoint(
                                best_path,
                                {
                                    "model": model.state_dict(),
                                    "epoch": epoch + 1,
                                    "metric": metric,
                                    "monitor": monitor,
                                },
                            )
                    else:
                        stale += 1
                result.history.append(row)
                self.tracker.log_metrics(row, step=epoch + 1)
                log.info("epoch %d: %s", epoch + 1, {k: round(v, 5) for k, v in row.items()})
                if stale >= cfg.patience:
                    break
            if rank == 0:  # the other ranks' weights are dropped (their folder may not be rank 0's)
                if result.best_epoch > 0:
                    restore_model(model, load_checkpoint(best_path), best_path)
                else:
                    save_checkpoint(best_path, {"model": model.state_dict(), "epoch": result.epochs_run})
                result.checkpoint = best_path
            samples, busy = _world_throughput(samples, busy, world)
            result.samples_per_s = samples / busy if busy else 0.0
            self.tracker.log_metrics({"samples_per_s": result.samples_per_s}, step=result.epochs_run)
            status = "FINISHED"
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as the CLI turns it into one
            status = "KILLED"
            raise
        finally:
            result.run_id = self.tracker.run_id
            self.tracker.end(status)
        return result
