from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recstack.errors import CheckpointError, RecstackError
from recstack.index.faiss_index import IndexKind, IndexParams, ItemIndex


@pytest.fixture
def vectors() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, 16))
    v = centres[rng.integers(50, size=5_000)] + 0.3 * rng.normal(size=(5_000, 16))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_flat_is_exact(vectors: np.ndarray) -> None:
    index = ItemIndex(16, IndexKind.flat).build(vectors)
    scores, ids = index.search(vectors[:10], 5)
    brute = vectors[:10] @ vectors.T
    assert ids.tolist() == np.argsort(-brute, axis=1)[:, :5].tolist()
    assert scores == pytest.approx(np.sort(brute, axis=1)[:, ::-1][:, :5], abs=1e-5)


@pytest.mark.parametrize("kind", [IndexKind.hnsw, IndexKind.ivf])
def test_approximate_indexes_report_recall(kind: IndexKind, vectors: np.ndarray) -> None:
    index = ItemIndex(16, kind, IndexParams(ef_search=200, nprobe=16)).build(
        vectors, check_queries=200, check_k=50
    )
    assert index.build_recall is not None and 0.9 <= index.build_recall <= 1.0
    again = index.recall_against_exact(vectors, np.arange(len(vectors)), vectors[:200], 50)
    assert again == pytest.approx(index.build_recall)


@pytest.mark.parametrize("kind", list(IndexKind))
def test_add_remove_save_load(kind: IndexKind, vectors: np.ndarray, tmp_path: Path) -> None:
    ids = np.arange(1_000, 1_000 + len(vectors))
    index = ItemIndex(16, kind, IndexParams(ef_search=200, nprobe=64)).build(vectors, ids, check_queries=0)
    new = -vectors[:1]  # the opposite of item 1000: its own best match
    index.add(new, np.array([99]))
    assert index.search(new, 1)[1][0, 0] == 99
    index.remove(np.array([1_000, 99]))
    _, found = index.search(vectors[:1], 10)
    assert 1_000 not in found and index.size == len(vectors) - 1
    index.save(tmp_path)
    loaded = ItemIndex.load(tmp_path)
    assert loaded.search(vectors[:5], 10)[1].tolist() == index.search(vectors[:5], 10)[1].tolist()


def test_bad_inputs(vectors: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(RecstackError, match="no items"):
        ItemIndex(16).build(np.zeros((0, 16)))
    with pytest.raises(RecstackError, match="shape"):
        ItemIndex(16).build(np.zeros((3, 8)))
    with pytest.raises(RecstackError, match="NaN"):
        ItemIndex(16).build(np.full((3, 16), np.nan))
    with pytest.raises(RecstackError, match="empty"):
        ItemIndex(16).search(vectors[:1], 3)
    with pytest.raises(CheckpointError, match="no index"):
        ItemIndex.load(tmp_path)
    ItemIndex(16, IndexKind.flat).build(vectors).save(tmp_path)
    (tmp_path / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        ItemIndex.load(tmp_path)
