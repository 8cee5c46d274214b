"""The served model bundle: everything one registered version holds, loaded without training code.

A bundle folder:

- ``bundle.json``: format, tasks, the catalog item fields the ranker reads, the data range it was
  trained on, its holdout metrics;
- ``retriever/``: the two-tower ANN index and its ONNX towers (``TwoTowerRetriever.save``), and
  ``item_vectors.npy``, the item tower's vectors in the retriever's item order;
- ``heavy/``: the multi-task ranker (``NeuralRanker.export``: ONNX graph, encoder, metadata);
- ``light/`` (optional): the distilled first-stage ranker, same layout;
- ``calibration.json``: Platt parameters (a, b) per task, fitted on validation.

``ServingBundle.load`` checks every part and that the rankers read only features serving computes;
a damaged or incompatible bundle raises CheckpointError and is never half-loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit, logit

from recstack.errors import CheckpointError
from recstack.index.retriever import TwoTowerRetriever
from recstack.serving.features import DENSE, categorical_columns
from recstack.serving.ranker import OnnxRanker

FORMAT = 1


@dataclass
class ServingBundle:
    folder: Path
    meta: dict[str, Any]
    retriever: TwoTowerRetriever
    vectors: np.ndarray  # (n_bundle_items, D) float32, the retriever's item order
    heavy: OnnxRanker
    light: OnnxRanker | None
    calibration: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "unregistered"))

    @property
    def tasks(self) -> list[str]:
        return list(self.heavy.tasks)

    def calibrate(self, probs: np.ndarray) -> np.ndarray:
        """(N, T) heavy-ranker probabilities -> calibrated ones (Platt per task where fitted)."""
        out = probs.copy()
        for t, task in enumerate(self.tasks):
            if task in self.calibration:
                a, b = self.calibration[task]
                out[:, t] = expit(a * logit(np.clip(probs[:, t], 1e-6, 1 - 1e-6)) + b)
        return out

    @classmethod
    def load(cls, folder: Path, item_fields: tuple[str, ...] | None = None) -> ServingBundle:
        folder = Path(folder)
        try:
            meta = json.loads((folder / "bundle.json").read_text())
            calibration = {
                k: (float(v[0]), float(v[1]))
                for k, v in json.loads((folder / "calibration.json").read_text()).items()
            }
            vectors = np.load(folder / "item_vectors.npy", allow_pickle=False)
        except Exception as exc:  # json, numpy and the OS raise several types for damaged files
            raise CheckpointError(f"bundle in {folder} is missing or corrupt: {exc}") from exc
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"bundle in {folder} has format {meta.get('format')}, expected {FORMAT}")
        retriever = TwoTowerRetriever.load(folder / "retriever")
        heavy = OnnxRanker(folder / "heavy")
        light = OnnxRanker(folder / "light") if (folder / "light").exists() else None
        fields = tuple(meta.get("item_fields", ()))
        if item_fields is not None and not set(fields) <= set(item_fields):
            raise CheckpointError(
                f"bundle in {folder} reads item fields {list(fields)} the catalog does not keep "
                f"({list(item_fields)})"
            )
        allowed_cat, allowed_dense = set(categorical_columns(fields)), set(DENSE)
        for name, ranker in (("heavy", heavy), ("light", light)):
            if ranker is None:
                continue
            unknown = (set(ranker.encoder.categorical) - allowed_cat) | (
                set(ranker.encoder.dense) - allowed_dense
            )
            if unknown:
                raise CheckpointError(
                    f"bundle in {folder}: the {name} ranker reads {sorted(unknown)}, which serving "
                    "does not compute"
                )
        if vectors.ndim != 2 or len(vectors) != len(retriever.item_ids):
            raise CheckpointError(
                f"bundle in {folder}: item_vectors.npy has shape {vectors.shape}, expected "
                f"({len(retriever.item_ids)}, D)"
            )
        if not set(calibration) <= set(heavy.tasks):
            raise CheckpointError(f"bundle in {folder}: calibration for tasks the ranker lacks")
        return cls(folder, meta, retriever, vectors.astype(np.float32), heavy, light, calibration)
