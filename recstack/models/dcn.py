"""DCN-v2 ranker: input block, a body composed of a cross network and a deep block (``Stacked`` or
``Parallel``, see recstack.layers.cross), and a linear head per task.

    DCNv2(RankerInput(sizes, dense, 10), Parallel(CrossNet(d, 3), Deep(d, [400, 400, 400])), ["click"])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recstack.layers.fields import RankerInput
from recstack.models.position import PositionBias


class DCNv2(nn.Module):
    """forward(sparse (B, F), dense (B, Dd)) -> (B, T) logits, one per task."""

    def __init__(self, inputs: RankerInput, body: nn.Module, tasks: Sequence[str]) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.inputs = inputs
        self.body = body
        self.head = nn.Linear(int(body.out_dim), len(self.tasks))  # type: ignore[arg-type]
        self.position_bias: PositionBias | None = None

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.body(self.inputs(sparse, dense)))
        return out
