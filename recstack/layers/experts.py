"""Multi-task mixing blocks: each takes the shared input (B, d) and returns one representation per
task, (B, T, H), for the per-task towers.

- ``SharedBottom``: one deep block, the same output for every task.
- ``MMoE`` (Ma et al., 2018): E shared experts; each task mixes them with its own softmax gate.
- ``PLE`` (Tang et al., 2020): levels of CGC; each level has experts per task plus shared experts;
  a task's gate mixes its own and the shared experts; a shared gate (all experts) feeds the next
  level's shared input. Task-specific experts are what keep a task from being pulled by the others
  (the "seesaw" effect MMoE shows on conflicting tasks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from recstack.layers.mlp import Deep, Norm


class SharedBottom(nn.Module):
    def __init__(self, in_dim: int, hidden: Sequence[int], tasks: int, norm: Norm = Norm.none) -> None:
        super().__init__()
        self.bottom = Deep(in_dim, hidden, norm)
        self.tasks = tasks
        self.out_dim = self.bottom.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.bottom(x).unsqueeze(1).expand(-1, self.tasks, -1)
        return out


def _mix(gate: nn.Module, x: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """x (B, d), experts (B, E, H) -> (B, H), weighted by softmax(gate(x))."""
    weights = torch.softmax(gate(x), dim=-1).unsqueeze(-1)  # (B, E, 1)
    return (weights * experts).sum(dim=1)


class MMoE(nn.Module):
    def __init__(
        self, in_dim: int, expert_hidden: Sequence[int], experts: int, tasks: int, norm: Norm = Norm.none
    ) -> None:
        super().__init__()
        self.experts = nn.ModuleList(Deep(in_dim, expert_hidden, norm) for _ in range(experts))
        self.gates = nn.ModuleList(nn.Linear(in_dim, experts) for _ in range(tasks))
        self.out_dim = expert_hidden[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = torch.stack([expert(x) for expert in self.experts], dim=1)  # (B, E, H)
        return torch.stack([_mix(gate, x, outputs) for gate in self.gates], dim=1)  # (B, T, H)


class _CGC(nn.Module):
    """One PLE level. Inputs: one per task plus the shared one, each (B, d_in)."""

    def __init__(
        self,
        in_dim: int,
        expert_hidden: Sequence[int],
        tasks: int,
        own: int,
        shared: int,
        last: bool,
        norm: Norm,
    ) -> None:
        super().__init__()
        self.tasks, self.own, self.last = tasks, own, last
        self.task_experts = nn.ModuleList(
            nn.ModuleList(Deep(in_dim, expert_hidden, norm) for _ in range(own)) for _ in range(tasks)
        )
        self.shared_experts = nn.ModuleList(Deep(in_dim, expert_hidden, norm) for _ in range(shared))
        self.task_gates = nn.ModuleList(nn.Linear(in_dim, own + shared) for _ in range(tasks))
        self.shared_gate = None if last else nn.Linear(in_dim, tasks * own + shared)

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        shared_in = inputs[-1]
        shared = [expert(shared_in) for expert in self.shared_experts]
        own = [
            [expert(inputs[t]) for expert in cast(nn.ModuleList, self.task_experts[t])]
            for t in range(self.tasks)
        ]
        out = [
            _mix(self.task_gates[t], inputs[t], torch.stack(own[t] + shared, dim=1))
            for t in range(self.tasks)
        ]
        if self.shared_gate is not None:
            everything = torch.stack([e for task in own for e in task] + shared, dim=1)
            out.append(_mix(self.shared_gate, shared_in, everything))
        return out


class PLE(nn.Module):
    def __init__(
        self,
        in_dim: int,
        expert_hidden: Sequence[int],
        tasks: int,
        levels: int = 2,
        own_experts: int = 1,
        shared_experts: int = 2,
        norm: Norm = Norm.none,
    ) -> None:
        super().__init__()
        self.tasks = tasks
        self.levels = nn.ModuleList(
            _CGC(
                in_dim if level == 0 else expert_hidden[-1],
                expert_hidden,
                tasks,
                own_experts,
                shared_experts,
                last=level == levels - 1,
                norm=norm,
            )
            for level in range(levels)
        )
        self.out_dim = expert_hidden[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = [x] * (self.tasks + 1)
        for level in self.levels:
            inputs = level(inputs)
        return torch.stack(inputs[: self.tasks], dim=1)  # (B, T, H)
