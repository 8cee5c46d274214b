"""The one container that flows into models, and a loader that builds it column-wise.

A :class:`Batch` holds whole tensors: sparse ids, dense floats, labels per task, sample weights and
positions. :class:`BatchLoader` slices NumPy/Arrow columns by index arrays; there is no per-row
``__getitem__`` anywhere on the training path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

Columns = dict[str, np.ndarray]
Transform = Callable[[Columns, np.random.Generator], Columns]


@dataclass
class Batch:
    """sparse: name -> (B,) or (B, L) int64 ids; dense: name -> (B,) or (B, D) float32;
    labels: task -> (B,) float32; weights: (B,) float32 or None; positions: (B,) int64 or None."""

    sparse: dict[str, torch.Tensor] = field(default_factory=dict)
    dense: dict[str, torch.Tensor] = field(default_factory=dict)
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: torch.Tensor | None = None
    positions: torch.Tensor | None = None

    def __len__(self) -> int:
        for group in (self.sparse, self.dense, self.labels):
            for tensor in group.values():
                return int(tensor.shape[0])
        return 0


@dataclass(frozen=True)
class ColumnRoles:
    """Which columns become sparse ids, dense floats, labels, the weight and the position."""

    sparse: tuple[str, ...] = ()
    dense: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    weight: str | None = None
    position: str | None = None


def to_columns(data: Mapping[str, np.ndarray] | pa.Table) -> Columns:
    """NumPy columns from an Arrow table or a mapping of arrays (zero-copy where Arrow allows)."""
    if isinstance(data, pa.Table):
        return {name: data.column(name).to_numpy() for name in data.column_names}
    return {name: np.asarray(values) for name, values in data.items()}


def make_batch(columns: Columns, roles: ColumnRoles) -> Batch:
    """Build a Batch from equally long columns (whole arrays, no per-row work)."""
    return Batch(
        sparse={n: torch.from_numpy(np.ascontiguousarray(columns[n], dtype=np.int64)) for n in roles.sparse},
        dense={n: torch.from_numpy(np.ascontiguousarray(columns[n], dtype=np.float32)) for n in roles.dense},
        labels={
            n: torch.from_numpy(np.ascontiguousarray(columns[n], dtype=np.float32)) for n in roles.labels
        },
        weights=None
        if roles.weight is None
        else torch.from_numpy(np.ascontiguousarray(columns[roles.weight], dtype=np.float32)),
        positions=None
        if roles.position is None
        else torch.from_numpy(np.ascontiguousarray(columns[roles.position], dtype=np.int64)),
    )


class BatchLoader:
    """Iterates over shuffled batches of ``columns``; ``transform`` adds columns per batch (e.g.
    sampled negatives). Under torch.distributed each rank reads a disjoint shard of every epoch."""

    def __init__(
        self,
        data: Mapping[str, np.ndarray] | pa.Table,
        roles: ColumnRoles,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        transform: Transform | None = None,
        drop_last: bool = False,
    ) -> None:
        self.columns = to_columns(data)
        lengths = {len(v) for v in self.columns.values()}
        if len(lengths) != 1:
            raise ValueError(f"columns differ in length: { {k: len(v) for k, v in self.columns.items()} }")
        (self.n_rows,) = lengths
        if self.n_rows == 0:
            raise ValueError("cannot train on an empty data set")
        self.roles = roles
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.transform = transform
        self.drop_last = drop_last
        self.epoch = 0
        self.rank = 0
        self.world_size = 1

    def shard(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        rows = len(range(self.rank, self.n_rows, self.world_size))
        return rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        rng = np.random.default_rng((self.seed, self.epoch))
        self.epoch += 1
        order = rng.permutation(self.n_rows) if self.shuffle else np.arange(self.n_rows)
        order = order[self.rank :: self.world_size]
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            if self.drop_last and len(index) < self.batch_size:
                break
            cols = {name: values[index] for name, values in self.columns.items()}
            if self.transform is not None:
                cols = self.transform(cols, rng)
            yield make_batch(cols, self.roles)
