"""The two-tower servable: the user tower plus the ANN index over the item tower's vectors.

What serving loads (no training code): it maps raw ids to indices, embeds a request's user and
recent history, searches the index, and maps results back to raw ids. Brand-new items join the index
through the text path of the item tower (``add_items``): that is the cold start.

``save`` writes the PyTorch weights and an ONNX export of the user tower (and of the text path when
the model has one); ``load(folder)`` without a model serves through ONNX Runtime, so the serving
process needs neither the model class nor its training-time sizes, nor PyTorch (imported only
where a model is given: ``torch_towers``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from recstack.errors import CheckpointError
from recstack.index.faiss_index import IndexKind, ItemIndex
from recstack.servables.onnx import open_session

if TYPE_CHECKING:
    from recstack.index.torch_towers import TorchTowers
    from recstack.models.two_tower import TwoTower


class OnnxTowers:
    """The same two functions served by ONNX Runtime from ``save``'s export."""

    def __init__(self, folder: Path) -> None:
        self.user_session = open_session(folder / "user_tower.onnx")
        content = folder / "content.onnx"
        self.content_session = open_session(content) if content.exists() else None
        self.has_text = self.content_session is not None

    def user(self, users: np.ndarray, history: np.ndarray) -> np.ndarray:
        (out,) = self.user_session.run(["vectors"], {"users": users, "history": history})
        return np.asarray(out)

    def content(self, text: np.ndarray) -> np.ndarray:
        if self.content_session is None:
            raise ValueError("this two-tower has no text path (it was trained without item text)")
        (out,) = self.content_session.run(["vectors"], {"text": text.astype(np.float32)})
        return np.asarray(out)


class TwoTowerRetriever:
    """retrieve(user_id, history, k) -> [(item_id, score)], best first; unknown ids are not errors."""

    def __init__(
        self,
        model: TwoTower | None,
        index: ItemIndex,
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        history_length: int = 50,
        towers: TorchTowers | OnnxTowers | None = None,
        id_items: int | None = None,
    ) -> None:
        if towers is None:
            if model is None:
                raise ValueError("a retriever needs a model or exported towers")
            from recstack.index.torch_towers import TorchTowers

            towers = TorchTowers(model)
        self.model = model.eval() if model is not None else None
        self.towers = towers
        self.index = index
        self.user_index = {u: n for n, u in enumerate(user_ids)}
        self.item_ids = list(item_ids)
        self.item_index = {i: n for n, i in enumerate(self.item_ids)}
        self.history_length = history_length
        # items with an id embedding in the user tower's history path; items added later (by text,
        # or in a larger served catalog) are searchable but skipped in histories
        self.id_items = len(self.item_ids) if id_items is None else id_items

    @classmethod
    def build(
        cls,
        model: TwoTower,
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        kind: IndexKind = IndexKind.hnsw,
        history_length: int = 50,
        vectors: np.ndarray | None = None,
    ) -> TwoTowerRetriever:
        """``vectors``: the item tower's (n_items, D) output when the caller computed it (a batch
        job); else it is computed here."""
        import torch

        if vectors is None:
            with torch.no_grad():
                vectors = model.eval().all_item_vectors().numpy()  # (n_items, D)
        index = ItemIndex(vectors.shape[1], kind).build(vectors)
        return cls(model, index, user_ids, item_ids, history_length)

    def user_vector(self, user_id: str | None, history: Sequence[str]) -> np.ndarray:
        """(D,) from the user's id (if known) and up to history_length recent known items."""
        user = self.user_index.get(user_id, -1) if user_id is not None else -1
        items = self.history_ids(history)
        padded = np.zeros((1, self.history_length), dtype=np.int64)
        padded[0, : len(items)] = items
        out: np.ndarray = self.towers.user(np.array([user], dtype=np.int64), padded)[0]
        return out

    def history_ids(self, history: Sequence[str]) -> list[int]:
        """The user tower's history input: the 1-based ids of up to history_length recent items it
        embeds (most recent first; others skipped)."""
        known = (self.item_index.get(i, self.id_items) for i in history)
        return [n + 1 for n in known if n < self.id_items][: self.history_length]

    def knows(self, user_id: str | None, history: Sequence[str]) -> bool:
        """Whether the user tower has anything to go on: a known user or a history item it embeds."""
        if user_id is not None and user_id in self.user_index:
            return True
        return any(self.item_index.get(i, self.id_items) < self.id_items for i in history)

    def retrieve(self, user_id: str | None, history: Sequence[str], k: int) -> list[tuple[str, float]]:
        if not self.knows(user_id, history):
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
        vectors = self.towers.content(text_vectors[keep])
        start = len(self.item_ids)
        self.index.add(vectors, np.arange(start, start + len(item_ids)))
        for n, item in enumerate(item_ids):
            self.item_index[item] = start + n
        self.item_ids.extend(item_ids)
        return without_text

    def remove_items(self, item_ids: Sequence[str]) -> None:
        self.index.remove(np.array([self.item_index[i] for i in item_ids if i in self.item_index]))

    def save(self, folder: Path) -> None:
        """Index, ids, and the towers: PyTorch weights (``model.pt``) and their ONNX export."""
        import torch

        from recstack.index.torch_towers import TorchTowers

        if not isinstance(self.towers, TorchTowers) or self.model is None:
            raise ValueError("only a retriever built from a PyTorch model can be saved")
        folder.mkdir(parents=True, exist_ok=True)
        self.index.save(folder / "index")
        torch.save(self.model.state_dict(), folder / "model.pt")
        self.towers.export(folder, self.history_length)
        users = sorted(self.user_index, key=self.user_index.__getitem__)
        (folder / "ids.json").write_text(
            json.dumps(
                {
                    "users": users,
                    "items": self.item_ids,
                    "history_length": self.history_length,
                    "id_items": self.id_items,
                }
            )
        )

    @classmethod
    def load(cls, folder: Path, model: TwoTower | None = None) -> TwoTowerRetriever:
        """With ``model`` (a TwoTower built with the training-time sizes) the weights come from
        ``model.pt``; without one the towers are served by ONNX Runtime from the export."""
        try:
            ids = json.loads((folder / "ids.json").read_text())
            towers: TorchTowers | OnnxTowers
            if model is not None:
                import torch

                from recstack.index.torch_towers import TorchTowers

                state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
                model.load_state_dict(state)
                towers = TorchTowers(model)
            else:
                towers = OnnxTowers(folder)
        except Exception as exc:  # torch and ONNX Runtime raise several types for damaged files
            raise CheckpointError(
                f"retriever in {folder} is missing, corrupt or does not fit the model: {exc}"
            ) from exc
        index = ItemIndex.load(folder / "index")
        return cls(
            model, index, ids["users"], ids["items"], ids["history_length"], towers, ids.get("id_items")
        )
