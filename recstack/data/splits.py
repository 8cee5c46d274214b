"""Splits of interaction frames (columns user_id, item_id and, for time-based splits, timestamp).

Each returns (train, validation, test) frames; the BARS split comes as given by its reader.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recstack.errors import RecstackError

Split = tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]


def _non_empty(frame: pd.DataFrame, needs: tuple[str, ...]) -> None:
    missing = [c for c in needs if c not in frame.columns]
    if missing:
        raise RecstackError(f"split needs columns {missing}; the frame has {list(frame.columns)}")
    if frame.empty:
        raise RecstackError("cannot split an empty interaction set")


def temporal_split(frame: pd.DataFrame, valid_frac: float = 0.1, test_frac: float = 0.1) -> Split:
    """Global time cut: the last ``test_frac`` of interactions by time are test, the ``valid_frac``
    before them validation. Ties at a cut stay on the earlier side, so no test row precedes a train row."""
    _non_empty(frame, ("user_id", "item_id", "timestamp"))
    if not (0 <= valid_frac < 1 and 0 < test_frac < 1 and valid_frac + test_frac < 1):
        raise RecstackError("fractions must satisfy 0 <= valid, 0 < test, valid + test < 1")
    ordered = frame.sort_values("timestamp", kind="stable")
    times = ordered["timestamp"].to_numpy()
    t_valid = np.quantile(times, 1 - valid_frac - test_frac, method="lower")
    t_test = np.quantile(times, 1 - test_frac, method="lower")
    train = ordered[times <= t_valid]
    valid = ordered[(times > t_valid) & (times <= t_test)]
    test = ordered[times > t_test]
    return train.reset_index(drop=True), valid.reset_index(drop=True), test.reset_index(drop=True)


def leave_last_out(frame: pd.DataFrame) -> Split:
    """Per user, the last interaction by time is test and the one before it validation; users with
    fewer than three interactions keep all of theirs in train."""
    _non_empty(frame, ("user_id", "item_id", "timestamp"))
    ordered = frame.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    rank_from_end = ordered.groupby("user_id").cumcount(ascending=False).to_numpy()
    size = ordered.groupby("user_id")["item_id"].transform("size").to_numpy()
    eligible = size >= 3
    test = ordered[eligible & (rank_from_end == 0)]
    valid = ordered[eligible & (rank_from_end == 1)]
    train = ordered[~eligible | (rank_from_end >= 2)]
    return train.reset_index(drop=True), valid.reset_index(drop=True), test.reset_index(drop=True)


def recbole_split_counts(total: int, ratios: tuple[float, ...]) -> list[int]:
    """RecBole's ``_calcu_split_ids``: how many of ``total`` rows go to each part."""
    counts = [int(r * total) for r in ratios]
    counts[0] = total - sum(counts[1:])
    for i in range(1, len(ratios)):
        if counts[0] <= 1:
            break
        if 0 < ratios[-i] * total < 1:
            counts[-i] += 1
            counts[0] -= 1
    return counts


def random_ratio_split(
    frame: pd.DataFrame, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 2020
) -> Split:
    """RecBole's general-recommendation protocol (RO, group by user): shuffle each user's
    interactions and cut them by ``ratios`` with RecBole's rounding."""
    _non_empty(frame, ("user_id", "item_id"))
    if len(ratios) != 3 or abs(sum(ratios) - 1) > 1e-9 or min(ratios) < 0:
        raise RecstackError(f"ratios must be three non-negative numbers summing to 1, got {ratios}")
    rng = np.random.default_rng(seed)
    shuffled = frame.iloc[rng.permutation(len(frame))]
    ordered = shuffled.sort_values("user_id", kind="stable").reset_index(drop=True)
    rank = ordered.groupby("user_id").cumcount().to_numpy()
    size = ordered.groupby("user_id")["item_id"].transform("size").to_numpy()
    part = np.zeros(len(ordered), dtype=np.int8)
    for n in np.unique(size):
        n_train, n_valid, _ = recbole_split_counts(int(n), ratios)
        rows = size == n
        part[rows & (rank >= n_train)] = 1
        part[rows & (rank >= n_train + n_valid)] = 2
    return tuple(ordered[part == k].reset_index(drop=True) for k in range(3))


def frappe_split(valid: pd.DataFrame, test: pd.DataFrame, seed: int = 2026) -> Split:
    """recstack's fixed Frappe split. Only the BARS validation and test files exist here (no BARS
    train file), so their 86,582 rows are pooled, shuffled with ``seed`` and cut 70 / 10 / 20 into
    train / validation / test. Figures on it do not compare with BARS's published ones."""
    pooled = pd.concat([valid, test], ignore_index=True)
    if pooled.empty:
        raise RecstackError("cannot split an empty Frappe data set")
    order = np.random.default_rng(seed).permutation(len(pooled))
    n_train, n_valid = int(len(pooled) * 0.7), int(len(pooled) * 0.1)
    parts = np.split(order, [n_train, n_train + n_valid])
    train, validation, held_out = (pooled.iloc[p].reset_index(drop=True) for p in parts)
    return train, validation, held_out
