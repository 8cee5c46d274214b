from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recstack.errors import CheckpointError
from recstack.index.faiss_index import IndexKind
from recstack.index.retriever import TwoTowerRetriever
from recstack.models.two_tower import TwoTower


@pytest.fixture
def retriever() -> TwoTowerRetriever:
    torch.manual_seed(0)
    text = torch.randn(20, 8)
    model = TwoTower(n_users=5, n_items=20, dim=8, hidden=(16,), item_text=text)
    return TwoTowerRetriever.build(
        model, [f"u{i}" for i in range(5)], [f"i{i}" for i in range(20)], kind=IndexKind.flat
    )


def test_retrieve_matches_exact_scores(retriever: TwoTowerRetriever) -> None:
    got = retriever.retrieve("u1", ["i3", "i4"], 5)
    vector = retriever.user_vector("u1", ["i3", "i4"])
    with torch.no_grad():
        items = retriever.model.all_item_vectors().numpy()
    best = np.argsort(-(items @ vector))[:5]
    assert [i for i, _ in got] == [f"i{b}" for b in best]


def test_unknown_user_and_items_are_not_errors(retriever: TwoTowerRetriever) -> None:
    assert retriever.retrieve("stranger", ["nope"], 5) == []
    assert len(retriever.retrieve("stranger", ["i2", "nope"], 5)) == 5  # history alone


def test_new_item_joins_through_its_text(retriever: TwoTowerRetriever, tmp_path: Path) -> None:
    text = torch.randn(1, 8)
    retriever.add_items(["brand-new"], text.numpy())
    with torch.no_grad():
        target = retriever.model.content_vectors(text).numpy()[0]
    hits = retriever.index.search(target[None, :], 1)[1]
    assert retriever.item_ids[hits[0, 0]] == "brand-new"
    retriever.remove_items(["i0"])
    retriever.save(tmp_path)
    model = TwoTower(n_users=5, n_items=20, dim=8, hidden=(16,), item_text=torch.zeros(20, 8))
    loaded = TwoTowerRetriever.load(tmp_path, model)
    assert loaded.retrieve("u1", ["i3"], 21) == retriever.retrieve("u1", ["i3"], 21)
    assert "i0" not in [i for i, _ in loaded.retrieve("u1", ["i3"], 21)]


def test_new_items_without_text_are_returned_not_indexed(retriever: TwoTowerRetriever) -> None:
    size = len(retriever.item_ids)
    text = np.zeros((3, 8), dtype=np.float32)
    text[1] = 1.0
    assert retriever.add_items(["blank", "titled", "i0"], text) == ["blank"]  # i0 is already known
    assert retriever.item_ids[size:] == ["titled"]
    with pytest.raises(ValueError, match="2 item ids but 1"):
        retriever.add_items(["a", "b"], text[:1])


def test_corrupt_retriever_files(retriever: TwoTowerRetriever, tmp_path: Path) -> None:
    retriever.save(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="corrupt"):
        TwoTowerRetriever.load(tmp_path, TwoTower(n_users=5, n_items=20, dim=8, hidden=(16,)))


def test_saved_retriever_serves_through_onnx_without_the_model(
    retriever: TwoTowerRetriever, tmp_path: Path
) -> None:
    retriever.save(tmp_path)
    served = TwoTowerRetriever.load(tmp_path)  # no TwoTower: ONNX Runtime towers
    assert served.model is None
    history = ["i3", "i4", "i9"]
    assert np.abs(served.user_vector("u1", history) - retriever.user_vector("u1", history)).max() <= 1e-5
    assert (
        np.abs(served.user_vector("stranger", history) - retriever.user_vector("stranger", history)).max()
        <= 1e-5
    )
    assert [i for i, _ in served.retrieve("u1", history, 5)] == [
        i for i, _ in retriever.retrieve("u1", history, 5)
    ]
    text = np.random.default_rng(0).normal(size=(1, 8)).astype(np.float32)
    assert served.add_items(["new"], text) == []
    assert served.item_ids[-1] == "new"
    (tmp_path / "user_tower.onnx").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="corrupt"):
        TwoTowerRetriever.load(tmp_path)


def test_history_only_user_tower_ignores_the_user_id() -> None:
    torch.manual_seed(0)
    model = TwoTower(n_users=5, n_items=20, dim=8, hidden=(16,), user_id=False)
    history = torch.tensor([[3, 4, 0]])
    a = model.user_vectors(torch.tensor([1]), history)
    b = model.user_vectors(torch.tensor([-1]), history)
    assert torch.equal(a, b)
    assert not model.user_ids.weight.requires_grad  # nothing for the optimizer or DDP to track
