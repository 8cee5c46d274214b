"""The safety classifier as trained, saved, registered and served.

``train_safety`` fits the configured classifier (``[safety] model``) on the Davidson tweets' fixed
stratified split, picks the two thresholds of the unsafe score on validation (block at
``block_precision``, review at ``review_precision``), scores the test split, saves a
``SafetyModel`` folder (the fitted scikit-learn model by joblib and ``bundle.json`` with the
thresholds and metrics) and registers it under ``[safety] model_name``, gated on validation
``gate_metric``. Per-class offsets of the log-probabilities are chosen on validation for macro-F1
(the imbalance: 6% of the tweets are hate) before the thresholds, and stored with them.
``SafetyModel.load`` is what serving uses: no training code runs, and a missing or damaged file is a
``CheckpointError`` naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recstack.config import Settings
from recstack.errors import CheckpointError, RecstackError
from recstack.safety.classifier import (
    LABELS,
    MiniLMFineTuned,
    choose_threshold,
    clean_text,
    evaluate,
    fit_class_bias,
    make_classifier,
    split_stratified,
    unsafe_score,
    with_bias,
)

FORMAT = 1


@dataclass
class Moderation:
    label: str  # hate, offensive or neither (the most likely class)
    score: float  # P(hate) + P(offensive)
    decision: str  # block, review or allow (the score against the two thresholds)
    truncated: bool  # the text was cut at [safety] max_chars before scoring


class SafetyModel:
    def __init__(self, classifier: Any, block_at: float, review_at: float, meta: dict[str, Any]) -> None:
        self.classifier = classifier
        self.block_at = block_at
        self.review_at = review_at
        self.meta = meta
        self.class_bias = np.asarray(meta.get("class_bias", [0.0, 0.0, 0.0]), dtype=np.float64)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """(N, 3) class probabilities of cleaned texts, with the class offsets chosen on validation."""
        return with_bias(self.classifier.predict_proba(texts), self.class_bias)

    def moderate(self, texts: list[str], max_chars: int = 2_000) -> list[Moderation]:
        cleaned = [clean_text(t, max_chars) for t in texts]
        probs = self.predict_proba([c[0] for c in cleaned]) if texts else np.zeros((0, 3))
        scores = unsafe_score(probs)
        out = []
        for (_, truncated), row, score in zip(cleaned, probs, scores, strict=True):
            decision = "block" if score >= self.block_at else "review" if score >= self.review_at else "allow"
            out.append(Moderation(LABELS[int(row.argmax())], float(score), decision, truncated))
        return out

    def save(self, folder: Path) -> None:
        import joblib

        folder.mkdir(parents=True, exist_ok=True)
        joblib.dump(self.classifier, folder / "classifier.joblib")
        meta = self.meta | {"format": FORMAT, "block_at": self.block_at, "review_at": self.review_at}
        (folder / "bundle.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: Path) -> SafetyModel:
        import joblib

        try:
            meta = json.loads((folder / "bundle.json").read_text())
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')} is not {FORMAT}")
            classifier = joblib.load(folder / "classifier.joblib")
            block_at, review_at = float(meta["block_at"]), float(meta["review_at"])
        except Exception as exc:  # missing files, damaged pickles or JSON
            raise CheckpointError(f"cannot load the safety model in {folder}: {exc}") from exc
        if not hasattr(classifier, "predict_proba"):
            raise CheckpointError(f"{folder / 'classifier.joblib'} holds no classifier")
        return cls(classifier, block_at, review_at, meta)


def train_safety(
    settings: Settings, folder: Path, progress: Any = None
) -> tuple[SafetyModel, dict[str, float]]:
    """Fit, pick the thresholds on validation, score test; save into ``folder``. Returns the model
    and its metrics (``macro_f1`` etc. on validation, ``test_*`` on test). ``progress(n, total)``
    follows the fine-tuning steps of ``minilm_ft``."""
    from recstack.data.readers import read_hate_speech

    cfg = settings.safety
    data = cfg.data or settings.paths.data_dir / "davidson_hate_offensive"
    frame = read_hate_speech(data).frame
    frame = frame.assign(text=[clean_text(t, cfg.max_chars)[0] for t in frame["tweet"]])
    train, valid, test = split_stratified(frame, cfg.seed)
    if cfg.max_train_rows is not None and len(train) > cfg.max_train_rows:
        train = train.sample(n=cfg.max_train_rows, random_state=cfg.seed)
    if train["label"].nunique() < 3:
        raise RecstackError("the training rows do not hold all three classes (hate, offensive, neither)")
    extra = {"epochs": cfg.epochs} if cfg.model.value == "minilm_ft" else {}
    classifier = make_classifier(cfg.model.value, c=cfg.lr_c, seed=cfg.seed, **extra)
    if isinstance(classifier, MiniLMFineTuned):
        classifier.fit(train["text"].tolist(), train["label"].to_numpy(), progress=progress)
    else:
        classifier.fit(train["text"].tolist(), train["label"].to_numpy())
    raw_valid = classifier.predict_proba(valid["text"].tolist())
    bias = fit_class_bias(valid["label"].to_numpy(), raw_valid)
    p_valid = with_bias(raw_valid, bias)
    unsafe_valid = (valid["label"].to_numpy() != 2).astype(int)
    score_valid = unsafe_score(p_valid)
    block_at = choose_threshold(unsafe_valid, score_valid, cfg.block_precision, cfg.prevalence)
    review_at = min(
        block_at, choose_threshold(unsafe_valid, score_valid, cfg.review_precision, cfg.prevalence)
    )
    metrics = evaluate(valid["label"].to_numpy(), p_valid).flat()
    metrics |= {
        f"test_{k}": v
        for k, v in evaluate(
            test["label"].to_numpy(), with_bias(classifier.predict_proba(test["text"].tolist()), bias)
        )
        .flat()
        .items()
    }
    meta = {
        "model": cfg.model.value,
        "rows": {"train": len(train), "valid": len(valid), "test": len(test)},
        "seed": cfg.seed,
        "metrics": metrics,
        "block_precision": cfg.block_precision,
        "review_precision": cfg.review_precision,
        "prevalence": cfg.prevalence,
        "class_bias": bias.tolist(),
    }
    model = SafetyModel(classifier, block_at, review_at, meta)
    model.save(folder)
    return model, metrics
