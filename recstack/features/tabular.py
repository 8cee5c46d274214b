"""Turns a frame of ranking features into the two arrays every ranker reads.

Categorical columns become indices into a vocabulary fitted on the training rows: 1..V for values
seen in training, 0 for a value never seen (or missing) — the documented default for unseen ids, so
a new item or a new app version is scored, not refused. Dense columns are standardized with the
training mean and standard deviation; NaN and infinite values become 0 after standardization (the
training mean) and are counted in ``last_report``; finite values beyond ``clip`` standard deviations
are clipped to it (an outlier such as 1e308 would otherwise overflow float32 and poison the scores).
A column the encoder was fitted with that is absent from the frame is an error naming it: silently
inventing a whole feature would hide a broken pipeline.

The fitted encoder saves to JSON and is what serving loads next to the model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recstack.errors import CheckpointError, RecstackError
from recstack.schema import FeatureKind, FeatureSpec


class MissingFeatureError(RecstackError):
    """A frame lacks columns that the encoder (and so the model) needs."""


@dataclass
class Encoded:
    """sparse: (N, F) int64 category indices (0 = unseen); dense: (N, D) float32 standardized."""

    sparse: np.ndarray
    dense: np.ndarray

    def __len__(self) -> int:
        return len(self.sparse)


@dataclass
class EncodeReport:
    """What the last ``transform`` replaced with defaults, per column."""

    unseen: dict[str, int] = field(default_factory=dict)
    nonfinite: dict[str, int] = field(default_factory=dict)


class TabularEncoder:
    """fit(frame) then transform(frame) -> Encoded. See the module docstring for the defaults."""

    def __init__(
        self, categorical: Sequence[str] = (), dense: Sequence[str] = (), clip: float = 10.0
    ) -> None:
        if not categorical and not dense:
            raise RecstackError("a ranker needs at least one categorical or dense feature")
        self.clip = clip
        self.categorical = list(categorical)
        self.dense = list(dense)
        self.vocab: dict[str, list[str]] = {}
        self.mean: dict[str, float] = {}
        self.std: dict[str, float] = {}
        self.last_report = EncodeReport()
        self._indexes: dict[str, pd.Index] = {}

    def _lookup(self, name: str) -> pd.Index:
        """The vocabulary of ``name`` as a hashed index, built once (serving encodes small batches
        often; rebuilding the hash table per call would cost O(vocabulary) each time)."""
        cached = self._indexes.get(name)
        if cached is None or len(cached) != len(self.vocab[name]):
            cached = self._indexes[name] = pd.Index(self.vocab[name], dtype=object)
        return cached

    @property
    def fitted(self) -> bool:
        return bool(self.vocab or self.mean)

    def _check_columns(self, frame: pd.DataFrame) -> None:
        missing = [c for c in self.categorical + self.dense if c not in frame.columns]
        if missing:
            raise MissingFeatureError(
                f"features {missing} are missing from the input (it has {list(frame.columns)})"
            )

    def fit(self, frame: pd.DataFrame) -> TabularEncoder:
        if len(frame) == 0:
            raise RecstackError("cannot fit the feature encoder on an empty frame")
        self._check_columns(frame)
        for name in self.categorical:
            values = frame[name]
            self.vocab[name] = sorted(values[values.notna()].astype(str).unique().tolist())
            self._indexes.pop(name, None)
        for name in self.dense:
            values = pd.to_numeric(frame[name], errors="coerce").to_numpy(np.float64)
            finite = values[np.isfinite(values)]
            self.mean[name] = float(finite.mean()) if len(finite) else 0.0
            std = float(finite.std()) if len(finite) else 0.0
            self.std[name] = std if std > 0 else 1.0
        return self

    def transform(self, frame: pd.DataFrame) -> Encoded:
        if not self.fitted:
            raise RecstackError("the feature encoder is not fitted")
        self._check_columns(frame)
        report = EncodeReport()
        sparse = np.zeros((len(frame), len(self.categorical)), dtype=np.int64)
        for j, name in enumerate(self.categorical):
            values = frame[name]
            text = values.astype(str).where(values.notna(), None)
            codes = self._lookup(name).get_indexer(text).astype(np.int64) + 1  # -1 (unseen, missing) -> 0
            sparse[:, j] = codes
            report.unseen[name] = int((codes == 0).sum())
        dense = np.zeros((len(frame), len(self.dense)), dtype=np.float32)
        for j, name in enumerate(self.dense):
            values = pd.to_numeric(frame[name], errors="coerce").to_numpy(np.float64)
            bad = ~np.isfinite(values)
            with np.errstate(over="ignore", invalid="ignore"):
                scaled = np.clip((values - self.mean[name]) / self.std[name], -self.clip, self.clip)
            dense[:, j] = np.where(bad, 0.0, scaled)
            report.nonfinite[name] = int(bad.sum())
        self.last_report = report
        return Encoded(sparse, dense)

    def fit_transform(self, frame: pd.DataFrame) -> Encoded:
        return self.fit(frame).transform(frame)

    @property
    def vocab_sizes(self) -> list[int]:
        """Rows each categorical field needs (its vocabulary plus index 0 for unseen)."""
        return [len(self.vocab[name]) + 1 for name in self.categorical]

    def specs(self) -> list[FeatureSpec]:
        return [
            FeatureSpec(name, FeatureKind.categorical, vocab_size=size)
            for name, size in zip(self.categorical, self.vocab_sizes, strict=True)
        ] + [FeatureSpec(name, FeatureKind.dense) for name in self.dense]

    def to_dict(self) -> dict[str, Any]:
        return {
            "categorical": self.categorical,
            "dense": self.dense,
            "vocab": self.vocab,
            "mean": self.mean,
            "std": self.std,
            "clip": self.clip,
        }

    def save(self, path: Path) -> None:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict()))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> TabularEncoder:
        try:
            data = json.loads(Path(path).read_text())
            encoder = cls(data["categorical"], data["dense"], float(data.get("clip", 10.0)))
            encoder.vocab = {k: list(v) for k, v in data["vocab"].items()}
            encoder.mean = {k: float(v) for k, v in data["mean"].items()}
            encoder.std = {k: float(v) for k, v in data["std"].items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"feature encoder {path} is missing or corrupt: {exc}") from exc
        return encoder
