"""Training and export of the rankers of every kind ``[ranking] model`` names.

``build_ranker`` composes a neural model (DCN-v2, shared-bottom, MMoE, PLE) from ``[ranking]``;
``NeuralRanker`` wraps encoder, model, task and the one training loop behind fit / predict_proba,
and exports the serving graph to ONNX (``export``). ``PerTaskTrainer`` gives logistic regression and
GBDT the same interface, one model per task over one encoder. ``make_ranker`` picks the class for
the configured kind. ``recstack.servables.ranker.load_ranker`` loads what either exports without
any training code.

Position handling (``[ranking] position``):
- ``none``: the position column is ignored.
- ``feature``: position is one more categorical feature; at serving every candidate gets the top
  slot's value (the usual "set position to 0 at inference" trick).
- ``tower``: a shallow position tower adds a logit offset in training and is dropped at serving.
- ``ips``: rows are weighted by the caller's ``weight`` column (inverse propensities).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.special import expit
from torch import nn

from recstack.config import (
    NEURAL_RANKERS,
    Activation,
    PositionCorrection,
    RankerKind,
    RankingConfig,
    Settings,
    Structure,
)
from recstack.errors import CheckpointError, RecstackError
from recstack.eval.metrics import auc, logloss
from recstack.features.tabular import Encoded, TabularEncoder
from recstack.layers.cross import CrossNet, Parallel, Stacked
from recstack.layers.experts import PLE, MMoE, SharedBottom
from recstack.layers.fields import RankerInput
from recstack.layers.mlp import Deep
from recstack.models.dcn import DCNv2
from recstack.models.multitask import MultiTask
from recstack.models.position import PositionBias
from recstack.servables.onnx import export_onnx
from recstack.tasks.ranking import MultiTaskBCE, top_k_labels
from recstack.train.batch import BatchLoader, ColumnRoles
from recstack.train.loop import FitResult, training_threads
from recstack.train.tracking import Tracker

ACTIVATIONS: dict[Activation, type[nn.Module]] = {
    Activation.relu: nn.ReLU,
    Activation.gelu: nn.GELU,
    Activation.silu: nn.SiLU,
    Activation.prelu: nn.PReLU,
}


def build_ranker(cfg: RankingConfig, vocab_sizes: Sequence[int], dense_dim: int) -> nn.Module:
    if cfg.model not in NEURAL_RANKERS:
        raise RecstackError(f"{cfg.model.value} is not a neural ranker; train it with PerTaskTrainer")
    tasks = list(cfg.tasks)
    inputs = RankerInput(vocab_sizes, dense_dim, cfg.embedding_dim)
    width = inputs.out_dim
    model: DCNv2 | MultiTask
    if cfg.model is RankerKind.dcn_v2:
        deep = Deep(width, cfg.hidden, cfg.norm, ACTIVATIONS[cfg.activation], cfg.dropout)
        cross = CrossNet(width, cfg.cross_layers)
        body = Parallel(cross, deep) if cfg.structure is Structure.parallel else Stacked(cross, deep)
        model = DCNv2(inputs, body, tasks)
    else:
        mixer: nn.Module
        if cfg.model is RankerKind.shared_bottom:
            mixer = SharedBottom(width, cfg.hidden, len(tasks), cfg.norm)
        elif cfg.model is RankerKind.mmoe:
            mixer = MMoE(width, cfg.expert_hidden, cfg.experts, len(tasks), cfg.norm)
        else:
            mixer = PLE(
                width, cfg.expert_hidden, len(tasks), cfg.levels, cfg.task_experts, cfg.experts, cfg.norm
            )
        model = MultiTask(inputs, mixer, cfg.tower_hidden, tasks, cfg.norm)
    for module in model.modules():  # Xavier-normal linears, zero biases (as FuxiCTR and DeepCTR do)
        if isinstance(module, nn.Linear):
            nn.init.xavier_normal_(module.weight)
            nn.init.zeros_(module.bias)
    if cfg.position is PositionCorrection.tower:
        model.position_bias = PositionBias(cfg.max_position, len(tasks))
    return model


class NeuralRanker:
    """fit(train, valid) on frames holding the feature columns and one 0/1 column per task."""

    def __init__(
        self,
        settings: Settings,
        categorical: Sequence[str] = (),
        dense: Sequence[str] = (),
        position: str | None = None,
        weight: str | None = None,
        run_name: str = "ranker",
        tracker: Tracker | None = None,
    ) -> None:
        self.settings = settings
        self.cfg = settings.ranking
        self.tasks = list(self.cfg.tasks)
        self.position = position
        self.weight = weight
        uses_position = position is not None and self.cfg.position is PositionCorrection.feature
        features = list(categorical)
        if uses_position and position is not None:
            features.append(position)
        self.encoder = TabularEncoder(features, dense)
        self.run_name = run_name
        self.tracker = tracker
        self.model: nn.Module | None = None
        self.serve_position: int = 0
        self.fit_result: FitResult | None = None

    def _serving_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        if self.position is not None and self.cfg.position is PositionCorrection.feature:
            return frame.assign(**{self.position: self.serve_position})
        return frame

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame, warm_start: Path | None = None) -> FitResult:
        """Train on ``train``, select the epoch on ``valid``. ``warm_start``: a folder this class
        exported; training continues from its weights with its feature encoder (new categories map
        to the unseen row), for incremental training on new data."""
        from recstack.train.recipes import make_trainer

        if len(train) == 0 or len(valid) == 0:
            raise RecstackError("training and validation frames must not be empty")
        _check_label_columns(train, self.tasks)
        if self.position is not None and self.position not in train.columns:
            raise RecstackError(f"position column '{self.position}' is missing")
        if self.position is not None:
            self.serve_position = int(train[self.position].min())
        if warm_start is not None:
            self.encoder = TabularEncoder.load(Path(warm_start) / "encoder.json")
            encoded = self.encoder.transform(train)
        else:
            encoded = self.encoder.fit_transform(train)
        columns: dict[str, np.ndarray] = {"ids": encoded.sparse, "values": encoded.dense}
        columns |= {t: train[t].to_numpy(np.float32) for t in self.tasks}
        position = weight = None
        if self.cfg.position is PositionCorrection.tower and self.position is not None:
            columns[position := "position"] = train[self.position].to_numpy(np.int64)
        if self.cfg.position is PositionCorrection.ips:
            if self.weight is None or self.weight not in train.columns:
                raise RecstackError("position = 'ips' needs a weight column of inverse propensities")
            columns[weight := "weight"] = train[self.weight].to_numpy(np.float32)
        roles = ColumnRoles(("ids",), ("values",), tuple(self.tasks), weight=weight, position=position)
        torch.manual_seed(self.settings.train.seed)
        self.model = build_ranker(self.cfg, self.encoder.vocab_sizes, len(self.encoder.dense))
        if warm_start is not None:
            try:
                state = torch.load(Path(warm_start) / "model.pt", map_location="cpu", weights_only=True)
                self.model.load_state_dict(state)
            except Exception as exc:  # torch raises several types for damaged or mismatched weights
                raise CheckpointError(f"cannot warm-start from {warm_start}: {exc}") from exc
        loader = BatchLoader(columns, roles, batch_size=self.settings.train.batch_size)
        task = MultiTaskBCE(self.tasks, self.cfg.tasks, self.cfg.embedding_l2, self.cfg.embedding_l1)
        valid_encoded = self.encoder.transform(self._serving_frame(valid))
        valid_labels = {t: valid[t].to_numpy(np.float64) for t in self.tasks}

        def validate(net: nn.Module) -> dict[str, float]:
            probs = self._predict_encoded(net, valid_encoded)
            out: dict[str, float] = {}
            for t, task_name in enumerate(self.tasks):
                y = valid_labels[task_name]
                seen = ~np.isnan(y)
                out[f"auc_{task_name}"] = auc(y[seen], probs[seen, t])
                out[f"logloss_{task_name}"] = logloss(y[seen], probs[seen, t])
            # a rare task may have one class in a small validation set: its AUC is NaN, the mean
            # runs over the tasks that have one
            aucs = [out[f"auc_{t}"] for t in self.tasks if not np.isnan(out[f"auc_{t}"])]
            out["auc"] = float(np.mean(aucs)) if aucs else float("nan")
            return out

        trainer = make_trainer(self.settings, self.run_name, self.tracker)
        self.fit_result = trainer.fit(
            self.model, task, loader, validate, monitor="auc", params=self.cfg.model_dump(mode="json")
        )
        return self.fit_result

    @staticmethod
    def _predict_encoded(model: nn.Module, encoded: Encoded, batch: int = 65_536) -> np.ndarray:
        model.eval()
        parts = []
        with torch.no_grad():
            for start in range(0, len(encoded), batch):
                ids, values = encoded.sparse[start : start + batch], encoded.dense[start : start + batch]
                parts.append(model(torch.from_numpy(ids), torch.from_numpy(values)).numpy())
        logits = np.concatenate(parts) if parts else np.zeros((0, 1), dtype=np.float32)
        out: np.ndarray = expit(logits.astype(np.float64))
        return out

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """(N, T) probabilities, one column per task, as served (no position offset)."""
        if self.model is None:
            raise RecstackError("the ranker is not fitted")
        return self._predict_encoded(self.model, self.encoder.transform(self._serving_frame(frame)))

    def export(self, folder: Path) -> Path:
        """Write the servable: ``model.onnx`` (inputs ids (B, F) int64 and values (B, D) float32,
        output logits (B, T)), ``encoder.json`` and ``ranker.json``. Returns the folder."""
        if self.model is None:
            raise RecstackError("the ranker is not fitted")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model = self.model.eval()
        ids = torch.zeros((4, len(self.encoder.categorical)), dtype=torch.int64)
        values = torch.zeros((4, len(self.encoder.dense)), dtype=torch.float32)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            path = Path(tmp) / "model.onnx"
            export_onnx(model, (ids, values), ["ids", "values"], "logits", path)
            path.replace(folder / "model.onnx")
        self.encoder.save(folder / "encoder.json")
        torch.save(model.state_dict(), folder / "model.pt")  # for warm starts; serving reads the ONNX
        _write_meta(folder, self.cfg, self.tasks, self.position, self.serve_position)
        return folder


class PerTaskTrainer:
    """``lr`` or ``gbdt`` as a multi-task ranker: one LogisticRanker or GBDTRanker per task over one
    shared encoder, with NeuralRanker's fit / predict_proba / export. Position handling as there,
    but for ``tower`` (a neural block; the config refuses it for these kinds)."""

    def __init__(
        self,
        settings: Settings,
        categorical: Sequence[str] = (),
        dense: Sequence[str] = (),
        position: str | None = None,
        weight: str | None = None,
    ) -> None:
        self.settings = settings
        self.cfg = settings.ranking
        if self.cfg.model in NEURAL_RANKERS:
            raise RecstackError(f"{self.cfg.model.value} is a neural ranker: train it with NeuralRanker")
        self.kind = self.cfg.model
        self.tasks = list(self.cfg.tasks)
        self.position = position
        self.weight = weight
        features = list(categorical)
        if position is not None and self.cfg.position is PositionCorrection.feature:
            features.append(position)
        self.encoder = TabularEncoder(features, dense)
        self.models: list[Any] = []
        self.serve_position = 0

    def _new_model(self) -> Any:
        from recstack.models.gbdt import GBDTRanker
        from recstack.models.lr import LogisticRanker

        cfg = self.cfg
        if self.kind is RankerKind.lr:
            return LogisticRanker(self.encoder.categorical, self.encoder.dense, cfg.lr_crosses, c=cfg.lr_c)
        return GBDTRanker(
            self.encoder.categorical,
            self.encoder.dense,
            num_leaves=cfg.gbdt_leaves,
            learning_rate=cfg.gbdt_learning_rate,
            rounds=cfg.gbdt_rounds,
            threads=training_threads(self.settings.train.num_threads),
            seed=self.settings.train.seed,
        )

    def _serving_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        if self.position is not None and self.cfg.position is PositionCorrection.feature:
            return frame.assign(**{self.position: self.serve_position})
        return frame

    def fit(self, train: pd.DataFrame, valid: pd.DataFrame, warm_start: Path | None = None) -> None:
        """Fit every task's model on ``train`` (GBDT stops early on ``valid``). ``warm_start``: a
        folder of this kind exported by ``export``; its encoder is kept (new categories map to the
        unseen index) and each task continues from its model (LR: the solver starts at its
        weights; GBDT: more trees on top of its trees)."""
        from recstack.servables.ranker import PerTaskRanker

        if len(train) == 0 or len(valid) == 0:
            raise RecstackError("training and validation frames must not be empty")
        _check_label_columns(train, self.tasks)
        if self.position is not None:
            if self.position not in train.columns:
                raise RecstackError(f"position column '{self.position}' is missing")
            self.serve_position = int(train[self.position].min())
        previous: dict[str, Any] = {}
        if warm_start is not None:
            champion = PerTaskRanker(Path(warm_start))
            self.encoder = champion.encoder
            previous = dict(zip(champion.tasks, champion.models, strict=True))
            encoded = self.encoder.transform(train)
        else:
            encoded = self.encoder.fit_transform(train)
        weight = None
        if self.cfg.position is PositionCorrection.ips:
            if self.weight is None or self.weight not in train.columns:
                raise RecstackError("position = 'ips' needs a weight column of inverse propensities")
            weight = train[self.weight].to_numpy(np.float64)
        valid_encoded = self.encoder.transform(self._serving_frame(valid))
        self.models = []
        for task in self.tasks:
            model = self._new_model()
            model.encoder = self.encoder
            y = train[task].to_numpy(np.float64)
            if self.kind is RankerKind.lr:
                model.fit_encoded(encoded, y, weight, init=previous.get(task))
            else:
                y_valid = valid[task].to_numpy(np.float64)
                has_both = len(np.unique(y_valid)) == 2
                model.fit_encoded(
                    encoded,
                    y,
                    weight,
                    valid_encoded if has_both else None,
                    y_valid if has_both else None,
                    init=previous.get(task),
                )
            self.models.append(model)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """(N, T) probabilities, one column per task, as served."""
        if not self.models:
            raise RecstackError("the ranker is not fitted")
        encoded = self.encoder.transform(self._serving_frame(frame))
        return np.column_stack([m.predict_encoded(encoded) for m in self.models])

    def export(self, folder: Path) -> Path:
        """Write ``ranker.json``, ``encoder.json`` and ``tasks/<task>/`` (each model's own files)."""
        if not self.models:
            raise RecstackError("the ranker is not fitted")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.encoder.save(folder / "encoder.json")
        for task, model in zip(self.tasks, self.models, strict=True):
            model.save(folder / "tasks" / task)
        _write_meta(folder, self.cfg, self.tasks, self.position, self.serve_position)
        return folder


def _write_meta(
    folder: Path, cfg: RankingConfig, tasks: list[str], position: str | None, serve_position: int
) -> None:
    """``ranker.json``: what ``servables.ranker.load_ranker`` reads (kind, tasks, position handling)."""
    meta: dict[str, Any] = {
        "kind": cfg.model.value,
        "tasks": tasks,
        "position": position,
        "position_correction": cfg.position.value,
        "serve_position": serve_position,
        "config": cfg.model_dump(mode="json"),
    }
    (folder / "ranker.json").write_text(json.dumps(meta, indent=2))


def _check_label_columns(frame: pd.DataFrame, tasks: Sequence[str]) -> None:
    missing = [t for t in tasks if t not in frame.columns]
    if missing:
        raise RecstackError(f"label columns {missing} are missing (tasks are {list(tasks)})")
    for task in tasks:
        values = frame[task].dropna()
        if values.nunique() < 2:
            raise RecstackError(
                f"label '{task}' has one class only ({values.unique().tolist()}); "
                "a ranker cannot learn from it"
            )


def make_ranker(
    settings: Settings,
    categorical: Sequence[str],
    dense: Sequence[str],
    position: str | None = None,
    weight: str | None = None,
    run_name: str = "ranker",
) -> NeuralRanker | PerTaskTrainer:
    """The trainer for ``[ranking] model``: NeuralRanker for the neural kinds, else PerTaskTrainer."""
    if settings.ranking.model in NEURAL_RANKERS:
        return NeuralRanker(settings, categorical, dense, position, weight, run_name)
    return PerTaskTrainer(settings, categorical, dense, position, weight)


def distill_light_ranker(
    light: Any,
    frame: pd.DataFrame,
    heavy_scores: np.ndarray,
    request_column: str,
    k: int,
    valid: pd.DataFrame | None = None,
    valid_heavy_scores: np.ndarray | None = None,
) -> Any:
    """Train the first-stage ``light`` ranker (a LogisticRanker, GBDTRanker or a NeuralRanker whose
    single task is ``heavy_top_k``) to predict which candidates the heavy ranker puts in its top
    ``k`` of each request. Returns the fitted light ranker."""
    labels = top_k_labels(frame[request_column].to_numpy(), np.asarray(heavy_scores), k)
    if isinstance(light, NeuralRanker):
        if valid is None or valid_heavy_scores is None:
            raise RecstackError("a neural light ranker needs validation rows and their heavy scores")
        valid_labels = top_k_labels(valid[request_column].to_numpy(), np.asarray(valid_heavy_scores), k)
        light.fit(frame.assign(heavy_top_k=labels), valid.assign(heavy_top_k=valid_labels))
    else:
        light.fit(frame, labels)
    return light
