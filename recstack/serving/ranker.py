"""The ranker as serving loads it: ONNX Runtime over the exported graph, plus the feature encoder.

No training code is imported here. ``score`` takes a frame of candidates (one row each, the feature
columns the encoder names) and returns (N, T) probabilities, one column per task.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

from recstack.errors import CheckpointError
from recstack.features.tabular import Encoded, TabularEncoder
from recstack.serving.onnx import open_session


class OnnxRanker:
    def __init__(self, folder: Path, threads: int = 1) -> None:
        folder = Path(folder)
        self.encoder = TabularEncoder.load(folder / "encoder.json")
        try:
            self.meta: dict[str, Any] = json.loads((folder / "ranker.json").read_text())
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
        position = self.meta.get("position")
        if position is not None and self.meta.get("position_correction") == "feature":
            frame = frame.assign(**{position: self.meta["serve_position"]})
        return self.score_encoded(self.encoder.transform(frame))
