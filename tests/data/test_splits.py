from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recstack.data.interactions import Interactions, Vocabulary
from recstack.data.sampling import UniformNegatives
from recstack.data.splits import leave_last_out, random_ratio_split, recbole_split_counts, temporal_split
from recstack.errors import RecstackError


def frame(n_users: int = 5, per_user: int = 10) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [
        (u, i, int(rng.integers(1_000_000)))
        for u in range(n_users)
        for i in rng.choice(50, per_user, replace=False)
    ]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def test_temporal_split_never_puts_test_before_train() -> None:
    train, valid, test = temporal_split(frame())
    assert len(train) + len(valid) + len(test) == 50
    assert (
        train["timestamp"].max()
        < valid["timestamp"].min()
        <= valid["timestamp"].max()
        < test["timestamp"].min()
    )
    assert len(test) == 5 and len(valid) == 5


def test_leave_last_out_holds_out_each_users_latest() -> None:
    data = frame()
    train, valid, test = leave_last_out(data)
    latest = data.sort_values("timestamp").groupby("user_id").tail(1).set_index("user_id")["item_id"]
    assert test.set_index("user_id")["item_id"].sort_index().equals(latest.sort_index())
    assert (valid.set_index("user_id")["timestamp"] <= test.set_index("user_id")["timestamp"]).all()
    assert len(train) == 40
    short = pd.DataFrame({"user_id": [1, 1], "item_id": [1, 2], "timestamp": [1, 2]})
    assert [len(p) for p in leave_last_out(short)] == [2, 0, 0]


@pytest.mark.parametrize(
    ("total", "expected"),
    [(10, [8, 1, 1]), (20, [16, 2, 2]), (23, [19, 2, 2]), (5, [3, 1, 1]), (2, [1, 0, 1])],
)
def test_recbole_rounding(total: int, expected: list[int]) -> None:
    assert recbole_split_counts(total, (0.8, 0.1, 0.1)) == expected


def test_random_ratio_split_is_per_user_and_seeded() -> None:
    data = frame(n_users=4, per_user=20)
    train, valid, test = random_ratio_split(data, seed=1)
    assert train.groupby("user_id").size().tolist() == [16] * 4
    assert valid.groupby("user_id").size().tolist() == [2] * 4
    again = random_ratio_split(data, seed=1)
    assert again[2].equals(test)
    merged = pd.concat([train, valid, test])
    assert len(merged.drop_duplicates()) == len(data)


def test_split_errors() -> None:
    with pytest.raises(RecstackError, match="empty"):
        leave_last_out(frame().iloc[:0])
    with pytest.raises(RecstackError, match="columns"):
        temporal_split(frame().drop(columns="timestamp"))
    with pytest.raises(RecstackError, match="ratios"):
        random_ratio_split(frame(), (0.5, 0.1, 0.1))


def test_vocabulary_and_unknown_ids() -> None:
    vocab = Vocabulary.fit(pd.Series(["b", "a"]), pd.Series(["c"]))
    assert vocab.encode(pd.Series(["c", "a"])).tolist() == [2, 0]
    with pytest.raises(RecstackError, match="unknown id 'z'"):
        vocab.encode(pd.Series(["a", "z"]))


def test_uniform_negatives_avoid_positives() -> None:
    inter = Interactions(np.array([0, 0, 0, 1]), np.array([0, 1, 2, 3]), n_users=2, n_items=5)
    sampler = UniformNegatives(inter.csr())
    out = sampler({"user": np.zeros(1000, dtype=np.int64)}, np.random.default_rng(0))
    assert set(out["neg_item"].tolist()) == {3, 4}
