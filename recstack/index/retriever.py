"""The two-tower servable: the user tower plus the ANN index over the item tower's vectors.

What serving loads (no training code): it maps raw ids to indices, embeds a request's user and
recent history, searches the index, and maps results back to raw ids. Brand-new items join the index
through the text path of the item tower (``add_items``): that is the cold start.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from recstack.errors import CheckpointError
from recstack.index.faiss_index import IndexKind, ItemIndex
from recstack.models.two_tower import TwoTower


class TwoTowerRetriever:
    """retrieve(user_id, history, k) -> [(item_id, score)], best first; unknown ids are not errors."""

    def __init__(
        self,
        model: TwoTower,
        index: ItemIndex,
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        history_length: int = 50,
    ) -> None:
        self.model = model.eval()
        self.index = index
        self.user_index = {u: n for n, u in enumerate(user_ids)}
        self.item_ids = list(item_ids)
        self.item_index = {i: n for n, i in enumerate(self.item_ids)}
        self.history_length = history_length

    @classmethod
    def build(
        cls,
        model: TwoTower,
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        kind: IndexKind = IndexKind.hnsw,
        history_length: int = 50,
    ) -> TwoTowerRetriever:
        with torch.no_grad():
            vectors = model.eval().all_item_vectors().numpy()  # (n_items, D)
        index = ItemIndex(vectors.shape[1], kind).build(vectors)
        return cls(model, index, user_ids, item_ids, history_length)

    def user_vector(self, user_id: str | None, history: Sequence[str]) -> np.ndarray:
        """(D,) from the user's id (if known) and up to history_length recent known items."""
        user = self.user_index.get(user_id, -1) if user_id is not None else -1
        items = [self.item_index[i] + 1 for i in history if i in self.item_index][: self.history_length]
        padded = np.zeros((1, self.history_length), dtype=np.int64)
        padded[0, : len(items)] = items
        with torch.no_grad():
            vector = self.model.user_vectors(torch.tensor([user]), torch.from_numpy(padded))
        out: np.ndarray = vector.numpy()[0]
        return out

    def retrieve(self, user_id: str | None, history: Sequence[str], k: int) -> list[tuple[str, float]]:
        if (user_id is None or user_id not in self.user_index) and not any(
            i in self.item_index for i in history
        ):
            return []  # nothing known about this request: trending and fresh sources take over
        scores, ids = self.index.search(self.user_vector(user_id, history)[None, :], k)
        return [(self.item_ids[i], float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def add_items(self, item_ids: Sequence[str], text_vectors: np.ndarray) -> list[str]:
        """Index brand-new items by their text (the item tower's content path). Items without text
        (an all-zero row, what the text encoder gives for missing text) have no place in the vector
        space yet: they are not indexed and are returned, for the fresh source to carry until their
        engagements train an id embedding. Already-known ids are skipped."""
        text_vectors = np.asarray(text_vectors, dtype=np.float32)
        if len(item_ids) != len(text_vectors):
            raise ValueError(f"{len(item_ids)} item ids but {len(text_vectors)} text vectors")
        has_text = np.abs(text_vectors).sum(axis=1) > 0
        new = np.array([i not in self.item_index for i in item_ids], dtype=bool)
        keep = has_text & new
        without_text = [i for i, t, n in zip(item_ids, has_text, new, strict=True) if n and not t]
        item_ids = [i for i, k in zip(item_ids, keep, strict=True) if k]
        if not item_ids:
            return without_text
        with torch.no_grad():
            vectors = self.model.content_vectors(torch.from_numpy(text_vectors[keep])).numpy()
        start = len(self.item_ids)
        self.index.add(vectors, np.arange(start, start + len(item_ids)))
        for n, item in enumerate(item_ids):
            self.item_index[item] = start + n
        self.item_ids.extend(item_ids)
        return without_text

    def remove_items(self, item_ids: Sequence[str]) -> None:
        self.index.remove(np.array([self.item_index[i] for i in item_ids if i in self.item_index]))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.index.save(folder / "index")
        torch.save(self.model.state_dict(), folder / "model.pt")
        users = sorted(self.user_index, key=self.user_index.__getitem__)
        (folder / "ids.json").write_text(
            json.dumps({"users": users, "items": self.item_ids, "history_length": self.history_length})
        )

    @classmethod
    def load(cls, folder: Path, model: TwoTower) -> TwoTowerRetriever:
        """``model`` is a TwoTower built with the training-time sizes; its weights come from ``folder``."""
        try:
            ids = json.loads((folder / "ids.json").read_text())
            state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:  # torch raises several types for truncated or foreign files
            raise CheckpointError(
                f"retriever in {folder} is missing, corrupt or does not fit the model: {exc}"
            ) from exc
        return cls(model, ItemIndex.load(folder / "index"), ids["users"], ids["items"], ids["history_length"])
