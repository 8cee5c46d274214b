from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from recstack.train.batch import BatchLoader, ColumnRoles


def test_batches_are_built_column_wise_and_cover_every_row() -> None:
    table = pa.table(
        {
            "user": np.arange(10),
            "x": np.linspace(0, 1, 10),
            "y": np.arange(10) % 2,
            "pos": np.arange(10) % 3,
            "w": np.ones(10),
        }
    )
    roles = ColumnRoles(sparse=("user",), dense=("x",), labels=("y",), weight="w", position="pos")
    loader = BatchLoader(table, roles, batch_size=4, seed=1)
    batches = list(loader)
    assert [len(b) for b in batches] == [4, 4, 2] and len(loader) == 3
    users = torch.cat([b.sparse["user"] for b in batches])
    assert sorted(users.tolist()) == list(range(10))
    first = batches[0]
    assert first.sparse["user"].dtype == torch.int64 and first.dense["x"].dtype == torch.float32
    assert torch.equal(first.labels["y"], (first.sparse["user"] % 2).float())
    assert first.positions is not None and torch.equal(first.positions, first.sparse["user"] % 3)
    # a new epoch reshuffles
    assert [b.sparse["user"].tolist() for b in loader] != [b.sparse["user"].tolist() for b in batches]


def test_shards_are_disjoint() -> None:
    seen = []
    for rank in range(2):
        loader = BatchLoader({"u": np.arange(9)}, ColumnRoles(sparse=("u",)), batch_size=2, seed=5)
        loader.shard(rank, 2)
        seen.append({v for b in loader for v in b.sparse["u"].tolist()})
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(9))


def test_transform_adds_columns() -> None:
    loader = BatchLoader(
        {"u": np.arange(4)},
        ColumnRoles(sparse=("u", "neg")),
        batch_size=4,
        transform=lambda cols, rng: cols | {"neg": cols["u"] + 100},
    )
    (batch,) = list(loader)
    assert torch.equal(batch.sparse["neg"], batch.sparse["u"] + 100)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="empty"):
        BatchLoader({"u": np.arange(0)}, ColumnRoles(sparse=("u",)), batch_size=2)
    with pytest.raises(ValueError, match="differ in length"):
        BatchLoader({"u": np.arange(3), "v": np.arange(2)}, ColumnRoles(sparse=("u",)), batch_size=2)
