"""The two-tower's towers in PyTorch, for training and export (``TwoTowerRetriever`` imports this
only where a model is given, so that serving from an ONNX export does not load PyTorch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from recstack.models.two_tower import TwoTower
from recstack.servables.onnx import export_onnx


class _UserTower(nn.Module):
    def __init__(self, model: TwoTower) -> None:
        super().__init__()
        self.model = model

    def forward(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self.model.user_vectors(users, history)


class _ContentTower(nn.Module):
    def __init__(self, model: TwoTower) -> None:
        super().__init__()
        self.model = model

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.model.content_vectors(text)


class TorchTowers:
    """The user tower and the item tower's text path, in PyTorch."""

    def __init__(self, model: TwoTower) -> None:
        self.model = model.eval()
        self.has_text = model.text_proj is not None

    def user(self, users: np.ndarray, history: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out: np.ndarray = self.model.user_vectors(
                torch.from_numpy(users), torch.from_numpy(history)
            ).numpy()
        return out

    def content(self, text: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out: np.ndarray = self.model.content_vectors(torch.from_numpy(text)).numpy()
        return out

    def export(self, folder: Path, history_length: int) -> None:
        users = torch.zeros(2, dtype=torch.int64)
        history = torch.zeros((2, history_length), dtype=torch.int64)
        export_onnx(
            _UserTower(self.model),
            (users, history),
            ["users", "history"],
            "vectors",
            folder / "user_tower.onnx",
        )
        if self.has_text:
            text = torch.zeros((2, self.model.text_proj.in_features))  # type: ignore[union-attr]
            export_onnx(_ContentTower(self.model), (text,), ["text"], "vectors", folder / "content.onnx")
