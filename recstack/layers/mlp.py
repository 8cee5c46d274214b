"""Multi-layer perceptron block."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recstack.config import Norm

__all__ = ["MLP", "Deep", "Norm", "hidden_layers"]


def hidden_layers(
    in_dim: int,
    hidden: Sequence[int],
    norm: Norm = Norm.none,
    activation: type[nn.Module] = nn.ReLU,
    dropout: float = 0.0,
) -> list[nn.Module]:
    """Linear -> norm -> activation -> dropout for each hidden size."""
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
    return layers


class Deep(nn.Module):
    """The hidden layers alone (no output layer): x (B, in_dim) -> (B, hidden[-1]); ``out_dim`` says so."""

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        norm: Norm = Norm.none,
        activation: type[nn.Module] = nn.ReLU,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("a deep block needs at least one hidden layer")
        self.out_dim = hidden[-1]
        self.net = nn.Sequential(*hidden_layers(in_dim, hidden, norm, activation, dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


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
        layers = hidden_layers(in_dim, hidden, norm, activation, dropout)
        layers.append(nn.Linear(hidden[-1] if hidden else in_dim, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out
