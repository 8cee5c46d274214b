"""GBDT ranker with LightGBM: categorical fields as native categorical features (index 0 =
unseen), dense features as they come (the encoder's standardization does not change the trees).
Early stopping on a validation set when one is given. Saves LightGBM's text model plus the encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from recstack.errors import CheckpointError, RecstackError
from recstack.features.tabular import Encoded, TabularEncoder
from recstack.models.lr import _check_binary


class GBDTRanker:
    def __init__(
        self,
        categorical: Sequence[str] = (),
        dense: Sequence[str] = (),
        num_leaves: int = 63,
        learning_rate: float = 0.05,
        rounds: int = 1000,
        early_stopping: int = 50,
        threads: int = 2,
        seed: int = 0,
    ) -> None:
        self.encoder = TabularEncoder(categorical, dense)
        self.params: dict[str, Any] = {
            "objective": "binary",
            "num_leaves": num_leaves,
            "learning_rate": learning_rate,
            "num_threads": threads,
            "seed": seed,
            "verbose": -1,
            "max_cat_to_onehot": 8,
            "cat_smooth": 10.0,
        }
        self.rounds = rounds
        self.early_stopping = early_stopping
        self.booster: lgb.Booster | None = None

    def _matrix(self, encoded: Encoded) -> np.ndarray:
        return np.hstack([encoded.sparse.astype(np.float64), encoded.dense.astype(np.float64)])

    def fit(
        self,
        frame: pd.DataFrame,
        y: np.ndarray,
        valid: pd.DataFrame | None = None,
        y_valid: np.ndarray | None = None,
    ) -> GBDTRanker:
        encoded = self.encoder.fit_transform(frame)
        valid_encoded = self.encoder.transform(valid) if valid is not None else None
        return self.fit_encoded(encoded, y, valid=valid_encoded, y_valid=y_valid)

    def fit_encoded(
        self,
        encoded: Encoded,
        y: np.ndarray,
        weight: np.ndarray | None = None,
        valid: Encoded | None = None,
        y_valid: np.ndarray | None = None,
        init: GBDTRanker | None = None,
    ) -> GBDTRanker:
        """Fit on rows already encoded by ``self.encoder`` (fitted), early stopping on ``valid``.
        ``weight``: (N,) sample weights; ``init``: a fitted ranker over the same encoder whose
        trees this one continues (more trees on new data, for incremental training)."""
        y = _check_binary(y)
        train_set = lgb.Dataset(
            self._matrix(encoded),
            y,
            weight=weight,
            categorical_feature=list(range(len(self.encoder.categorical))),
            free_raw_data=False,
        )
        sets: list[lgb.Dataset] = []
        callbacks: list[Any] = []
        if valid is not None and y_valid is not None:
            sets.append(lgb.Dataset(self._matrix(valid), y_valid, reference=train_set))
            callbacks.append(lgb.early_stopping(self.early_stopping, verbose=False))
        self.booster = lgb.train(
            self.params,
            train_set,
            self.rounds,
            valid_sets=sets,
            callbacks=callbacks,
            init_model=init.booster if init is not None else None,
        )
        return self

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """(N,) click probabilities."""
        return self.predict_encoded(self.encoder.transform(frame))

    def predict_encoded(self, encoded: Encoded) -> np.ndarray:
        """(N,) probabilities of rows encoded by ``self.encoder``."""
        if self.booster is None:
            raise RecstackError("the ranker is not fitted")
        out = self.booster.predict(self._matrix(encoded), num_iteration=self.booster.best_iteration or None)
        return np.asarray(out, dtype=np.float64)

    def save(self, folder: Path) -> None:
        if self.booster is None:
            raise RecstackError("the ranker is not fitted")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(folder / "gbdt.txt"))
        self.encoder.save(folder / "encoder.json")

    @classmethod
    def load(cls, folder: Path) -> GBDTRanker:
        folder = Path(folder)
        encoder = TabularEncoder.load(folder / "encoder.json")
        try:
            booster = lgb.Booster(model_file=str(folder / "gbdt.txt"))
        except Exception as exc:  # LightGBM raises LightGBMError or OSError
            raise CheckpointError(f"GBDT ranker in {folder} is missing or corrupt: {exc}") from exc
        ranker = cls(encoder.categorical, encoder.dense)
        ranker.encoder, ranker.booster = encoder, booster
        return ranker
