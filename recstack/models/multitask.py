"""Multi-task ranker: input block, a mixing block (SharedBottom, MMoE or PLE from
recstack.layers.experts) giving one representation per task, and a small tower per task.

    MultiTask(RankerInput(...), MMoE(d, [128], experts=4, tasks=5), [64], ["click", "like", ...])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recstack.layers.fields import RankerInput
from recstack.layers.mlp import MLP, Norm
from recstack.models.position import PositionBias


class MultiTask(nn.Module):
    """forward(sparse (B, F), dense (B, Dd)) -> (B, T) logits in the order of ``tasks``."""

    def __init__(
        self,
        inputs: RankerInput,
        mixer: nn.Module,
        tower_hidden: Sequence[int],
        tasks: Sequence[str],
        norm: Norm = Norm.none,
    ) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.inputs = inputs
        self.mixer = mixer
        width = int(mixer.out_dim)  # type: ignore[arg-type]
        self.towers = nn.ModuleList(MLP(width, tower_hidden, 1, norm) for _ in self.tasks)
        self.position_bias: PositionBias | None = None

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        mixed = self.mixer(self.inputs(sparse, dense))  # (B, T, H)
        return torch.cat([tower(mixed[:, t]) for t, tower in enumerate(self.towers)], dim=1)
