"""The feed's training window: the holdout (temporal tail or served traffic) and the warning for a
window that mixes sources whose click rates differ."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recstack.config import HoldoutKind
from recstack.errors import RecstackError
from recstack.train.feed import mixed_sources, served_rows, split_holdout


def _frame(n_imported: int, ctr_imported: float, n_served: int, ctr_served: float) -> pd.DataFrame:
    """Imported impressions first in time, then served ones (model versions name the feed)."""
    rng = np.random.default_rng(0)
    n = n_imported + n_served
    return pd.DataFrame(
        {
            "timestamp_us": np.arange(n) * 1_000_000,
            "model_versions": ["{}"] * n_imported + ['{"feed": "3"}'] * n_served,
            "click": np.concatenate(
                [rng.random(n_imported) < ctr_imported, rng.random(n_served) < ctr_served]
            ).astype(np.int64),
        }
    )


def test_served_holdout_is_the_tail_of_served_traffic_and_training_reads_what_came_before() -> None:
    frame = _frame(900, 0.55, 300, 0.10)
    assert served_rows(frame).sum() == 300
    train, valid, holdout = split_holdout(frame, HoldoutKind.served)
    assert len(holdout) == 30 and served_rows(holdout).all()
    assert train["timestamp_us"].max() < valid["timestamp_us"].min()
    assert valid["timestamp_us"].max() < holdout["timestamp_us"].min()
    assert len(train) + len(valid) == len(frame) - 30 and len(train) == int((len(frame) - 30) * 8 / 9)
    tail = split_holdout(frame, HoldoutKind.tail)
    assert [len(p) for p in tail] == [960, 120, 120]
    with pytest.raises(RecstackError, match="holds 0 impressions the API served"):
        split_holdout(_frame(500, 0.5, 0, 0.1), HoldoutKind.served)


def test_a_window_mixing_click_rates_beyond_the_factor_is_named() -> None:
    warning = mixed_sources(_frame(2_000, 0.55, 2_000, 0.10), factor=2.0)
    assert warning is not None and "2,000 served impressions" in warning and "mixed_ctr_factor = 2" in warning
    assert "--since/--until" in warning
    assert mixed_sources(_frame(2_000, 0.12, 2_000, 0.10), factor=2.0) is None  # close enough
    assert mixed_sources(_frame(2_000, 0.55, 0, 0.10), factor=2.0) is None  # one source only
