"""Matrix factorization: a user vector and an item vector; the score is their dot product."""

from __future__ import annotations

import torch
from torch import nn


class MatrixFactorization(nn.Module):
    """Scores (user, item) pairs by <p_u, q_i>. Sized from the vocabularies; no training logic here."""

    def __init__(self, n_users: int, n_items: int, dim: int, init_std: float = 0.1) -> None:
        super().__init__()
        self.users = nn.Embedding(n_users, dim)
        self.items = nn.Embedding(n_items, dim)
        nn.init.normal_(self.users.weight, std=init_std)
        nn.init.normal_(self.items.weight, std=init_std)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users, items: (B,) indices -> (B,) scores."""
        scores: torch.Tensor = (self.users(users) * self.items(items)).sum(dim=-1)  # (B, D) -> (B,)
        return scores

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """users: (B,) -> (B, n_items) scores against the whole catalog."""
        scores: torch.Tensor = self.users(users) @ self.items.weight.T  # (B, D) @ (D, I)
        return scores
