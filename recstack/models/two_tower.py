"""Two-tower retrieval model: a user tower and an item tower meeting in one vector space.

User tower: the user's id embedding (unless ``user_id=False``: then the user is their history alone,
which generalizes to users unseen in training) and the mean of the embeddings of the items they
engaged with (their last-N history), concatenated and passed through an MLP. Item tower: the item's
id embedding plus, where items have text, a projection of its text embedding (which is what places a
brand-new item, whose id embedding is untrained, near items like it). Outputs are L2-normalized when
``cosine`` is set, so scores are cosine similarities.

Item index 0 is padding in histories; item i of the catalog is row i + 1 of the embedding table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recstack.layers.embedding import PooledEmbedding
from recstack.layers.mlp import MLP


class TwoTower(nn.Module):
    """users: (B,) indices; history: (B, L) item indices + 1 (0 = padding); items: (B,) indices."""

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int = 64,
        hidden: tuple[int, ...] = (128,),
        cosine: bool = True,
        item_text: torch.Tensor | None = None,
        user_id: bool = True,
    ) -> None:
        super().__init__()
        self.n_items = n_items
        self.cosine = cosine
        self.use_user_id = user_id
        # without a user-id embedding the user is their history alone (no table to train or store)
        self.user_ids = nn.Embedding(n_users if user_id else 1, dim)
        self.user_ids.weight.requires_grad_(user_id)
        self.item_ids = nn.Embedding(n_items + 1, dim, padding_idx=0)
        nn.init.normal_(self.user_ids.weight, std=0.05)
        nn.init.normal_(self.item_ids.weight, std=0.05)
        with torch.no_grad():
            self.item_ids.weight[0].zero_()
        self.history = PooledEmbedding(self.item_ids)
        self.user_mlp = MLP(2 * dim if user_id else dim, hidden, dim)
        self.text_proj: nn.Linear | None = None
        if item_text is not None:
            self.register_buffer("item_text", item_text.float())  # (n_items, T)
            self.text_proj = nn.Linear(item_text.shape[1], dim, bias=False)

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.cosine else x

    def user_vectors(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """(B,), (B, L) -> (B, D). A user index of -1 (unknown user) contributes a zero id embedding,
        so the vector comes from the history alone."""
        pooled = self.history(history)  # (B, D)
        if not self.use_user_id:
            return self._out(self.user_mlp(pooled))
        known = (users >= 0).unsqueeze(-1).to(self.user_ids.weight.dtype)  # (B, 1)
        ids = self.user_ids(users.clamp(min=0)) * known  # (B, D)
        x = torch.cat([ids, pooled], dim=-1)  # (B, 2D)
        return self._out(self.user_mlp(x))

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B, D)."""
        x = self.item_ids(items + 1)  # (B, D)
        if self.text_proj is not None:
            text: torch.Tensor = self.item_text  # type: ignore[assignment]
            x = x + self.text_proj(text[items])
        return self._out(x)

    def content_vectors(self, text: torch.Tensor) -> torch.Tensor:
        """(B, T) text embeddings of items the model has never seen -> (B, D): the text path alone."""
        if self.text_proj is None:
            raise ValueError("this two-tower has no text path (it was trained without item text)")
        return self._out(self.text_proj(text.float()))

    def all_item_vectors(self) -> torch.Tensor:
        """(n_items, D) for indexing."""
        return self.item_vectors(torch.arange(self.n_items))

    def forward(self, users: torch.Tensor, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of (B,) (user, item) pairs."""
        return (self.user_vectors(users, history) * self.item_vectors(items)).sum(-1)
