from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recstack.config import Settings
from recstack.data.interactions import Interactions
from recstack.models.two_tower import TwoTower
from recstack.tasks.retrieval import RetrievalTask
from recstack.train.batch import Batch
from recstack.train.recipes import HistorySampler, train_two_tower


class Fixed(torch.nn.Module):
    """Towers that return given vectors, to check the loss by hand."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor) -> None:
        super().__init__()
        self.u, self.v, self.n_items = users, items, len(items)

    def user_vectors(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self.u[users]

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return self.v[items]


def batch(users: list[int], items: list[int]) -> Batch:
    return Batch(
        sparse={
            "user": torch.tensor(users),
            "item": torch.tensor(items),
            "history": torch.zeros(len(users), 1, dtype=torch.long),
        }
    )


def test_in_batch_softmax_with_logq_known_answer() -> None:
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    log_q = torch.log(torch.tensor([0.75, 0.25]))
    loss = RetrievalTask(temperature=0.5, log_q=log_q).loss(Fixed(u, v), batch([0, 1], [0, 1]))
    logits = (u @ v.T) / 0.5 - log_q[None, :]
    expected = -torch.log_softmax(logits, dim=1).diagonal().mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_mixed_negatives_use_the_expected_count_in_the_pool() -> None:
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, -1.0]])
    log_q = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    torch.manual_seed(0)
    loss = RetrievalTask(temperature=0.5, log_q=log_q, random_negatives=2).loss(
        Fixed(u, v), batch([0, 1], [0, 1])
    )
    torch.manual_seed(0)
    extra = torch.randint(0, 3, (2,))  # the same draw the task made
    pool = torch.cat([torch.tensor([0, 1]), extra])
    logits = (u @ v[pool].T) / 0.5 - torch.log(2 * log_q[pool].exp() + 2 / 3)[None, :]
    same = torch.tensor([0, 1])[:, None] == pool[None, :]
    same[:, :2] &= ~torch.eye(2, dtype=torch.bool)  # the diagonal is each row's positive
    expected = -torch.log_softmax(logits.masked_fill(same, float("-inf")), dim=1).diagonal().mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_same_item_in_another_row_is_not_a_negative() -> None:
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    v = torch.tensor([[1.0, 0.0]])
    loss = RetrievalTask(temperature=1.0).loss(Fixed(u, v), batch([0, 1], [0, 0]))
    assert loss.item() == pytest.approx(0.0, abs=1e-7)  # each row's only candidate is its positive


def test_history_sampler_excludes_the_target_and_pads() -> None:
    train = sp.csr_matrix(np.array([[1, 1, 1, 0], [0, 0, 0, 1]], dtype=np.float32))
    out = HistorySampler(train, 3)(
        {"user": np.array([0, 1]), "item": np.array([1, 3])}, np.random.default_rng(0)
    )
    assert sorted(out["history"][0].tolist()) == [0, 1, 3]  # items 0 and 2 (+1), target 1 left out
    assert out["history"][1].tolist() == [0, 0, 0]


@pytest.mark.slow
def test_two_tower_learns_a_planted_structure(settings: Settings) -> None:
    """Users in group g only engage with items of group g: the towers must find the groups."""
    rng = np.random.default_rng(0)
    users, items = [], []
    for u in range(200):
        group = u % 4
        picks = rng.choice(np.arange(group * 25, group * 25 + 25), 12, replace=False)
        users += [u] * 12
        items += picks.tolist()
    u, i = np.array(users), np.array(items)
    order = rng.permutation(len(u))
    cut1, cut2 = int(0.8 * len(u)), int(0.9 * len(u))
    parts = [
        Interactions(u[order[a:b]], i[order[a:b]], 200, 100)
        for a, b in ((0, cut1), (cut1, cut2), (cut2, None))
    ]
    quick = settings.model_copy(
        update={"train": settings.train.model_copy(update={"epochs": 15, "batch_size": 64, "lr": 0.01})}
    )
    run = train_two_tower(*parts, quick)
    # 10 of each user's group's 25 items are unseen: random ranking would give recall@10 about 0.1
    assert run.test_metrics["recall@10"] > 0.3
    assert isinstance(run.model, TwoTower)
    assert math.isfinite(run.fit.history[-1]["loss"])
