"""Metrics against reference implementations (scikit-learn) and hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import log_loss, ndcg_score, roc_auc_score

from recstack.eval import metrics as m


@pytest.fixture
def binary() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    p = np.clip(0.3 * y + rng.random(500) * 0.7, 0.001, 0.999)
    groups = rng.integers(0, 20, 500)
    return y, p, groups


def test_auc_and_logloss_match_sklearn(binary: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    y, p, _ = binary
    assert m.auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m.logloss(y, p) == pytest.approx(log_loss(y, p), abs=1e-9)
    assert math.isnan(m.auc(np.ones(3), np.array([0.1, 0.2, 0.3])))


def test_gauc_is_size_weighted_mean_of_group_aucs(binary: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    y, p, g = binary
    total = weight = 0.0
    for group in np.unique(g):
        sel = g == group
        if len(np.unique(y[sel])) == 2:
            total += roc_auc_score(y[sel], p[sel]) * sel.sum()
            weight += sel.sum()
    assert m.gauc(y, p, g) == pytest.approx(total / weight, abs=1e-12)


def test_normalized_entropy_of_the_base_rate_is_one() -> None:
    y = np.array([1, 0, 0, 0])
    assert m.normalized_entropy(y, np.full(4, 0.25)) == pytest.approx(1.0, abs=1e-6)
    assert m.normalized_entropy(y, np.array([0.9, 0.1, 0.1, 0.1])) < 1


def test_ece_known_answer() -> None:
    # Two bins: p=0.2 (labels 0,0,1,0 -> acc 0.25) and p=0.9 (labels 1,1 -> acc 1.0)
    y = np.array([0, 0, 1, 0, 1, 1])
    p = np.array([0.2, 0.2, 0.2, 0.2, 0.9, 0.9])
    expected = (4 * abs(0.25 - 0.2) + 2 * abs(1.0 - 0.9)) / 6
    assert m.ece(y, p, bins=10) == pytest.approx(expected, abs=1e-12)
    assert m.ece(np.array([0, 1]), np.array([0.0, 1.0])) == pytest.approx(0.0)


def test_metric_input_errors() -> None:
    with pytest.raises(ValueError, match="differ"):
        m.auc(np.ones(3), np.ones(2))
    with pytest.raises(ValueError, match="NaN"):
        m.logloss(np.ones(2), np.array([0.5, np.nan]))
    with pytest.raises(ValueError, match="no samples"):
        m.ece(np.array([]), np.array([]))


def test_full_ranking_known_answer() -> None:
    # 1 user, 6 items; item 0 is a training item (masked), items 2 and 4 are test items.
    scores = np.array([[9.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    test = sp.csr_matrix(np.array([[0, 0, 1, 0, 1, 0]], dtype=np.float32))
    mask = sp.csr_matrix(np.array([[1, 0, 0, 0, 0, 0]], dtype=np.float32))
    out = m.full_ranking_eval(lambda u: scores[u], test, mask, ks=(2, 3))
    # ranking after masking: 1, 2, 3, 4, 5 -> test items at ranks 2 and 4
    assert out["recall@2"] == pytest.approx(0.5)
    assert out["recall@3"] == pytest.approx(0.5)
    assert out["hit@2"] == 1.0 and out["mrr@2"] == pytest.approx(0.5)
    assert out["ndcg@2"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert out["precision@2"] == pytest.approx(0.5)


def test_ndcg_matches_sklearn_without_mask() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items = 30, 40
    truth = (rng.random((n_users, n_items)) < 0.1).astype(np.float32)
    truth[truth.sum(1) == 0, 0] = 1
    scores = rng.random((n_users, n_items))
    out = m.full_ranking_eval(lambda u: scores[u], sp.csr_matrix(truth), None, ks=(5, 10))
    for k in (5, 10):
        # sklearn computes in the float32 of `truth`: agreement to float32 precision
        assert out[f"ndcg@{k}"] == pytest.approx(ndcg_score(truth, scores, k=k), abs=1e-6)
        top = np.argsort(-scores, axis=1)[:, :k]
        recall = np.mean(np.take_along_axis(truth, top, 1).sum(1) / truth.sum(1))
        assert out[f"recall@{k}"] == pytest.approx(recall, abs=1e-6)


def test_users_without_test_items_are_skipped() -> None:
    truth = sp.csr_matrix(np.array([[0, 1, 0], [0, 0, 0]], dtype=np.float32))
    out = m.full_ranking_eval(lambda u: np.tile([0.1, 0.9, 0.5], (len(u), 1)), truth, None, ks=(1,))
    assert out["users"] == 1 and out["recall@1"] == 1.0


def test_coverage_and_diversity() -> None:
    lists = np.array([[0, 1], [1, 2]])
    assert m.coverage(lists, 4) == 0.75
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    # list 1: orthogonal (distance 1); list 2: orthogonal (distance 1)
    assert m.intra_list_diversity(lists, vectors) == pytest.approx(1.0)
    same = np.array([[0, 2]])
    assert m.intra_list_diversity(same, vectors) == pytest.approx(0.0)


def test_bootstrap_interval_covers_and_narrows_with_data() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(4000) < 0.3
    scores = labels + rng.normal(0, 1.0, 4000)  # AUC = Phi(1 / sqrt(2)) = 0.760 in expectation
    estimate, low, high = m.bootstrap_ci(m.auc, labels, scores, rounds=300)
    assert low < estimate < high
    assert low < 0.760 < high
    _, small_low, small_high = m.bootstrap_ci(m.auc, labels[:400], scores[:400], rounds=300)
    assert (small_high - small_low) > 2 * (high - low)  # sqrt(10) narrower with 10x the rows
    diff, d_low, d_high = m.bootstrap_ci(m.auc, labels, scores, baseline=scores, rounds=50)
    assert diff == d_low == d_high == 0.0  # a score against itself: a paired difference of zero
