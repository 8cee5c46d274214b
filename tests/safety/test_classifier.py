"""The unsafe-text classifiers: normalization, the threshold chosen for a target precision, the
metrics on known answers, and a real fit on the Davidson tweets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recstack.safety.classifier import (
    choose_threshold,
    clean_text,
    evaluate,
    make_classifier,
    split_stratified,
    unsafe_score,
)

from ..conftest import data_path


def test_text_is_normalized_and_long_text_truncated_with_a_flag() -> None:
    assert clean_text(None) == ("", False) and clean_text("") == ("", False)
    assert clean_text("  a\x00b\tc\n\n d\x7f ") == ("a b c d", False)
    assert clean_text("ﬁne") == ("fine", False)  # NFKC folds the ligature
    assert clean_text("🙂🙂") == ("🙂🙂", False)  # emoji-only stays a text
    assert clean_text("x" * 50, max_chars=10) == ("x" * 10, True)


def test_the_threshold_is_the_lowest_that_reaches_the_precision() -> None:
    unsafe = np.array([0, 0, 1, 0, 1, 1, 1, 1])
    score = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    # flagged at 0.3: 1,0,1,1,1,1 (precision 5/6); at 0.4: 0,1,1,1,1 (0.8); at 0.5: 1,1,1,1 (1.0)
    assert choose_threshold(unsafe, score, 0.8) == pytest.approx(0.3)
    assert choose_threshold(unsafe, score, 0.84) == pytest.approx(0.5)
    assert choose_threshold(unsafe, score, 0.95) == pytest.approx(0.5)
    assert choose_threshold(np.array([0, 0]), np.array([0.3, 0.9]), 0.5) > 1.0  # never reached: flag nothing
    # at the rows' own share (5/8) the weights change nothing; at a share of 0.2 an unsafe row weighs
    # 0.2 / 0.625 = 0.32 and a safe one 0.8 / 0.375 = 2.133: at 0.3 precision is 1.6 / 3.733 = 0.4286
    assert choose_threshold(unsafe, score, 0.8, prevalence=0.625) == pytest.approx(0.3)
    assert choose_threshold(unsafe, score, 0.42, prevalence=0.2) == pytest.approx(0.3)
    assert choose_threshold(unsafe, score, 0.43, prevalence=0.2) == pytest.approx(0.5)


def test_metrics_on_known_answers() -> None:
    labels = np.array([0, 1, 2, 2])
    perfect = np.eye(3)[labels]
    metrics = evaluate(labels, perfect)
    assert metrics.macro_f1 == 1.0 and metrics.pr_auc == 1.0 and metrics.unsafe_f1 == 1.0
    assert metrics.recall_at_95 == 1.0
    swapped = np.eye(3)[[1, 0, 2, 2]]  # hate and offensive confused: still unsafe, so unsafe F1 is 1
    confused = evaluate(labels, swapped)
    assert confused.per_class["hate"]["f1"] == 0.0 and confused.unsafe_f1 == 1.0
    assert np.allclose(unsafe_score(np.array([[0.2, 0.3, 0.5]])), [0.5])


def test_tfidf_on_the_davidson_tweets_separates_unsafe_text() -> None:
    from recstack.data.readers import read_hate_speech

    frame = read_hate_speech(data_path("davidson_hate_offensive")).frame
    frame = frame.assign(text=[clean_text(t)[0] for t in frame["tweet"]])
    train, valid, test = split_stratified(frame, seed=7)
    assert abs(len(test) - len(frame) * 0.1) <= 1 and set(train["label"]) == {0, 1, 2}
    # stratified: each split keeps the class shares (hate is about 5.8%)
    assert abs((valid["label"] == 0).mean() - (frame["label"] == 0).mean()) < 0.005
    model = make_classifier("tfidf_lr", seed=7).fit(
        train["text"].tolist()[:4000], train["label"].to_numpy()[:4000]
    )
    metrics = evaluate(test["label"].to_numpy(), model.predict_proba(test["text"].tolist()))
    assert (
        metrics.pr_auc > 0.97 and metrics.unsafe_f1 > 0.9
    )  # benchmarks/safety_davidson.py --quick: 0.993 / 0.960
    with pytest.raises(ValueError, match="unknown safety model 'bert'"):
        make_classifier("bert")


@pytest.mark.slow
def test_the_fine_tuned_encoder_is_served_by_onnx_runtime_after_a_round_trip(tmp_path: Path) -> None:
    """Mechanics on a few texts (learning is what benchmarks/safety_davidson.py measures): one short
    epoch, the ONNX export checked against the eager model inside ``fit``, then saved, loaded and
    scored with no torch model in the object."""
    from recstack.safety.classifier import MiniLMFineTuned
    from recstack.safety.model import SafetyModel

    texts = ["river walk zzhate", "coffee zzrude", "garden music"] * 4
    labels = np.array([0, 1, 2] * 4)
    classifier = MiniLMFineTuned(seed=0, epochs=1, batch_size=4, max_tokens=16).fit(texts, labels)
    SafetyModel(classifier, 0.9, 0.5, {"model": "minilm_ft"}).save(tmp_path)
    loaded = SafetyModel.load(tmp_path)
    probs = loaded.predict_proba(["garden music", "", "🙂🙂", "x " * 500])
    assert probs.shape == (4, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(loaded.predict_proba(["garden music"]), classifier.predict_proba(["garden music"]))
    assert not any("torch" in type(v).__module__ for v in vars(loaded.classifier).values())
