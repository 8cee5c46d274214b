"""Bayesian personalized ranking: a positive item should score above a sampled negative."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recstack.train.batch import Batch


class BPRTask:
    """loss = -mean(log sigmoid(s(u, pos) - s(u, neg))) + l2 * mean squared norm of the vectors used.

    The batch needs sparse columns ``user``, ``item`` and ``neg_item``; the model is called as
    ``model(users, items) -> (B,)`` scores and must expose ``users`` / ``items`` embeddings for the
    penalty (as :class:`~recstack.models.mf.MatrixFactorization` does).
    """

    def __init__(self, l2: float = 0.0) -> None:
        self.l2 = l2

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        users, pos, neg = batch.sparse["user"], batch.sparse["item"], batch.sparse["neg_item"]
        diff = model(users, pos) - model(users, neg)  # (B,)
        loss = -F.logsigmoid(diff).mean()
        if self.l2:
            inner: Any = getattr(model, "module", model)  # unwrap DistributedDataParallel
            reg = (
                inner.users(users).pow(2).sum(-1)
                + inner.items(pos).pow(2).sum(-1)
                + inner.items(neg).pow(2).sum(-1)
            )
            loss = loss + self.l2 * reg.mean()
        return loss
