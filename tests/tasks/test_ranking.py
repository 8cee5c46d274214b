from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recstack.models.position import PositionBias
from recstack.tasks.ranking import MultiTaskBCE, top_k_labels
from recstack.train.batch import Batch


class Fixed(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.position_bias: PositionBias | None = None

    def forward(self, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return self.logits


def test_weighted_multitask_bce_masks_missing_labels() -> None:
    logits = torch.tensor([[0.5, -1.0], [2.0, 0.0], [-0.3, 1.0]])
    click = torch.tensor([1.0, 0.0, 1.0])
    like = torch.tensor([0.0, float("nan"), 1.0])  # row 1 has no like label
    weights = torch.tensor([1.0, 2.0, 0.5])
    batch = Batch(
        sparse={"ids": torch.zeros(3, 1, dtype=torch.int64)},
        dense={"values": torch.zeros(3, 0)},
        labels={"click": click, "like": like},
        weights=weights,
    )
    got = MultiTaskBCE(["click", "like"], {"like": 0.5}).loss(Fixed(logits), batch)
    bce_click = F.binary_cross_entropy_with_logits(logits[:, 0], click, reduction="none")
    bce_like = F.binary_cross_entropy_with_logits(logits[[0, 2], 1], like[[0, 2]], reduction="none")
    expected = (bce_click * weights).sum() / weights.sum() + 0.5 * (bce_like * weights[[0, 2]]).sum() / 1.5
    assert float(got) == pytest.approx(float(expected), rel=1e-6)


def test_position_tower_offsets_the_training_logits_only() -> None:
    model = Fixed(torch.zeros(2, 1))
    model.position_bias = PositionBias(max_position=3, tasks=1)
    with torch.no_grad():
        model.position_bias.table.weight.copy_(torch.tensor([[0.0], [-1.0], [-2.0], [-3.0]]))
    batch = Batch(
        sparse={"ids": torch.zeros(2, 1, dtype=torch.int64)},
        dense={"values": torch.zeros(2, 0)},
        labels={"click": torch.tensor([1.0, 0.0])},
        positions=torch.tensor([1, 9]),  # 9 is past max_position: shares the last row
    )
    logits = MultiTaskBCE(["click"]).logits(model, batch)
    assert logits[:, 0].tolist() == [-1.0, -3.0]


def test_unknown_task_weight_is_an_error() -> None:
    with pytest.raises(ValueError, match="share"):
        MultiTaskBCE(["click"], {"share": 1.0})


def test_top_k_labels_per_request() -> None:
    requests = np.array([7, 7, 7, 3, 3])
    scores = np.array([0.1, 0.9, 0.5, 0.2, 0.3])
    assert top_k_labels(requests, scores, 2).tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert top_k_labels(requests, scores, 1).tolist() == [0.0, 1.0, 0.0, 0.0, 1.0]


def test_position_propensities_recover_a_known_examination_curve() -> None:
    from recstack.tasks.ranking import position_propensities

    rng = np.random.default_rng(0)
    examine = np.array([1.0, 0.6, 0.4, 0.25])  # the examination probability of each slot
    positions = rng.integers(0, 4, 200_000)
    clicks = rng.uniform(size=len(positions)) < 0.3 * examine[positions]  # same items at every slot
    estimated = position_propensities(positions, clicks)
    # each rate is a mean of ~50k Bernoulli draws: sd of the ratio about 0.01
    np.testing.assert_allclose(estimated, examine, atol=0.04)
    with pytest.raises(ValueError, match="non-empty"):
        position_propensities(np.array([], dtype=np.int64), np.array([]))
