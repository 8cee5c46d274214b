"""Checkpoints: written atomically, read with a clear error when missing, corrupt or mismatched."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recstack.errors import CheckpointError


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings) to ``path`` via a temporary file and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} is corrupt or not a recstack checkpoint: {exc}") from exc
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path} has no model state")
    return state


def restore_model(model: nn.Module, state: dict[str, Any], path: Path | str = "<memory>") -> None:
    """Load model weights; shape or key mismatches raise CheckpointError naming them."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit {type(model).__name__}: {exc}") from exc
