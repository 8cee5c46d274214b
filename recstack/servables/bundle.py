"""The served model bundle: everything one registered version holds, loaded without training code.

A bundle folder:

- ``bundle.json``: format, tasks, the ``[[features]]`` definitions the rankers read (``features``),
  the data range it was trained on, its holdout metrics;
- ``retriever/``: the two-tower ANN index and its ONNX towers (``TwoTowerRetriever.save``), and
  ``item_vectors.npy``, the item tower's vectors in the retriever's item order;
- ``heavy/``: the multi-task ranker of the configured kind (``servables/ranker.py``: encoder,
  metadata and the ONNX graph or the per-task models);
- ``light/`` (optional): the distilled first-stage ranker, same layout;
- ``calibration.json``: each task's calibration fitted on validation (``servables/calibration.py``);
- ``sources/`` (optional): the other candidate sources trained with it (``servables/sources.py``).

``ServingBundle.load`` checks every part and that the rankers read only the features it names;
a damaged or incompatible bundle raises CheckpointError and is never half-loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import TypeAdapter

from recstack.errors import CheckpointError
from recstack.features.definitions import FeatureDef
from recstack.features.feed import ranker_inputs
from recstack.index.retriever import TwoTowerRetriever
from recstack.servables.calibration import TaskCalibration, read_calibration
from recstack.servables.ranker import OnnxRanker, PerTaskRanker, load_ranker
from recstack.servables.sources import BundleSources, load_sources

_FEATURE_ADAPTER: TypeAdapter[Any] = TypeAdapter(FeatureDef)

FORMAT = 2  # 2: rankers over the [[features]] definitions saved in bundle.json


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

    @cached_property
    def features(self) -> tuple[Any, ...]:
        """The ``[[features]]`` definitions the rankers read (the validated models), validated once:
        every request logs their values by name."""
        return tuple(_FEATURE_ADAPTER.validate_python(d) for d in self.meta["features"])

    @classmethod
    def load(cls, folder: Path) -> ServingBundle:
        folder = Path(folder)
        try:
            meta = json.loads((folder / "bundle.json").read_text())
            raw_calibration = json.loads((folder / "calibration.json").read_text())
            vectors = np.load(folder / "item_vectors.npy", allow_pickle=False)
        except Exception as exc:  # json, numpy and the OS raise several types for damaged files
            raise CheckpointError(f"bundle in {folder} is missing or corrupt: {exc}") from exc
        if meta.get("format") != FORMAT:
            raise CheckpointError(
                f"bundle in {folder} has format {meta.get('format')}, expected {FORMAT}: retrain it "
                "with this version (recstack train)"
            )
        calibration = read_calibration(raw_calibration)
        retriever = TwoTowerRetriever.load(folder / "retriever")
        heavy = load_ranker(folder / "heavy")
        light = load_ranker(folder / "light") if (folder / "light").exists() else None
        try:
            features = [_FEATURE_ADAPTER.validate_python(d) for d in meta["features"]]
        except Exception as exc:  # KeyError, pydantic's ValidationError
            raise CheckpointError(f"bundle in {folder}: its feature definitions are invalid: {exc}") from exc
        categorical, dense = ranker_inputs(features)
        for name, ranker in (("heavy", heavy), ("light", light)):
            if ranker is None:
                continue
            position = (
                {ranker.meta["position"]} if ranker.meta.get("position_correction") == "feature" else set()
            )
            unknown = (set(ranker.encoder.categorical) - set(categorical) - position) | (
                set(ranker.encoder.dense) - set(dense)
            )
            if unknown:
                raise CheckpointError(
                    f"bundle in {folder}: the {name} ranker reads {sorted(unknown)}, which its feature "
                    "definitions do not name"
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
