from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recstack.errors import RecstackError
from recstack.models.baselines import EASE, ItemCF, Popularity


def matrix(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    data = [(u, i) for u, items in enumerate(rows) for i in items]
    u, i = zip(*data, strict=True)
    return sp.csr_matrix((np.ones(len(data), dtype=np.float32), (u, i)), shape=(len(rows), n_items))


def test_popularity_counts() -> None:
    model = Popularity().fit(matrix([[0, 1], [1], [1, 2]], 4))
    assert model.score(np.array([0, 2])).tolist() == [[1, 3, 1, 0]] * 2


def test_itemcf_cosine_known_answer() -> None:
    x = matrix([[0, 1], [0, 1], [0, 2]], 3)
    model = ItemCF(neighbours=2).fit(x)
    # cos(0,1) = 2 / sqrt(3 * 2); cos(0,2) = 1 / sqrt(3 * 1); cos(1,2) = 0
    sim = model.similarity_.toarray()
    assert sim[0, 1] == pytest.approx(2 / np.sqrt(6)) and sim[0, 2] == pytest.approx(1 / np.sqrt(3))
    assert sim[1, 2] == 0 and np.all(np.diag(sim) == 0)
    ids, _ = model.similar(1, 1)
    assert ids.tolist() == [0]
    assert model.score(np.array([2]))[0, 1] == pytest.approx(sim[0, 1] + sim[2, 1])


def test_ease_matches_its_closed_form() -> None:
    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((30, 8)) < 0.3).astype(np.float32))
    model = EASE(l2=10.0).fit(x)
    gram = (x.T @ x).toarray() + 10.0 * np.eye(8)
    p = np.linalg.inv(gram)
    expected = np.eye(8) - p / np.diag(p)
    assert model.weights_ == pytest.approx(expected.astype(np.float32), abs=1e-5)
    assert np.all(np.diag(model.weights_) == 0)
    assert model.score(np.array([0, 1])) == pytest.approx(x[[0, 1]].toarray() @ model.weights_, abs=1e-5)


def test_empty_interactions_are_an_error() -> None:
    for model in (Popularity(), ItemCF(), EASE()):
        with pytest.raises(RecstackError, match="empty interaction set"):
            model.fit(sp.csr_matrix((3, 4), dtype=np.float32))
