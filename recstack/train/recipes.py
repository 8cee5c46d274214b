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
from recstack.eval.metrics import full_ranking_eval
from recstack.models.mf import MatrixFactorization
from recstack.tasks.bpr import BPRTask
from recstack.train.batch import BatchLoader, ColumnRoles
from recstack.train.loop import FitResult, Trainer
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
) -> RankingRun:
    """Fit MF with BPR; early-stop on validation (training items masked); report test once with
    training and validation items masked."""
    train_m, valid_m, test_m = train.csr(), valid.csr(), test.csr()
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

    ckpt = (settings.train.checkpoint_dir or settings.paths.state_dir / "checkpoints") / run_name
    trainer = Trainer(settings.train, Path(ckpt), tracker or make_tracker(settings, run_name), run_name)
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
    mask = (train_m + valid_m).tocsr()
    test_metrics = full_ranking_eval(scorer(model), test_m, sp.csr_matrix(mask), ks)  # type: ignore[arg-type]
    return RankingRun(model, fit, test_metrics)
