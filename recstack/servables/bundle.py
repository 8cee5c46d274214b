"""The served model bundle: everything one registered version holds, loaded without training code.

A bundle folder:

- ``bundle.json``: format, tasks, the catalog item fields the ranker reads, the data range it was
  trained on, its holdout metrics;
- ``retriever/``: the two-tower ANN index and its ONNX towers (``TwoTowerRetriever.save``), and
  ``item_vectors.npy``, the item tower's vectors in the retriever's item order;
- ``heavy/``: the multi-task ranker of the configured kind (``servables/ranker.py``: encoder,
  metadata and the ONNX graph or the per-task models);
- ``light/`` (optional): the distilled first-stage ranker, same layout;
- ``calibration.json``: each task's calibration fitted on validation (``servables/calibration.py``);
- ``sources/`` (optional): the other candidate sources trained with it (``servables/sources.py``).

``ServingBundle.load`` checks every part and that the rankers read only features serving computes;
a damaged or incompatible bundle raises CheckpointError and is never half-loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recstack.errors import CheckpointError
from recstack.features.feed import DENSE, categorical_columns
from recstack.index.retriever import TwoTowerRetriever
from recstack.servables.calibration import TaskCalibration, read_calibration
from recstack.servables.ranker import OnnxRanker, PerTaskRanker, load_ranker
from recstack.servables.sources import BundleSources, load_sources

FORMAT = 1


@dataclass
class ServingBundle:
    folder: Path
    meta: dict[str, Any]
    retriever: TwoTowerRetriever
    vectors: np.ndarray  # (n_bundle_items, D) float32, the retriever's item order
    heavy: OnnxRanker | PerTaskRanker
    light: OnnxRanker | PerTaskRanker | None
    calibration: dict[str, TaskCalibration] = field(default_factory=dict)
    sources: BundleSources = field(default_factory=lambda: BundleSources({}, None, None))

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "unregistered"))

    @property
    def tasks(self) -> list[str]:
        return list(self.heavy.tasks)

    def calibrate(self, probs: np.ndarray) -> np.ndarray:
        """(N, T) heavy-ranker probabilities -> calibrated ones (each task's map where fitted)."""
        out = probs.copy()
        for t, task in enumerate(self.tasks):
            if task in self.calibration:
                out[:, t] = self.calibration[task](probs[:, t])
        return out

    @classmethod
    def load(cls, folder: Path, item_fields: tuple[str, ...] | None = None) -> ServingBundle:
        folder = Path(folder)
        try:
            meta = json.loads((folder / "bundle.json").read_text())
            raw_calibration = json.loads((folder / "calibration.json").read_text())
            vectors = np.load(folder / "item_vectors.npy", allow_pickle=False)
        except Exception as exc:  # json, numpy and the OS raise several types for damaged files
            raise CheckpointError(f"bundle in {folder} is missing or corrupt: {exc}") from exc
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"bundle in {folder} has format {meta.get('format')}, expected {FORMAT}")
        calibration = read_calibration(raw_calibration)
        retriever = TwoTowerRetriever.load(folder / "retriever")
        heavy = load_ranker(folder / "heavy")
        light = load_ranker(folder / "light") if (folder / "light").exists() else None
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
            position = (
                {ranker.meta["position"]} if ranker.meta.get("position_correction") == "feature" else set()
            )
            unknown = (set(ranker.encoder.categorical) - allowed_cat - position) | (
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
        sources = load_sources(folder / "sources", len(retriever.item_ids))
        return cls(folder, meta, retriever, vectors.astype(np.float32), heavy, light, calibration, sources)
