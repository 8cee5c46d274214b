"""Batch inference on a 2-CPU Ray cluster gives the local answers: the item tower's vectors, the
offline candidates, the catalog's safety scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from recstack.config import ComputeConfig, Engine
from recstack.index.retriever import TwoTowerRetriever
from recstack.models.two_tower import TwoTower
from recstack.safety.classifier import TfidfLogistic
from recstack.safety.items import ItemScorer
from recstack.safety.model import SafetyModel
from recstack.scale.inference import candidates, item_vectors, safety_scores
from recstack.train.loop import seed_everything

LOCAL = ComputeConfig()
RAY = ComputeConfig(engine=Engine.ray, workers=2, batch_rows=64)  # several batches per job


def tower(n_users: int = 50, n_items: int = 300) -> TwoTower:
    seed_everything(7)
    return TwoTower(n_users, n_items, 16, (32,), True, None)


def test_item_vectors_on_ray_equal_the_local_ones(ray_cluster: Any) -> None:
    model = tower()
    local = item_vectors(model, LOCAL)
    remote = item_vectors(model, RAY)
    assert local.shape == remote.shape == (300, 16)
    # the same module over the same rows; batches of 64 against one batch of 300 may round
    # the last bit of a float32 differently
    np.testing.assert_allclose(remote, local, rtol=0, atol=1e-6)
    with torch.no_grad():
        assert np.allclose(np.linalg.norm(remote, axis=1), 1.0, atol=1e-5)  # cosine towers


def test_offline_candidates_on_ray_equal_the_local_ones(ray_cluster: Any, tmp_path: Path) -> None:
    model = tower()
    users = [f"u{n}" for n in range(50)]
    items = [f"i{n}" for n in range(300)]
    TwoTowerRetriever.build(model, users, items, history_length=5).save(tmp_path / "retriever")
    asked = [*users, "stranger", "new-with-history"]
    histories = [[items[n % 300], items[(3 * n) % 300]] for n in range(50)] + [[], ["i4", "unknown-item"]]
    local = candidates(tmp_path, asked, histories, 10, LOCAL)
    remote = candidates(tmp_path, asked, histories, 10, RAY)
    assert local.num_rows == 51 * 10  # the stranger (no id, no known history) gets none
    assert remote.column("user_id").equals(local.column("user_id"))
    assert remote.column("item_id").equals(local.column("item_id"))
    assert remote.column("rank").to_pylist() == local.column("rank").to_pylist()
    np.testing.assert_allclose(remote.column("score").to_numpy(), local.column("score").to_numpy(), atol=1e-5)
    # ranks are 0..9 per user, scores descending
    first = local.slice(0, 10)
    assert first.column("rank").to_pylist() == list(range(10))
    assert np.all(np.diff(first.column("score").to_numpy()) <= 1e-6)


def test_safety_scores_on_ray_equal_the_local_ones(ray_cluster: Any) -> None:
    rng = np.random.default_rng(0)
    words = ["garden", "coffee", "river", "music", "morning", "friends", "blue", "walk"]
    texts, labels = [], []
    for label, marker in ((0, "zzhate"), (1, "zzrude"), (2, "")):
        for _ in range(60):
            texts.append(" ".join(rng.choice(words, 4)) + (f" {marker}" if marker else ""))
            labels.append(label)
    model = SafetyModel(TfidfLogistic(seed=0).fit(texts, np.array(labels)), 0.9, 0.5, {"model": "tfidf_lr"})
    scorer = ItemScorer(model, "recstack-safety/1", ("text", "title"))

    def records() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for n in range(150):
            marker = ("zzhate", "zzrude", "")[n % 3]
            out.append(
                {"kind": "item", "item_id": f"i{n}", "text": f"morning walk {marker}", "attributes": {}}
            )
        out.append({"kind": "item", "item_id": "no-text", "text": None, "attributes": {"colour": "red"}})
        return out

    local, remote = records(), records()
    safety_scores(scorer, local, LOCAL, 32)
    safety_scores(scorer, remote, RAY, 32)
    assert remote == local
    assert local[0]["attributes"]["unsafe_decision"] == "block"
    assert local[2]["attributes"]["unsafe_decision"] == "allow"
    assert local[-1]["attributes"] == {"colour": "red"}  # nothing to score: untouched
