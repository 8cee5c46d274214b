"""Offline metrics: classification (AUC, GAUC, logloss, NE, ECE) and top-K ranking.

Ranking metrics follow RecBole's definitions for full ranking with training items masked:
Recall@K = hits / |relevant|, NDCG@K with binary gains and the ideal DCG over min(|relevant|, K),
MRR@K = 1 / rank of the first hit (0 if none in the top K), Hit@K = 1 if any hit. Users without
relevant items are skipped; results are means over users.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import pairwise

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score

EPS = 1e-7


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and scores {p.shape} differ in length")
    if len(y) == 0:
        raise ValueError("no samples")
    if not np.isfinite(p).all():
        raise ValueError("scores contain NaN or infinite values")
    return y, p


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y, p = _check(labels, scores)
    if y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, p))


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Group AUC: per-group AUC weighted by group size, over groups holding both classes."""
    y, p = _check(labels, scores)
    g = np.asarray(groups).ravel()
    order = np.argsort(g, kind="stable")
    g, y, p = g[order], y[order], p[order]
    bounds = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True])
    total, weight = 0.0, 0
    for lo, hi in pairwise(bounds):
        yy = y[lo:hi]
        if yy.min() == yy.max():
            continue
        total += float(roc_auc_score(yy, p[lo:hi])) * int(hi - lo)
        weight += int(hi - lo)
    return total / weight if weight else float("nan")


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy with probabilities clipped to [1e-7, 1 - 1e-7]."""
    y, p = _check(labels, probs)
    p = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def normalized_entropy(labels: np.ndarray, probs: np.ndarray) -> float:
    """Logloss divided by the entropy of the base rate (He et al., 2014): below 1 beats the prior."""
    y, _ = _check(labels, probs)
    base = float(np.clip(y.mean(), EPS, 1 - EPS))
    prior = -(base * math.log(base) + (1 - base) * math.log(1 - base))
    return logloss(labels, probs) / prior


def ece(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error over ``bins`` equal-width probability bins (weighted by count)."""
    y, p = _check(labels, probs)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1], right=True), 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    conf = np.bincount(index, weights=p, minlength=bins)
    acc = np.bincount(index, weights=y, minlength=bins)
    filled = counts > 0
    return float(np.sum(np.abs(acc[filled] - conf[filled])) / len(y))


def topk_metrics(
    top: np.ndarray, relevant: sp.csr_matrix, users: np.ndarray, ks: Sequence[int]
) -> dict[str, float]:
    """Recall/NDCG/MRR/Hit/Precision@K from ranked lists.

    top: (U, K_max) item indices, best first, for the rows ``users`` of ``relevant`` (a binary
    user x item matrix). Returns sums over users (divide by the user count for means).
    """
    hits = _gather(relevant, users, top)  # (U, K_max)
    n_rel = np.asarray(relevant[users].sum(axis=1)).ravel()
    out: dict[str, float] = {}
    discounts = 1.0 / np.log2(np.arange(2, top.shape[1] + 2))
    for k in ks:
        h = hits[:, :k]
        n_hit = h.sum(axis=1)
        out[f"recall@{k}"] = float(np.sum(n_hit / n_rel))
        out[f"precision@{k}"] = float(np.sum(n_hit / k))
        out[f"hit@{k}"] = float(np.sum(n_hit > 0))
        dcg = (h * discounts[:k]).sum(axis=1)
        ideal_len = np.minimum(n_rel, k).astype(np.int64)
        idcg = np.cumsum(discounts[:k])[ideal_len - 1]
        out[f"ndcg@{k}"] = float(np.sum(dcg / idcg))
        first = np.where(h.any(axis=1), h.argmax(axis=1) + 1, np.inf)
        out[f"mrr@{k}"] = float(np.sum(1.0 / first))
    return out


def _gather(matrix: sp.csr_matrix, users: np.ndarray, top: np.ndarray) -> np.ndarray:
    """(U, K) 0/1 array: is item top[u, j] relevant for users[u]."""
    picked = matrix[users[:, None], top]  # sparse (U, K) of the stored values
    return np.asarray(picked.todense(), dtype=np.float64) > 0


def full_ranking_eval(
    score_fn: Callable[[np.ndarray], np.ndarray],
    test: sp.csr_matrix,
    mask: sp.csr_matrix | None,
    ks: Sequence[int] = (10, 20),
    batch_users: int = 1024,
) -> dict[str, float]:
    """Rank all items for every user with test items; items in ``mask`` (training, validation) are
    excluded from the ranking. ``score_fn(users) -> (len(users), n_items)`` scores.

    Returns means over evaluated users of Recall/NDCG/MRR/Hit/Precision@K, plus ``users``.
    """
    n_rel = np.asarray(test.sum(axis=1)).ravel()
    users = np.flatnonzero(n_rel > 0)
    if len(users) == 0:
        raise ValueError("no user has test items")
    k_max = max(ks)
    sums: dict[str, float] = {}
    for start in range(0, len(users), batch_users):
        batch = users[start : start + batch_users]
        scores = np.array(score_fn(batch), dtype=np.float32, copy=True)  # (B, n_items)
        if mask is not None:
            sub = mask[batch]
            scores[np.repeat(np.arange(len(batch)), np.diff(sub.indptr)), sub.indices] = -np.inf
        part = np.argpartition(-scores, k_max - 1, axis=1)[:, :k_max]  # (B, K) unordered
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(part, order, axis=1)
        for key, value in topk_metrics(top, test, batch, ks).items():
            sums[key] = sums.get(key, 0.0) + value
    result = {key: value / len(users) for key, value in sums.items()}
    result["users"] = float(len(users))
    return result


def coverage(top_lists: np.ndarray, n_items: int) -> float:
    """Fraction of the catalog that appears in at least one recommended list. top_lists: (U, K)."""
    return float(len(np.unique(top_lists)) / n_items)


def intra_list_diversity(top_lists: np.ndarray, item_vectors: np.ndarray) -> float:
    """Mean over lists of the mean pairwise cosine distance (1 - cos) between recommended items.

    top_lists: (U, K) item indices; item_vectors: (n_items, D). Lists shorter than 2 are skipped.
    """
    if top_lists.shape[1] < 2:
        raise ValueError("lists need at least two items for diversity")
    norms = np.linalg.norm(item_vectors, axis=1, keepdims=True)
    unit = item_vectors / np.maximum(norms, 1e-12)
    vecs = unit[top_lists]  # (U, K, D)
    sims = np.einsum("ukd,ujd->ukj", vecs, vecs)  # (U, K, K)
    k = top_lists.shape[1]
    off_diag = (sims.sum(axis=(1, 2)) - np.trace(sims, axis1=1, axis2=2)) / (k * (k - 1))
    return float(np.mean(1.0 - off_diag))


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    labels: np.ndarray,
    scores: np.ndarray,
    baseline: np.ndarray | None = None,
    rounds: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(estimate, low, high): a percentile bootstrap interval of ``metric(labels, scores)``, or of
    ``metric(labels, scores) - metric(labels, baseline)`` when ``baseline`` is given (paired: the same
    resampled rows score both, which is what a comparison on rare clicks needs). Resamples in which
    the metric is undefined (one class only) are skipped."""
    labels, scores = np.asarray(labels), np.asarray(scores)

    def value(rows: np.ndarray) -> float:
        out = metric(labels[rows], scores[rows])
        if baseline is not None:
            out -= metric(labels[rows], np.asarray(baseline)[rows])
        return out

    rng = np.random.default_rng(seed)
    everything = np.arange(len(labels))
    draws = []
    for _ in range(rounds):
        rows = rng.integers(0, len(labels), len(labels))
        if labels[rows].min() == labels[rows].max():
            continue
        draws.append(value(rows))
    if not draws:
        raise ValueError("every bootstrap resample had one class only")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return value(everything), float(low), float(high)
