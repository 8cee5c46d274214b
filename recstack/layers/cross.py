"""Cross network of DCN-v2 (Wang et al., 2021): x_{l+1} = x_0 * (W_l x_l + b_l) + x_l.

Each layer raises the degree of the feature interactions by one, with a full-rank W_l (the "v2"
over DCN's rank-one vector).
"""

from __future__ import annotations

import torch
from torch import nn


class CrossNet(nn.Module):
    """x0 (B, d) -> (B, d) after ``layers`` cross layers; ``out_dim`` = d."""

    def __init__(self, dim: int, layers: int) -> None:
        super().__init__()
        self.out_dim = dim
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class Stacked(nn.Module):
    """Blocks applied one after another (DCN-v2 "stacked": deep(cross(x)))."""

    def __init__(self, *blocks: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.out_dim: int = blocks[-1].out_dim  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class Parallel(nn.Module):
    """Blocks applied to the same input, outputs concatenated (DCN-v2 "parallel": [cross(x), deep(x)])."""

    def __init__(self, *blocks: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.out_dim: int = sum(b.out_dim for b in blocks)  # type: ignore[misc]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([block(x) for block in self.blocks], dim=1)
