"""Position bias as a shallow tower: a learned logit offset per (position, task).

At training time it is added to the ranker's logits, so the ranker's own logits are freed from
"this item was clicked because it was shown first"; at serving it is dropped (the exported graph
has no position input), which scores every candidate as if shown in the same slot. This is the
additive shallow tower of Zhao et al. (2019); PAL (Guo et al., 2019) is its multiplicative cousin.
"""

from __future__ import annotations

import torch
from torch import nn


class PositionBias(nn.Module):
    """positions (B,) int64, 0-based; positions past ``max_position`` share the last row."""

    def __init__(self, max_position: int, tasks: int) -> None:
        super().__init__()
        self.max_position = max_position
        self.table = nn.Embedding(max_position + 1, tasks)
        nn.init.zeros_(self.table.weight)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.table(positions.clamp(0, self.max_position))  # (B, T)
        return out
