"""Ranking objectives.

``MultiTaskBCE``: binary cross-entropy per task head, summed with per-task weights. Sample weights
(``batch.weights``) carry inverse-propensity weights when position bias is corrected by IPS; when the
model has a ``position_bias`` tower and the batch has positions, the tower's logit offset is added
before the loss (and never at serving). A NaN label means "not observed for this task" and is
masked. Optional L1 / L2 penalties on the embedding rows a batch uses.

``top_k_labels``: the light ranker's distillation target, 1 where the heavy ranker put the candidate
in its top k for that request (Instagram Explore's first-stage ranker learns this, not clicks).

``position_propensities``: each position's examination propensity relative to the top one, from the
click rate per position, for IPS weights (Joachims et al., 2017: a click at a rarely examined
position counts for more).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recstack.train.batch import Batch


class MultiTaskBCE:
    def __init__(
        self,
        tasks: Sequence[str],
        weights: Mapping[str, float] | None = None,
        embedding_l2: float = 0.0,
        embedding_l1: float = 0.0,
    ) -> None:
        self.tasks = list(tasks)
        unknown = set(weights or {}) - set(self.tasks)
        if unknown:
            raise ValueError(f"loss weights for {sorted(unknown)} but the tasks are {self.tasks}")
        self.weights = [float((weights or {}).get(t, 1.0)) for t in self.tasks]
        self.embedding_l2 = embedding_l2
        self.embedding_l1 = embedding_l1

    def logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """(B, T) training-time logits (position tower included when present)."""
        inner: Any = getattr(model, "module", model)
        out: torch.Tensor = model(batch.sparse["ids"], batch.dense["values"])
        if batch.positions is not None and getattr(inner, "position_bias", None) is not None:
            out = out + inner.position_bias(batch.positions)
        return out

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        logits = self.logits(model, batch)
        total = logits.new_zeros(())
        for t, (name, weight) in enumerate(zip(self.tasks, self.weights, strict=True)):
            labels = batch.labels[name]
            observed = ~torch.isnan(labels)
            per_row = F.binary_cross_entropy_with_logits(
                logits[:, t], torch.nan_to_num(labels), reduction="none"
            )
            row_weight = observed.to(per_row.dtype)
            if batch.weights is not None:
                row_weight = row_weight * batch.weights
            total = total + weight * (per_row * row_weight).sum() / row_weight.sum().clamp(min=1e-12)
        if self.embedding_l2 or self.embedding_l1:
            inner: Any = getattr(model, "module", model)
            fields = inner.inputs.fields
            if fields is not None:
                rows = fields(batch.sparse["ids"])  # (B, F, D)
                n = len(batch)
                total = (
                    total
                    + self.embedding_l2 * rows.pow(2).sum() / n
                    + self.embedding_l1 * rows.abs().sum() / n
                )
        return total


def top_k_labels(requests: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """1.0 for the k best-scored candidates of each request (ties broken by order), else 0.0."""
    if len(requests) != len(scores):
        raise ValueError("requests and scores differ in length")
    order = np.lexsort((-scores, requests))  # by request, then score descending
    sorted_requests = requests[order]
    starts = np.r_[0, np.flatnonzero(sorted_requests[1:] != sorted_requests[:-1]) + 1]
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    labels = np.zeros(len(scores))
    labels[order[rank < k]] = 1.0
    return labels


def position_propensities(positions: np.ndarray, clicks: np.ndarray, prior: float = 20.0) -> np.ndarray:
    """(P,) propensity of positions 0..max(positions): the click rate at the position over the click
    rate at the top position seen, each shrunk towards the overall rate by ``prior`` pseudo-
    impressions, clipped to (0, 1]. Positions never seen get the overall rate's ratio (1 at the top).

    The estimate assumes the items shown at each position are alike; where a ranker put better
    items on top it overstates the bias (a randomized slice of traffic estimates it without that).
    """
    positions = np.asarray(positions, dtype=np.int64)
    clicks = np.asarray(clicks, dtype=np.float64) > 0
    if len(positions) == 0 or positions.min() < 0:
        raise ValueError("positions must be a non-empty array of values >= 0")
    size = int(positions.max()) + 1
    shown = np.bincount(positions, minlength=size).astype(np.float64)
    hits = np.bincount(positions, weights=clicks.astype(np.float64), minlength=size)
    overall = max(float(clicks.mean()), 1e-6)
    rate = (hits + prior * overall) / (shown + prior)  # (P,)
    top = rate[int(positions.min())]
    out: np.ndarray = np.clip(rate / top, 1e-6, 1.0)
    return out
