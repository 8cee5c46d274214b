from __future__ import annotations

import torch
from torch import nn

from recstack.layers.cross import CrossNet, Parallel, Stacked
from recstack.layers.experts import PLE, MMoE, SharedBottom
from recstack.layers.fields import FieldEmbedding
from recstack.layers.mlp import Deep


def test_cross_layer_known_answer() -> None:
    cross = CrossNet(3, 1)
    with torch.no_grad():
        cross.layers[0].weight.copy_(torch.eye(3))
        cross.layers[0].bias.zero_()
    x = torch.tensor([[1.0, 2.0, -1.0]])
    assert torch.allclose(cross(x), x * x + x)  # x0 * (I x0 + 0) + x0


def test_stacked_and_parallel_compose() -> None:
    x = torch.randn(4, 6)
    cross, deep = CrossNet(6, 2), Deep(6, [5, 3])
    assert Stacked(cross, Deep(6, [3])).out_dim == 3
    parallel = Parallel(cross, deep)
    assert parallel.out_dim == 9
    assert torch.allclose(parallel(x), torch.cat([cross(x), deep(x)], dim=1))


def test_field_embedding_uses_one_table_with_offsets() -> None:
    fields = FieldEmbedding([3, 2], dim=4)
    out = fields(torch.tensor([[2, 1]]))
    assert torch.equal(out[0, 0], fields.table.weight[2]) and torch.equal(
        out[0, 1], fields.table.weight[3 + 1]
    )


def test_mixers_shape_and_gates_sum_to_one() -> None:
    x = torch.randn(5, 8)
    for mixer in (SharedBottom(8, [6], tasks=3), MMoE(8, [6], experts=4, tasks=3), PLE(8, [6], tasks=3)):
        assert mixer(x).shape == (5, 3, 6)
    mmoe = MMoE(8, [6], experts=2, tasks=1)
    with torch.no_grad():  # a gate that always picks expert 0 returns expert 0's output
        gate: nn.Linear = mmoe.gates[0]  # type: ignore[assignment]
        gate.weight.zero_()
        gate.bias.copy_(torch.tensor([50.0, -50.0]))
    assert torch.allclose(mmoe(x)[:, 0], mmoe.experts[0](x), atol=1e-6)
