"""The input block of every neural ranker: categorical fields through one embedding table, dense
features beside them.

All fields share one table with per-field row offsets, so the lookup is a single gather (the layout
of TorchRec's and FuxiCTR's fused tables) rather than one small lookup per field.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class FieldEmbedding(nn.Module):
    """ids (B, F) int64, field f's ids in 0..vocab_sizes[f]-1 -> (B, F, D)."""

    def __init__(self, vocab_sizes: Sequence[int], dim: int) -> None:
        super().__init__()
        if any(v < 1 for v in vocab_sizes):
            raise ValueError("every field needs a vocabulary of at least one id")
        offsets = torch.tensor([0, *list(vocab_sizes)[:-1]], dtype=torch.int64).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.table = nn.Embedding(int(sum(vocab_sizes)), dim)
        nn.init.normal_(self.table.weight, std=1e-2)
        self.fields = len(vocab_sizes)
        self.dim = dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        offsets: torch.Tensor = self.offsets  # type: ignore[assignment]
        out: torch.Tensor = self.table(ids + offsets)
        return out


class RankerInput(nn.Module):
    """(sparse (B, F), dense (B, Dd)) -> (B, F * D + Dd): flattened field embeddings and dense values."""

    def __init__(self, vocab_sizes: Sequence[int], dense_dim: int, dim: int) -> None:
        super().__init__()
        self.fields = FieldEmbedding(vocab_sizes, dim) if vocab_sizes else None
        self.dense_dim = dense_dim
        self.out_dim = len(vocab_sizes) * dim + dense_dim

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        parts = [dense] if self.dense_dim else []
        if self.fields is not None:
            parts.insert(0, self.fields(sparse).flatten(1))
        return torch.cat(parts, dim=1)
