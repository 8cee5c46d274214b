"""Ready-made training runs that wire data, model, task, loop and metrics together."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch import nn

from recstack.config import Settings
from recstack.data.interactions import Interactions, Vocabulary
from recstack.data.sampling import UniformNegatives
from recstack.errors import CheckpointError
from recstack.eval.metrics import full_ranking_eval
from recstack.models.mf import MatrixFactorization
from recstack.tasks.bpr import BPRTask
from recstack.train.batch import BatchLoader, ColumnRoles
from recstack.train.loop import FitResult, Trainer, seed_everything
from recstack.train.tracking import MlflowTracker, NullTracker, Tracker


@dataclass
class RankingRun:
    """A trained model with its fit summary and test metrics (full ranking, seen items masked)."""

    model: MatrixFactorization
    fit: FitResult
    test_metrics: dict[str, float]


def make_tracker(settings: Settings, run_name: str, tags: dict[str, str] | None = None) -> Tracker:
    if not settings.tracking.enabled:
        return NullTracker()
    settings.paths.state_dir.mkdir(parents=True, exist_ok=True)
    return MlflowTracker(settings.tracking_uri(), settings.tracking.experiment, run_name, tags)


def make_trainer(settings: Settings, run_name: str, tracker: Tracker | None = None) -> Trainer:
    """The one training loop with this run's checkpoint folder (``[train] checkpoint_dir`` or
    ``<state_dir>/checkpoints``, then the run name) and tracker (MLflow unless turned off)."""
    folder = (settings.train.checkpoint_dir or settings.paths.state_dir / "checkpoints") / run_name
    return Trainer(
        settings.train, Path(folder), tracker or make_tracker(settings, run_name), run_name, settings.compute
    )


def encode_split(
    train: pd.DataFrame, valid: pd.DataFrame, test: pd.DataFrame
) -> tuple[Interactions, Interactions, Interactions]:
    """Index-encode a split with vocabularies over all three parts (full-ranking protocols rank the
    whole catalog, including items seen only in validation or test)."""
    users = Vocabulary.fit(train["user_id"], valid["user_id"], test["user_id"])
    items = Vocabulary.fit(train["item_id"], valid["item_id"], test["item_id"])
    return (
        Interactions.encode(train, users, items),
        Interactions.encode(valid, users, items),
        Interactions.encode(test, users, items),
    )


def train_mf_bpr(
    train: Interactions,
    valid: Interactions,
    test: Interactions,
    settings: Settings,
    run_name: str = "mf_bpr",
    tracker: Tracker | None = None,
    mask_validation: bool = True,
) -> RankingRun:
    """Fit MF with BPR; early-stop on validation (training items masked); report test once with
    training items masked, and validation items too when ``mask_validation`` (RecBole's protocol;
    the BARS protocol masks training items only)."""
    train_m, valid_m, test_m = train.csr(), valid.csr(), test.csr()
    seed_everything(settings.train.seed)  # before the model is built: its initial weights
    model = MatrixFactorization(train.n_users, train.n_items, settings.mf.dim)
    loader = BatchLoader(
        {"user": train.users, "item": train.items},
        ColumnRoles(sparse=("user", "item", "neg_item")),
        batch_size=settings.train.batch_size,
        transform=UniformNegatives(train_m),
    )
    ks = settings.eval.ks

    def scorer(net: nn.Module) -> object:
        def score(users: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return net.score_all(torch.from_numpy(users)).numpy()  # type: ignore[operator,no-any-return]

        return score

    def validate(net: nn.Module) -> dict[str, float]:
        return full_ranking_eval(scorer(net), valid_m, train_m, ks)  # type: ignore[arg-type]

    trainer = make_trainer(settings, run_name, tracker)
    fit = trainer.fit(
        model,
        BPRTask(settings.mf.l2),
        loader,
        validate,
        monitor=settings.eval.monitor,
        params={
            "dim": settings.mf.dim,
            "l2": settings.mf.l2,
            "users": train.n_users,
            "items": train.n_items,
            "train_rows": len(train),
        },
    )
    mask = (train_m + valid_m).tocsr() if mask_validation else train_m
    test_metrics = full_ranking_eval(scorer(model), test_m, sp.csr_matrix(mask), ks)  # type: ignore[arg-type]
    return RankingRun(model, fit, test_metrics)


class HistorySampler:
    """Adds ``history`` (B, L): the user's training items other than the row's target, shifted by one
    (0 is padding). Users with more than L items get L drawn afresh every batch (with replacement,
    which mean pooling tolerates); vectorized over the batch."""

    def __init__(self, train: sp.csr_matrix, length: int) -> None:
        self.train = train.tocsr()
        self.length = length

    def __call__(self, columns: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        users, targets = columns["user"], columns["item"]
        length = self.length
        start = self.train.indptr[users]  # (B,)
        count = self.train.indptr[users + 1] - start  # (B,)
        slots = np.arange(length)[None, :]  # (1, L)
        drawn = (rng.random((len(users), length)) * count[:, None]).astype(np.int64)  # (B, L)
        position = np.where(count[:, None] <= length, slots, drawn)
        valid = slots < np.minimum(count, length)[:, None]
        flat = start[:, None] + np.where(valid, position, 0)
        # users without training items point one past the end; their slots are masked below
        indices = self.train.indices if len(self.train.indices) else np.zeros(1, dtype=np.int32)
        items = indices[np.minimum(flat, len(indices) - 1)]
        history = np.where(valid & (items != targets[:, None]), items + 1, 0)
        return columns | {"history": history.astype(np.int64)}


def user_histories(train: sp.csr_matrix, length: int, seed: int = 0) -> np.ndarray:
    """(n_users, L) histories for scoring: up to L training items per user (a fixed random subset)."""
    rng = np.random.default_rng(seed)
    sampler = HistorySampler(train, length)
    users = np.arange(train.shape[0])
    return sampler({"user": users, "item": np.full(len(users), -1)}, rng)["history"]


def two_tower_scorer(model: nn.Module, histories: np.ndarray) -> object:
    """score(users) -> (B, n_items) from a TwoTower and fixed user histories."""
    with torch.no_grad():
        items = model.all_item_vectors()  # type: ignore[operator]

    def score(users: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            u = model.user_vectors(torch.from_numpy(users), torch.from_numpy(histories[users]))  # type: ignore[operator]
            return (u @ items.T).numpy()  # type: ignore[no-any-return]

    return score


@dataclass
class TwoTowerRun:
    model: nn.Module
    fit: FitResult
    test_metrics: dict[str, float]
    histories: np.ndarray


def train_two_tower(
    train: Interactions,
    valid: Interactions,
    test: Interactions,
    settings: Settings,
    run_name: str = "two_tower",
    tracker: Tracker | None = None,
    item_text: torch.Tensor | None = None,
    mask_validation: bool = True,
    warm_start: dict[str, torch.Tensor] | None = None,
) -> TwoTowerRun:
    """Fit the two-tower with sampled softmax + logQ; pick the epoch on validation (recall@K_max,
    training items masked); report test once with training items masked, and validation items too
    when ``mask_validation``. ``warm_start``: a state dict of a two-tower of the same sizes to
    continue from (incremental training)."""
    from recstack.models.two_tower import TwoTower
    from recstack.tasks.retrieval import RetrievalTask

    cfg = settings.two_tower
    train_m, valid_m, test_m = train.csr(), valid.csr(), test.csr()
    torch.manual_seed(settings.train.seed)
    model = TwoTower(
        train.n_users, train.n_items, cfg.dim, tuple(cfg.hidden), cfg.cosine, item_text, user_id=cfg.user_id
    )
    if warm_start is not None:
        try:
            model.load_state_dict(warm_start)
        except RuntimeError as exc:
            raise CheckpointError(f"cannot warm-start the two-tower: {exc}") from exc
    counts = np.bincount(train.items, minlength=train.n_items).astype(np.float64) + 1.0
    log_q = torch.from_numpy(np.log(counts / counts.sum())).float() if cfg.log_q else None
    task = RetrievalTask(cfg.temperature, log_q, cfg.random_negatives, cfg.learn_temperature)
    loader = BatchLoader(
        {"user": train.users, "item": train.items},
        ColumnRoles(sparse=("user", "item", "history")),
        batch_size=settings.train.batch_size,
        transform=HistorySampler(train_m, cfg.history),
        drop_last=True,
    )
    histories = user_histories(train_m, cfg.history, settings.train.seed)
    ks = settings.eval.ks
    monitor = f"recall@{max(ks)}"

    def validate(net: nn.Module) -> dict[str, float]:
        return full_ranking_eval(two_tower_scorer(net, histories), valid_m, train_m, ks)  # type: ignore[arg-type]

    trainer = make_trainer(settings, run_name, tracker)
    fit = trainer.fit(model, task, loader, validate, monitor=monitor, params=cfg.model_dump(mode="json"))
    mask = sp.csr_matrix((train_m + valid_m).tocsr() if mask_validation else train_m)
    test_metrics = full_ranking_eval(two_tower_scorer(model, histories), test_m, mask, ks)  # type: ignore[arg-type]
    return TwoTowerRun(model, fit, test_metrics, histories)
