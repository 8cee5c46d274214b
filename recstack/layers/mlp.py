"""Multi-layer perceptron block."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import torch
from torch import nn


class Norm(StrEnum):
    none = "none"
    batch = "batch"
    layer = "layer"


class MLP(nn.Module):
    """Linear -> norm -> activation -> dropout per hidden layer, then a linear output layer.

    x: (B, in_dim) -> (B, out_dim).
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        out_dim: int,
        norm: Norm = Norm.none,
        activation: type[nn.Module] = nn.ReLU,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for size in hidden:
            layers.append(nn.Linear(width, size))
            if norm is Norm.batch:
                layers.append(nn.BatchNorm1d(size))
            elif norm is Norm.layer:
                layers.append(nn.LayerNorm(size))
            layers.append(activation())
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out
