"""Unsafe-text classifiers on the Davidson et al. (2017) tweets: three-way (hate / offensive /
neither) and the binary unsafe score, on a fixed stratified 80/10/10 split (seed 2026).

For each model kind (``recstack.safety.classifier``), trained as ``recstack safety train`` trains it
(the class offsets chosen on validation for macro-F1, then the thresholds): per-class precision,
recall and F1 on the test split, macro and weighted F1, PR-AUC of the unsafe score (hate or
offensive against neither), unsafe recall at 95% precision, the unsafe F1 of the argmax class, the
threshold chosen on validation for 95% unsafe precision, training time (the two MiniLM kinds share
one embedding pass, whose time is counted in both), and scoring speed at batch 1 and 256.

The system's cost of moderation: items scored per second at ingest (a batch of 256, the import's
path) and the time the safety filter and the value model's unsafe penalties add to a feed request
(500 candidates over a 100,000-item catalog, against a filter that drops removed items only).
Fine-tuning the MiniLM encoder end to end is measured, not run: seconds per step of 32 tweets
(forward, backward, AdamW) on this machine's cores, and the epoch time that implies.
Beside them: the data set authors' published logistic regression (weighted F1 0.90; hate
precision 0.44, recall 0.61, F1 0.51; their own split, so not the same rows) and the kept library
``alt-profanity-check`` on the same test rows (flagged at its probability >= 0.5), scored as unsafe F1.
``alt-profanity-check`` is installed only for this benchmark: ``pip install 'recstack[bench]'``.

    .venv/bin/python benchmarks/safety_davidson.py [--quick] [--kinds tfidf_lr minilm_ft ...]

``minilm_ft`` (fine-tuning, two epochs) takes about half an hour on 2 cores; the others about ten
minutes together.

Ends with ``RESULT model=<best> macro_f1=<x> hate_f1=<x> pr_auc=<x> unsafe_f1=<x> peer_f1=<x>``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import DATA_DIR, record

from recstack.data.readers import read_hate_speech
from recstack.safety.classifier import (
    MODELS,
    MiniLMLogistic,
    binary_f1,
    choose_threshold,
    clean_text,
    evaluate,
    fit_class_bias,
    make_classifier,
    split_stratified,
    unsafe_score,
    with_bias,
)

SEED = 2026
PUBLISHED = {"weighted_f1": 0.90, "hate_precision": 0.44, "hate_recall": 0.61, "hate_f1": 0.51}


def speed(predict: Any, texts: list[str], batch: int, n: int) -> float:
    """Texts a second scored in batches of ``batch`` (``n`` texts in all)."""
    picked = (texts * (n // len(texts) + 1))[:n]
    started = time.perf_counter()
    for start in range(0, n, batch):
        predict(picked[start : start + batch])
    return n / (time.perf_counter() - started)


def _precision(unsafe: np.ndarray, flagged: np.ndarray) -> float:
    return float(unsafe[flagged].mean()) if flagged.any() else 0.0


def fit_kinds(train: Any, kinds: list[str]) -> dict[str, tuple[Any, float]]:
    """Each kind fitted on the training rows: (model, seconds). The MiniLM kinds embed once."""
    out: dict[str, tuple[Any, float]] = {}
    texts, labels = train["text"].tolist(), train["label"].to_numpy()
    embedded: tuple[np.ndarray, float] | None = None
    for kind in kinds:
        model = make_classifier(kind, seed=SEED)
        if isinstance(model, MiniLMLogistic):
            if embedded is None:
                started = time.perf_counter()
                embedded = (model.embed(texts), time.perf_counter() - started)
            started = time.perf_counter()
            model.head.fit(embedded[0], labels)
            out[kind] = (model, embedded[1] + time.perf_counter() - started)
        else:
            started = time.perf_counter()
            model.fit(texts, labels)
            out[kind] = (model, time.perf_counter() - started)
        print(f"{kind}: trained in {out[kind][1]:.0f} s", flush=True)
    return out


def filter_cost(repeats: int) -> dict[str, float]:
    """Microseconds the safety filter and the unsafe penalties add per feed request (p50 over
    ``repeats`` requests of 500 candidates over 100,000 items, 2% blocked, 3% in review, 1%
    unscored, 20,000 creators)."""
    from recstack.safety.items import BLOCK, REVIEW, UNSCORED
    from recstack.serving.ops.base import Candidates, RecRequest
    from recstack.serving.ops.filter import FilterOp
    from recstack.serving.state import FeedState

    rng = np.random.default_rng(SEED)
    n = 100_000
    state = FeedState()
    state.load_items(
        [f"i{k}" for k in range(n)], [f"c{k % 20_000}" for k in range(n)], np.zeros(n, dtype=np.int64)
    )
    draw = rng.random(n)
    state.safety.data[:n] = np.select([draw < 0.02, draw < 0.05, draw < 0.06], [BLOCK, REVIEW, UNSCORED], 0)
    state.unsafe.data[:n] = rng.random(n)

    def removed_only(request: RecRequest, candidates: Candidates, state: FeedState) -> Candidates:
        keep = ~state.removed.values[candidates.items]
        return candidates.take(np.flatnonzero(keep))

    def timed(fn: Any) -> float:
        times = []
        for _ in range(repeats):
            items = rng.choice(n, 500, replace=False)
            candidates = Candidates(items, np.zeros(500), ["two_tower"] * 500)
            request = RecRequest("u", 20, 0)
            started = time.perf_counter()
            fn(request, candidates, state)
            times.append(time.perf_counter() - started)
        return float(np.median(times) * 1e6)

    state.creator_unsafe_rate(np.arange(1), 2.0)  # the per-creator rates, cached per catalog version

    def penalties(request: RecRequest, candidates: Candidates, state: FeedState) -> np.ndarray:
        items = candidates.items
        review = (state.safety.values[items] & 3) == REVIEW
        return 0.5 * state.unsafe.values[items] * review + 0.5 * state.creator_unsafe_rate(items, 2.0)

    base = timed(removed_only)
    return {
        "filter_us": timed(FilterOp()),
        "removed_only_us": base,
        "penalties_us": timed(penalties),
    }


def finetune_step_s(texts: list[str], steps: int) -> float:
    """Median seconds of one fine-tuning step (32 tweets: forward, cross-entropy, backward, AdamW)
    of all-MiniLM-L6-v2 with a linear head."""
    import torch

    from recstack.features.text import TextEncoder

    torch.manual_seed(SEED)
    encoder = TextEncoder()._load()
    encoder.train()
    head = torch.nn.Linear(384, 3)
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=3e-5)
    times = []
    for step in range(steps + 1):
        batch = texts[step * 32 : (step + 1) * 32]
        started = time.perf_counter()
        features = encoder.tokenize(batch)
        logits = head(encoder(features)["sentence_embedding"])
        loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(batch), dtype=torch.long))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:  # the first step warms up
            times.append(time.perf_counter() - started)
    encoder.eval()
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="train on 4,000 tweets")
    parser.add_argument("--data", type=Path, default=DATA_DIR / "davidson_hate_offensive")
    parser.add_argument(
        "--kinds", nargs="+", choices=list(MODELS), default=list(MODELS), help="model kinds (default: all)"
    )
    args = parser.parse_args()
    frame = read_hate_speech(args.data).frame
    frame = frame.assign(text=[clean_text(t)[0] for t in frame["tweet"]])
    train, valid, test = split_stratified(frame, SEED)
    full_train = len(train)
    if args.quick:
        train = train.sample(n=4_000, random_state=SEED)
    print(f"train {len(train):,}, validation {len(valid):,}, test {len(test):,} tweets")
    unsafe_test = (test["label"].to_numpy() != 2).astype(int)
    figures: dict[str, dict[str, float]] = {}
    for kind, (model, fit_s) in fit_kinds(train, args.kinds).items():
        raw_valid = model.predict_proba(valid["text"].tolist())
        bias = fit_class_bias(valid["label"].to_numpy(), raw_valid)
        p_valid = with_bias(raw_valid, bias)
        threshold = choose_threshold(
            (valid["label"].to_numpy() != 2).astype(int), unsafe_score(p_valid), 0.95
        )
        p_test = with_bias(model.predict_proba(test["text"].tolist()), bias)
        metrics = evaluate(test["label"].to_numpy(), p_test).flat()

        def predict(texts: list[str], model: Any = model, bias: np.ndarray = bias) -> np.ndarray:
            return with_bias(model.predict_proba(texts), bias)

        metrics |= {
            "threshold_95": threshold,
            "test_precision_at_threshold": _precision(unsafe_test, unsafe_score(p_test) >= threshold),
            "train_s": fit_s,
            "texts_per_s_batch1": speed(predict, test["text"].tolist(), 1, 200),
            "texts_per_s_batch256": speed(predict, test["text"].tolist(), 256, 2_560),
        }
        figures[kind] = metrics
        m = metrics
        print(
            f"{kind:10s} macro-F1 {m['macro_f1']:.4f}  weighted-F1 {m['weighted_f1']:.4f}  "
            f"hate P/R/F1 {m['hate_precision']:.3f}/{m['hate_recall']:.3f}/{m['hate_f1']:.3f}  "
            f"PR-AUC {m['pr_auc']:.4f}  recall@95%P {m['recall_at_95']:.4f}  "
            f"unsafe F1 {m['unsafe_f1']:.4f}  trained {fit_s:.0f} s  "
            f"{m['texts_per_s_batch1']:.0f} / {m['texts_per_s_batch256']:.0f} texts/s (batch 1 / 256)  "
            f"class offsets {np.round(bias, 2).tolist()}",
            flush=True,
        )
    try:
        from profanity_check import predict_prob
    except ImportError as exc:
        raise SystemExit("alt-profanity-check is not installed: pip install 'recstack[bench]'") from exc
    peer_f1 = binary_f1(unsafe_test, np.asarray(predict_prob(test["tweet"].tolist())) >= 0.5)
    print(f"alt-profanity-check unsafe F1 {peer_f1:.4f}; published LR (own split): {PUBLISHED}")
    cost = filter_cost(200 if args.quick else 2_000)
    print(
        f"feed request, 500 candidates: safety filter {cost['filter_us']:.0f} us against "
        f"{cost['removed_only_us']:.0f} us for removed items only; "
        f"unsafe penalties {cost['penalties_us']:.0f} us"
    )
    step_s = finetune_step_s(train["text"].tolist(), 5 if args.quick else 20)
    epoch_min = step_s * full_train / 32 / 60
    print(
        f"fine-tuning MiniLM: {step_s:.2f} s per step of 32 -> {epoch_min:.1f} min "
        f"per epoch of {full_train:,}"
    )
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
    out |= {
        "filter_added_us": round(cost["filter_us"] - cost["removed_only_us"], 1),
        "penalties_us": round(cost["penalties_us"], 1),
        "finetune_step_s": round(step_s, 3),
        "finetune_epoch_min": round(epoch_min, 1),
    }
    record(
        "safety_davidson"
        + (" --quick" if args.quick else "")
        + (f" --kinds {' '.join(args.kinds)}" if args.kinds != list(MODELS) else ""),
        out,
        f"Davidson tweets, stratified 80/10/10 split seed {SEED}; test rows {len(test):,}; class offsets and "
        "threshold_95 chosen on validation (macro-F1; 95% unsafe precision); peer alt-profanity-check 1.9.1 "
        "flagged at p >= 0.5; the MiniLM kinds share one embedding pass (counted in both train_s); "
        "filter_added_us: the safety filter over a removed-only filter, 500 candidates of 100k items; "
        "finetune: median step of 32, epoch extrapolated; goals macro_f1 >= 0.76, hate_f1 >= 0.55, every "
        "model above the peer on unsafe F1",
    )


if __name__ == "__main__":
    main()
