"""Windowed counts as rings of buckets, and where each definition's state sits in an entity's row.

A windowed count is a ring ``[latest bucket, c_0 .. c_{n-1}]``: slot j counts the events of one
bucket, the latest bucket clears the slots it passes. The feed's columnar state
(``columnar.ColumnarFeatures``) keeps an entity's rings and recencies in one int64 row laid out by
:class:`RingLayout`; the standalone store (``online.OnlineFeatures``) stores each item as the same
row, in binary; both sum every window of many rows at once with :func:`ring_totals`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from recstack.features.definitions import AnyDef, Counter, Rate, Recency

NEVER = -(2**62)  # the latest bucket of a ring that never counted


def ring_add(ring: Any, bucket: int, n_buckets: int) -> bool:
    """Count one event of ``bucket`` in a ring ``[latest bucket, c_0 .. c_{n-1}]`` (a list or an
    array row, changed in place): a newer bucket clears the slots it passes; an event whose bucket
    has left every window is not counted (False)."""
    latest = int(ring[0])
    if bucket > latest:
        if bucket - latest >= n_buckets:
            ring[1:] = [0] * n_buckets
        else:
            for x in range(latest + 1, bucket + 1):
                ring[1 + x % n_buckets] = 0
        ring[0] = bucket
    elif bucket <= latest - n_buckets:
        return False
    ring[1 + bucket % n_buckets] += 1
    return True


def counter_read(
    rings: Sequence[list[int] | None], now_us: int, bucket_us: int, n_buckets: int
) -> np.ndarray:
    """Events in the buckets (now // B - n, now // B] for each ring [latest bucket, c_0 .. c_n-1].

    Slot j of a ring holds bucket x_j = latest - ((latest - j) mod n); it counts when x_j falls in the
    window. Vectorized over rings: (R,) int64.
    """
    empty = [-(2**62), *([0] * n_buckets)]
    matrix = np.array([r if r is not None else empty for r in rings], dtype=np.int64).reshape(
        -1, n_buckets + 1
    )
    latest, counts = matrix[:, :1], matrix[:, 1:]  # (R, 1), (R, n)
    slot_bucket = latest - ((latest - np.arange(n_buckets)) % n_buckets)  # (R, n)
    now_bucket = now_us // bucket_us
    in_window = (slot_bucket > now_bucket - n_buckets) & (slot_bucket <= now_bucket)
    total: np.ndarray = (counts * in_window).sum(axis=1)
    return total


def ring_totals(layout: RingLayout, rows: np.ndarray, now_us: int) -> np.ndarray:
    """(R, W) rows -> (R, K): every ring's events in its window ending at ``now_us``, equal to
    summing each ring's in-window slots one by one (tested), for all rings at once.

    A ring of n buckets whose latest is L holds buckets L-n+1..L, slot j the one of age
    (L - j) mod n. With s = now // B - L the window holds the ages max(0, -s) <= a < min(n, n - s)
    (s < 0: events timed after now, not counted). Which slots those are depends only on
    (L mod n, s clipped to [-n, n]), so each ring's masks are a precomputed table, gathered per row;
    the masked counts are then summed per ring by one matrix product."""
    if not len(layout.ring_n):
        return np.zeros((len(rows), 0), dtype=np.int64)
    r, size = len(rows), len(layout.slot_col)
    if layout.scratch.shape[0] < r:  # reused: fresh (R, S) temporaries cost page faults per read
        layout.scratch = np.empty((r, size))
        layout.scratch_mask = np.empty((r, size))
    counts, mask = layout.scratch[:r], layout.scratch_mask[:r]
    latest = rows[:, layout.ring_latest]  # (R, K)
    behind = np.clip((now_us // layout.ring_bucket) - latest, -layout.ring_n, layout.ring_n)
    code = (latest % layout.ring_n) * (2 * layout.ring_n + 1) + behind + layout.ring_n  # (R, K)
    for k, table in enumerate(layout.mask_tables):
        start = layout.ring_start[k]
        mask[:, start : start + table.shape[1]] = table[code[:, k]]
    counts[:] = rows[:, layout.slot_col]
    counts *= mask  # (R, S)
    totals: np.ndarray = np.rint(counts @ layout.ring_sum).astype(np.int64)  # (R, K); exact below 2**53
    return totals


class RingLayout:
    """Where each definition's state sits in a row of one entity's table."""

    def __init__(self, features: Sequence[AnyDef], entity: str) -> None:
        self.rings: dict[str, tuple[int, int, int]] = {}  # state key -> (offset, n_buckets, bucket_us)
        self.last: dict[str, int] = {}  # recency name -> offset
        width = 0
        for f in features:
            if isinstance(f, Counter | Rate) and f.entity == entity:
                keys = [f.name] if isinstance(f, Counter) else [f.name + ":n", f.name + ":d"]
                for key in keys:
                    self.rings[key] = (width, f.n_buckets, f.bucket_us)
                    width += 1 + f.n_buckets
            elif isinstance(f, Recency) and f.entity == entity:
                self.last[f.name] = width
                width += 1
        self.width = width
        self.last_col = np.array(list(self.last.values()), dtype=np.int64)  # the recency columns
        self.last_index = {name: j for j, name in enumerate(self.last)}
        # every ring's count slots side by side, so that one pass sums every window (ring_totals)
        keys = list(self.rings)
        self.ring_index = {key: k for k, key in enumerate(keys)}
        self.ring_latest = np.array([self.rings[k][0] for k in keys], dtype=np.int64)  # (K,)
        self.ring_n = np.array([self.rings[k][1] for k in keys], dtype=np.int64)
        self.ring_bucket = np.array([self.rings[k][2] for k in keys], dtype=np.int64)
        self.slot_ring = np.repeat(np.arange(len(keys)), self.ring_n)  # (S,)
        self.slot_col = np.concatenate(
            [np.arange(o + 1, o + 1 + n) for o, n in zip(self.ring_latest, self.ring_n, strict=True)]
            or [np.zeros(0, dtype=np.int64)]
        ).astype(np.int64)
        self.ring_start = np.concatenate([[0], np.cumsum(self.ring_n)[:-1]]).astype(np.int64)
        self.ring_sum = np.zeros((len(self.slot_ring), len(keys)))  # (S, K): slot -> its ring
        self.ring_sum[np.arange(len(self.slot_ring)), self.slot_ring] = 1.0
        self.scratch = np.empty((0, len(self.slot_col)))
        self.scratch_mask = np.empty((0, len(self.slot_col)))
        # per ring: (n * (2n + 1), n) masks of the slots in the window, by (L mod n, s + n)
        self.mask_tables = []
        for n in self.ring_n.tolist():
            lm, behind, j = np.meshgrid(np.arange(n), np.arange(-n, n + 1), np.arange(n), indexing="ij")
            age = (lm - j) % n
            inside = (age >= np.maximum(0, -behind)) & (age < np.minimum(n, n - behind))
            self.mask_tables.append(inside.reshape(n * (2 * n + 1), n).astype(np.float64))
        empty = np.zeros(width, dtype=np.int64)
        for offset, _, _ in self.rings.values():
            empty[offset] = NEVER
        for offset in self.last.values():
            empty[offset] = -1
        self.empty = empty


def layout_values(
    f: Counter | Rate | Recency, layout: RingLayout, last: np.ndarray, totals: np.ndarray, now_us: int
) -> np.ndarray:
    """One definition's values over R rows of its entity's table: ``last`` (R, recencies) their
    recency columns (``layout.last_col``), ``totals`` (R, K) their ``ring_totals``."""
    if isinstance(f, Recency):
        column = last[:, layout.last_index[f.name]]
        return Recency.finish(np.full(len(last), now_us, dtype=np.int64), column)

    def total(key: str) -> np.ndarray:
        column: np.ndarray = totals[:, layout.ring_index[key]]
        return column

    if isinstance(f, Counter):
        return total(f.name).astype(np.float64)
    return f.finish(total(f.name + ":n"), total(f.name + ":d"))
