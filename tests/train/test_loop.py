from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from recstack.config import Settings, TrainConfig
from recstack.data.readers import read_movielens_100k
from recstack.data.splits import random_ratio_split
from recstack.errors import CheckpointError
from recstack.eval.metrics import full_ranking_eval
from recstack.train.batch import Batch, BatchLoader, ColumnRoles
from recstack.train.checkpoint import load_checkpoint, restore_model, save_checkpoint
from recstack.train.loop import Trainer, init_distributed, leave_distributed
from recstack.train.recipes import encode_split, train_mf_bpr
from recstack.train.tracking import MlflowTracker

from ..conftest import data_path


class Regression:
    """MSE of a linear model on dense column x against label y."""

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        pred = model(batch.dense["x"]).squeeze(-1)
        return ((pred - batch.labels["y"]) ** 2).mean()


def linear_data(n: int = 512) -> BatchLoader:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5], dtype=np.float32) + 0.3
    return BatchLoader({"x": x, "y": y}, ColumnRoles(dense=("x",), labels=("y",)), batch_size=64)


def config(**kw: object) -> TrainConfig:
    return TrainConfig(**{"progress": False, "epochs": 30, "lr": 0.05, **kw})  # type: ignore[arg-type]


def test_loop_fits_a_known_linear_model(tmp_path: Path) -> None:
    model = nn.Linear(3, 1)
    result = Trainer(config(), tmp_path).fit(model, Regression(), linear_data())
    assert result.history[-1]["loss"] < 1e-3
    assert model.weight.detach().numpy().ravel() == pytest.approx([1.0, -2.0, 0.5], abs=0.02)
    assert model.bias.item() == pytest.approx(0.3, abs=0.02)
    assert result.checkpoint is not None and result.checkpoint.exists()
    assert init_distributed() == (0, 1)


def test_a_process_group_left_is_joined_again_by_the_next_fit(tmp_path: Path) -> None:
    import torch.distributed as dist

    init_distributed()
    leave_distributed()
    assert not dist.is_initialized()
    leave_distributed()  # leaving twice (the exit hook after an explicit leave) is harmless
    Trainer(config(epochs=2), tmp_path).fit(nn.Linear(3, 1), Regression(), linear_data())
    assert dist.is_initialized() and dist.get_world_size() == 1


def test_early_stopping_restores_the_best_epoch(tmp_path: Path) -> None:
    scores = iter([0.1, 0.5, 0.4, 0.3, 0.2, 0.9])
    snapshots: list[torch.Tensor] = []

    def validate(model: nn.Module) -> dict[str, float]:
        snapshots.append(model.weight.detach().clone())  # type: ignore[operator]
        return {"score": next(scores)}

    model = nn.Linear(3, 1)
    result = Trainer(config(patience=3, lr=0.01), tmp_path).fit(
        model, Regression(), linear_data(), validate, "score"
    )
    assert (result.best_epoch, result.epochs_run, result.best_metric) == (2, 5, 0.5)
    assert torch.equal(model.weight.detach(), snapshots[1])


def test_plateau_schedule_cuts_the_learning_rate_after_a_validation_without_gain(tmp_path: Path) -> None:
    scores = iter([0.1, 0.5, 0.4, 0.3, 0.2])
    result = Trainer(config(patience=3, lr=0.01, schedule="plateau"), tmp_path).fit(
        nn.Linear(3, 1), Regression(), linear_data(), lambda model: {"score": next(scores)}, "score"
    )
    # the LR an epoch trained with: epoch 3 was the first without gain, so epoch 4 ran at a tenth
    assert [row["lr"] for row in result.history] == pytest.approx([0.01, 0.01, 0.01, 0.001, 0.0001])


def test_unknown_monitor_names_what_validation_returned(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match=r"no 'ndcg@10'.*\['auc'\]"):
        Trainer(config(epochs=1), tmp_path).fit(
            nn.Linear(3, 1), Regression(), linear_data(), lambda m: {"auc": 0.5}, "ndcg@10"
        )


def test_diverging_loss_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        Trainer(config(lr=1e6, optimizer="sgd"), tmp_path).fit(nn.Linear(3, 1), Regression(), linear_data())


def test_corrupt_and_mismatched_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(path)
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    save_checkpoint(path, {"model": nn.Linear(3, 1).state_dict()})
    with pytest.raises(CheckpointError, match="does not fit Linear"):
        restore_model(nn.Linear(4, 1), load_checkpoint(path), path)


def test_mlflow_tracking_records_params_and_metrics(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri, "tests", run_name="linear")
    result = Trainer(config(epochs=3), tmp_path, tracker).fit(nn.Linear(3, 1), Regression(), linear_data())
    assert result.run_id is not None
    run = MlflowClient(uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "3" and run.data.params["model"] == "Linear"
    assert run.data.metrics["loss"] == pytest.approx(result.history[-1]["loss"])
    history = MlflowClient(uri).get_metric_history(result.run_id, "loss")
    assert [h.step for h in history] == [1, 2, 3]


def test_a_stop_request_ends_the_run_as_killed_at_the_next_batch(tmp_path: Path) -> None:
    """A SIGINT/SIGTERM during training (``request_stop``) stops it at the next batch with
    KeyboardInterrupt, the run ended as KILLED; a second signal stops at once."""
    import signal

    from mlflow.tracking import MlflowClient

    from recstack.train.loop import STOP, request_stop

    class StopsAtBatch3(Regression):
        calls = 0

        def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
            self.calls += 1
            if self.calls == 3:
                request_stop(signal.SIGTERM, None)
            return super().loss(model, batch)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri, "tests", run_name="stopped")
    task = StopsAtBatch3()
    try:
        with pytest.raises(KeyboardInterrupt):
            Trainer(config(), tmp_path, tracker).fit(nn.Linear(3, 1), task, linear_data())
        assert task.calls == 3  # the batch under way finished; the next did not start
        assert (
            MlflowClient(uri)
            .search_runs([MlflowClient(uri).get_experiment_by_name("tests").experiment_id])[0]
            .info.status
            == "KILLED"
        )
        with pytest.raises(KeyboardInterrupt):  # a second signal while a stop is pending
            request_stop(signal.SIGINT, None)
    finally:
        STOP.clear()
    result = Trainer(config(epochs=2), tmp_path).fit(nn.Linear(3, 1), Regression(), linear_data())
    assert result.epochs_run == 2  # cleared: the next training runs


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import traceback

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank))
    try:
        torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
        model = nn.Linear(3, 1)
        # each rank sees half of every epoch: twice the epochs of the single-process test, same steps
        Trainer(config(epochs=60), Path(out) / f"r{rank}").fit(model, Regression(), linear_data())
        torch.save(model.state_dict(), Path(out) / f"model{rank}.pt")
        dist.barrier()  # neither rank leaves while the other still talks to it
        dist.destroy_process_group()
    except BaseException:
        (Path(out) / f"error{rank}.txt").write_text(traceback.format_exc())
        raise


@pytest.mark.slow
def test_two_process_gloo_training_keeps_replicas_identical(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    except mp.ProcessExitedException as e:  # a signal: say what each rank raised, if anything
        raised = {p.name: p.read_text() for p in tmp_path.glob("error*.txt")}
        pytest.fail(f"{e}; the ranks raised: {raised or 'nothing (a crash in native code)'}")
    a, b = (torch.load(tmp_path / f"model{r}.pt") for r in range(2))
    assert torch.equal(a["weight"], b["weight"])
    assert a["weight"].numpy().ravel() == pytest.approx([1.0, -2.0, 0.5], abs=0.05)


@pytest.mark.slow
def test_mf_bpr_on_movielens_100k_beats_popularity(settings: Settings) -> None:
    ratings = read_movielens_100k(data_path("movielens-100k")).ratings
    train, valid, test = encode_split(*random_ratio_split(ratings))
    quick = settings.model_copy(
        update={"train": settings.train.model_copy(update={"epochs": 8, "lr": 0.005, "batch_size": 1024})}
    )
    run = train_mf_bpr(train, valid, test, quick)
    counts = np.bincount(train.items, minlength=train.n_items).astype(np.float32)
    popularity = full_ranking_eval(
        lambda u: np.tile(counts, (len(u), 1)), test.csr(), (train.csr() + valid.csr()).tocsr(), (10,)
    )
    assert run.test_metrics["users"] == 943
    assert run.test_metrics["ndcg@10"] > popularity["ndcg@10"] + 0.02
    assert run.test_metrics["recall@10"] > 0.15


def _fit_mf(out: str, disturb: bool) -> None:
    """MF-BPR on a small fixed interaction set, in a fresh process; ``disturb`` draws random numbers
    first, as a process that did other work before training would."""
    import pandas as pd

    from recstack.config import load_settings
    from recstack.data.interactions import Interactions

    if disturb:
        torch.rand(1_000)
        np.random.rand(1_000)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"user_id": rng.integers(60, size=2_000), "item_id": rng.integers(80, size=2_000)})
    frame = frame.drop_duplicates().reset_index(drop=True)
    parts = [Interactions.from_indices(frame.iloc[i::3].reset_index(drop=True), 60, 80) for i in range(3)]
    settings = load_settings(
        None,
        {
            "RECSTACK_PATHS__STATE_DIR": out,
            "RECSTACK_TRACKING__ENABLED": "false",
            "RECSTACK_TRAIN__PROGRESS": "false",
            "RECSTACK_TRAIN__EPOCHS": "3",
            "RECSTACK_TRAIN__BATCH_SIZE": "128",
        },
    )
    run = train_mf_bpr(*parts, settings)
    torch.save(torch.load(run.fit.checkpoint, weights_only=True)["model"], Path(out) / "weights.pt")


def test_the_same_settings_train_the_same_weights_in_two_processes(tmp_path: Path) -> None:
    """Every model is seeded before it is built: two processes, one of which used its random
    generators first, train bit-identical MF-BPR weights."""
    context = mp.get_context("spawn")
    outs = [tmp_path / "a", tmp_path / "b"]
    for out, disturb in zip(outs, (False, True), strict=True):
        process = context.Process(target=_fit_mf, args=(str(out), disturb))
        process.start()
        process.join(300)
        assert process.exitcode == 0
    first, second = (torch.load(out / "weights.pt", weights_only=True) for out in outs)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_training_threads_default_to_the_cores_free(monkeypatch: pytest.MonkeyPatch) -> None:
    from recstack.train import loop

    monkeypatch.setattr(loop.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    for load, free in ((0.0, 4), (1.2, 3), (2.6, 1), (9.0, 1)):
        monkeypatch.setattr(loop.os, "getloadavg", lambda load=load: (load, load, load))
        assert loop.training_threads(None) == free
    assert loop.training_threads(7) == 7  # configured: taken as given
