"""Sampled softmax over in-batch negatives with logQ correction (Yi et al., 2019).

For a batch of (user, positive item) pairs, every other positive in the batch is a negative. Popular
items appear as negatives more often than under the true softmax; subtracting log q(item), the
item's sampling probability, corrects that bias. Other rows holding the same item are masked, not
counted as negatives. Optional uniformly sampled extra negatives (mixed negative sampling) widen
the pool beyond the batch's popularity skew; the correction then uses each item's expected count in
the mixed pool, B q(item) + R / N (Yang et al., 2020), which is log q(item) up to a constant when R = 0.
With R at or above the catalog size the loss approaches the full softmax.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recstack.train.batch import Batch


class RetrievalTask:
    """loss = cross-entropy of each user over [in-batch positives (+ random items)] / temperature."""

    def __init__(
        self,
        temperature: float = 0.05,
        log_q: torch.Tensor | None = None,
        random_negatives: int = 0,
        learn_temperature: bool = False,
    ) -> None:
        self.log_q = log_q  # (n_items,) log sampling probability, or None for no correction
        self.random_negatives = random_negatives
        self.log_inv_temperature = torch.tensor(float(-torch.log(torch.tensor(temperature))))
        self.learn_temperature = learn_temperature

    def parameters(self) -> list[nn.Parameter]:
        """The learnable temperature, when enabled (hand these to the optimizer with the model's)."""
        if self.learn_temperature and not isinstance(self.log_inv_temperature, nn.Parameter):
            self.log_inv_temperature = nn.Parameter(self.log_inv_temperature)
        return [self.log_inv_temperature] if isinstance(self.log_inv_temperature, nn.Parameter) else []

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        inner: Any = getattr(model, "module", model)  # unwrap DistributedDataParallel
        users, history, items = batch.sparse["user"], batch.sparse["history"], batch.sparse["item"]
        u = inner.user_vectors(users, history)  # (B, D)
        candidates = items
        if self.random_negatives:
            extra = torch.randint(0, inner.n_items, (self.random_negatives,))
            candidates = torch.cat([items, extra])  # (B + R,)
        v = inner.item_vectors(candidates)  # (B + R, D)
        logits = (u @ v.T) * self.log_inv_temperature.exp()  # (B, B + R)
        if self.log_q is not None:
            # the pool holds item i about B q_i + R / N times in expectation; subtract its log
            expected = len(items) * self.log_q[candidates].exp() + self.random_negatives / inner.n_items
            logits = logits - expected.log().unsqueeze(0)
        same = items.unsqueeze(1) == candidates.unsqueeze(0)  # (B, B + R)
        diagonal = torch.zeros_like(same)
        diagonal[:, : len(items)] = torch.eye(len(items), dtype=torch.bool)
        logits = logits.masked_fill(same & ~diagonal, float("-inf"))
        return F.cross_entropy(logits, torch.arange(len(items)))
