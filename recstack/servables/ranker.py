"""The rankers as serving loads them, without training code: the feature encoder plus the model.

A ranker folder holds ``ranker.json`` (its ``kind``, tasks and position handling), ``encoder.json``
(the fitted :class:`TabularEncoder`) and the model:

- neural kinds (dcn_v2, shared_bottom, mmoe, ple): ``model.onnx``, run by ONNX Runtime;
- ``lr``: one logistic regression per task under ``tasks/<task>/`` (NumPy and SciPy at serving);
- ``gbdt``: one LightGBM booster per task under ``tasks/<task>/`` (LightGBM's own predictor).

``load_ranker`` dispatches on the kind (a folder without one is a neural ranker, as every bundle
written before the kinds existed). Every ranker has ``tasks``, ``encoder``, ``meta`` and
``score_encoded(Encoded) -> (N, T)`` probabilities, one column per task.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from scipy.special import expit

from recstack.errors import CheckpointError
from recstack.features.tabular import Encoded, TabularEncoder
from recstack.servables.onnx import open_session

NEURAL_KINDS = ("dcn_v2", "shared_bottom", "mmoe", "ple")
CLASSICAL_KINDS = ("lr", "gbdt")


class Ranker(Protocol):
    encoder: TabularEncoder
    meta: dict[str, Any]
    tasks: list[str]

    def score_encoded(self, encoded: Encoded) -> np.ndarray: ...


def _read_meta(folder: Path) -> dict[str, Any]:
    try:
        meta: dict[str, Any] = json.loads((folder / "ranker.json").read_text())
    except Exception as exc:  # OSError, JSONDecodeError
        raise CheckpointError(f"ranker in {folder} is missing or corrupt: {exc}") from exc
    if not isinstance(meta.get("tasks"), list) or not meta["tasks"]:
        raise CheckpointError(f"ranker in {folder}: ranker.json names no tasks")
    return meta


def position_value(meta: dict[str, Any]) -> str | None:
    """The value the position column takes at serving (the top slot seen in training) when the
    ranker reads position as a feature, else None."""
    if meta.get("position") is not None and meta.get("position_correction") == "feature":
        return str(meta.get("serve_position", 0))
    return None


def score_frame(ranker: Ranker, frame: pd.DataFrame) -> np.ndarray:
    """(N, T) probabilities of a frame of candidates (one row each, the encoder's columns); a
    position feature takes its serving value."""
    value = position_value(ranker.meta)
    if value is not None:
        frame = frame.assign(**{ranker.meta["position"]: int(value)})
    return ranker.score_encoded(ranker.encoder.transform(frame))


class OnnxRanker:
    """A neural ranker: the exported graph (inputs ids (B, F) int64 and values (B, D) float32,
    output logits (B, T)) under ONNX Runtime."""

    def __init__(self, folder: Path, threads: int = 1) -> None:
        folder = Path(folder)
        self.encoder = TabularEncoder.load(folder / "encoder.json")
        self.meta = _read_meta(folder)
        try:
            self.session = open_session(folder / "model.onnx", threads)
        except Exception as exc:  # ONNX Runtime raises its own types for damaged graphs
            raise CheckpointError(f"ranker in {folder} is missing or corrupt: {exc}") from exc
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        # an input of width 0 (no dense or no categorical features) is pruned from the graph
        expected = {"ids": len(self.encoder.categorical), "values": len(self.encoder.dense)}
        if set(inputs) - set(expected) or any(
            inputs.get(name, [None, 0])[1] != width for name, width in expected.items()
        ):
            raise CheckpointError(f"ranker in {folder}: the graph's inputs {inputs} do not fit its encoder")
        self.inputs = set(inputs)
        self.tasks: list[str] = list(self.meta["tasks"])

    def score_encoded(self, encoded: Encoded) -> np.ndarray:
        feed = {"ids": encoded.sparse, "values": encoded.dense}
        (logits,) = self.session.run(["logits"], {k: v for k, v in feed.items() if k in self.inputs})
        out: np.ndarray = expit(logits.astype(np.float64))
        return out

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        return score_frame(self, frame)


class PerTaskRanker:
    """``lr`` or ``gbdt``: one model per task over one shared encoder."""

    def __init__(self, folder: Path) -> None:
        from recstack.models.gbdt import GBDTRanker
        from recstack.models.lr import LogisticRanker

        folder = Path(folder)
        self.meta = _read_meta(folder)
        self.kind = str(self.meta["kind"])
        self.encoder = TabularEncoder.load(folder / "encoder.json")
        self.tasks = list(self.meta["tasks"])
        loader = LogisticRanker.load if self.kind == "lr" else GBDTRanker.load
        self.models: list[Any] = []
        for task in self.tasks:
            model = loader(folder / "tasks" / task)
            if model.encoder.to_dict() != self.encoder.to_dict():
                raise CheckpointError(f"ranker in {folder}: task '{task}' was fitted on another encoder")
            model.encoder = self.encoder
            self.models.append(model)

    def score_encoded(self, encoded: Encoded) -> np.ndarray:
        return np.column_stack([m.predict_encoded(encoded) for m in self.models])

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        return score_frame(self, frame)


def load_ranker(folder: Path, threads: int = 1) -> OnnxRanker | PerTaskRanker:
    """The ranker exported to ``folder``, by its kind; CheckpointError if it is damaged or of a kind
    this version cannot serve."""
    folder = Path(folder)
    kind = _read_meta(folder).get("kind", "dcn_v2")
    if kind in CLASSICAL_KINDS:
        return PerTaskRanker(folder)
    if kind in NEURAL_KINDS:
        return OnnxRanker(folder, threads)
    raise CheckpointError(
        f"ranker in {folder} is of kind {kind!r}, which serving cannot load; kinds: "
        f"{', '.join(CLASSICAL_KINDS + NEURAL_KINDS)}"
    )
