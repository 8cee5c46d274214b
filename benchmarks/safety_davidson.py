"""Unsafe-text classifiers on the Davidson et al. (2017) tweets: three-way (hate / offensive /
neither) and the binary unsafe score, on a fixed stratified 80/10/10 split (seed 2026).

For each model kind (``recstack.safety.classifier``): per-class precision, recall and F1 on the
test split, macro and weighted F1, PR-AUC of the unsafe score (hate or offensive against neither),
unsafe recall at 95% precision, the unsafe F1 of the argmax class, the threshold chosen on
validation for 95% unsafe precision, training time, and scoring speed at batch 1 and 256.
Beside them: the data set authors' published logistic regression (weighted F1 0.90; hate
precision 0.44, recall 0.61, F1 0.51; their own split, so not the same rows) and the kept library
``alt-profanity-check`` on the same test rows (flagged at its probability >= 0.5), scored as unsafe F1.
``alt-profanity-check`` is installed only for this benchmark: ``pip install 'recstack[bench]'``.

    .venv/bin/python benchmarks/safety_davidson.py [--quick]

Ends with ``RESULT model=<best> macro_f1=<x> hate_f1=<x> pr_auc=<x> unsafe_f1=<x> peer_f1=<x>``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import DATA_DIR, record

from recstack.data.readers import read_hate_speech
from recstack.safety.classifier import (
    MODELS,
    binary_f1,
    choose_threshold,
    clean_text,
    evaluate,
    make_classifier,
    split_stratified,
    unsafe_score,
)

SEED = 2026
PUBLISHED = {"weighted_f1": 0.90, "hate_precision": 0.44, "hate_recall": 0.61, "hate_f1": 0.51}


def speed(model: object, texts: list[str], batch: int, n: int) -> float:
    """Texts a second scored in batches of ``batch`` (``n`` texts in all)."""
    picked = (texts * (n // len(texts) + 1))[:n]
    started = time.perf_counter()
    for start in range(0, n, batch):
        model.predict_proba(picked[start : start + batch])  # type: ignore[attr-defined]
    return n / (time.perf_counter() - started)


def _precision(unsafe: np.ndarray, flagged: np.ndarray) -> float:
    return float(unsafe[flagged].mean()) if flagged.any() else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="train on 4,000 tweets")
    parser.add_argument("--data", type=Path, default=DATA_DIR / "davidson_hate_offensive")
    args = parser.parse_args()
    frame = read_hate_speech(args.data).frame
    frame = frame.assign(text=[clean_text(t)[0] for t in frame["tweet"]])
    train, valid, test = split_stratified(frame, SEED)
    if args.quick:
        train = train.sample(n=4_000, random_state=SEED)
    print(f"train {len(train):,}, validation {len(valid):,}, test {len(test):,} tweets")
    unsafe_test = (test["label"].to_numpy() != 2).astype(int)
    figures: dict[str, dict[str, float]] = {}
    for kind in MODELS:
        model = make_classifier(kind, seed=SEED)
        started = time.perf_counter()
        model.fit(train["text"].tolist(), train["label"].to_numpy())
        fit_s = time.perf_counter() - started
        p_valid = model.predict_proba(valid["text"].tolist())
        threshold = choose_threshold(
            (valid["label"].to_numpy() != 2).astype(int), unsafe_score(p_valid), 0.95
        )
        p_test = model.predict_proba(test["text"].tolist())
        metrics = evaluate(test["label"].to_numpy(), p_test).flat()
        metrics |= {
            "threshold_95": threshold,
            "test_precision_at_threshold": _precision(unsafe_test, unsafe_score(p_test) >= threshold),
            "train_s": fit_s,
            "texts_per_s_batch1": speed(model, test["text"].tolist(), 1, 200),
            "texts_per_s_batch256": speed(model, test["text"].tolist(), 256, 2_560),
        }
        figures[kind] = metrics
        m = metrics
        print(
            f"{kind:10s} macro-F1 {m['macro_f1']:.4f}  weighted-F1 {m['weighted_f1']:.4f}  "
            f"hate P/R/F1 {m['hate_precision']:.3f}/{m['hate_recall']:.3f}/{m['hate_f1']:.3f}  "
            f"PR-AUC {m['pr_auc']:.4f}  recall@95%P {m['recall_at_95']:.4f}  "
            f"unsafe F1 {m['unsafe_f1']:.4f}  trained {fit_s:.0f} s  "
            f"{m['texts_per_s_batch1']:.0f} / {m['texts_per_s_batch256']:.0f} texts/s (batch 1 / 256)"
        )
    try:
        from profanity_check import predict_prob
    except ImportError as exc:
        raise SystemExit("alt-profanity-check is not installed: pip install 'recstack[bench]'") from exc
    peer_f1 = binary_f1(unsafe_test, np.asarray(predict_prob(test["tweet"].tolist())) >= 0.5)
    print(f"alt-profanity-check unsafe F1 {peer_f1:.4f}; published LR (own split): {PUBLISHED}")
    best = max(figures, key=lambda k: figures[k]["macro_f1"])
    out: dict[str, object] = {
        "model": best,
        "macro_f1": round(figures[best]["macro_f1"], 4),
        "hate_f1": round(figures[best]["hate_f1"], 4),
        "pr_auc": round(figures[best]["pr_auc"], 4),
        "unsafe_f1": round(figures[best]["unsafe_f1"], 4),
        "peer_f1": round(peer_f1, 4),
    }
    for kind, metrics in figures.items():
        for key in (
            "macro_f1",
            "weighted_f1",
            "hate_precision",
            "hate_recall",
            "hate_f1",
            "pr_auc",
            "recall_at_95",
            "unsafe_f1",
            "threshold_95",
            "train_s",
            "texts_per_s_batch1",
            "texts_per_s_batch256",
        ):
            out[f"{kind}_{key}"] = round(metrics[key], 4 if metrics[key] < 100 else 0)
    record(
        "safety_davidson" + (" --quick" if args.quick else ""),
        out,
        f"Davidson tweets, stratified 80/10/10 split seed {SEED}; test rows {len(test):,}; threshold_95: "
        "chosen on validation for 95% unsafe precision; peer alt-profanity-check 1.9.1 flagged at p >= 0.5; "
        "goals macro_f1 >= 0.76, hate_f1 >= 0.55, every model above the peer on unsafe F1",
    )


if __name__ == "__main__":
    main()
