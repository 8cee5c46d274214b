"""Embedding blocks."""

from __future__ import annotations

import torch
from torch import nn


class PooledEmbedding(nn.Module):
    """Mean of the embeddings of a padded id sequence; id 0 is padding and is ignored.

    ids: (B, L) int64 -> (B, D); an all-padding row pools to zeros.
    """

    def __init__(self, table: nn.Embedding) -> None:
        super().__init__()
        self.table = table

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        vectors = self.table(ids)  # (B, L, D)
        mask = (ids > 0).unsqueeze(-1).to(vectors.dtype)  # (B, L, 1)
        total = (vectors * mask).sum(dim=1)  # (B, D)
        count = mask.sum(dim=1).clamp(min=1.0)  # (B, 1)
        pooled: torch.Tensor = total / count
        return pooled
