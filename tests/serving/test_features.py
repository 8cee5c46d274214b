from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recstack.data.simulator import World
from recstack.events.parquet import ParquetEventLog
from recstack.features.feed import ColumnarEncoder, categorical_text
from recstack.features.stores import MemoryStore
from recstack.servables.bundle import ServingBundle
from recstack.serving.state import FeedState
from recstack.serving.worker import FeedWorker
from tests.serving.conftest import FEATURES


def frame_of(
    items: Sequence[str], user_id: str | None, values: dict[str, np.ndarray], categorical: Sequence[str]
) -> pd.DataFrame:
    """The frame ``TabularEncoder.transform`` reads for the same request (what ``ColumnarEncoder``
    computes without one): ids, categorical codes as strings, dense values."""
    columns: dict[str, Any] = {"user_id": [user_id or ""] * len(items), "item_id": list(items)}
    for name, column in values.items():
        columns[name] = categorical_text(column) if name in categorical else column
    return pd.DataFrame(columns)


@pytest.mark.parametrize("part", ["heavy", "light"])
def test_columnar_encoding_equals_the_frame_path(
    feed_world: tuple[World, Path, Path], feed_log: ParquetEventLog, part: str
) -> None:
    state = FeedState(features=FEATURES)
    FeedWorker(feed_log, state, MemoryStore()).drain()
    state.load_items(["brand-new"], ["new-creator"], np.array([0]), {"topic": ["t-unseen"]})
    bundle = ServingBundle.load(feed_world[2])
    ranker = bundle.heavy if part == "heavy" else bundle.light
    assert ranker is not None
    encoder = ranker.encoder
    columnar = ColumnarEncoder(encoder)
    columnar.refresh(state.item_ids)
    rng = np.random.default_rng(0)
    items = np.append(rng.choice(state.n_items - 1, 50, replace=False), state.n_items - 1)
    now = 1_800_000_000_000_000
    for user, context in (("u5", {"device": "ios"}), (None, {}), ("stranger", {"device": "tv"})):
        values = state.features.read(user, items, now, "feed", context, state.created_us.values)
        values["retrieval_score"] = rng.normal(size=len(items))
        values["retrieval_score"][3] = np.nan  # non-finite -> the training mean, on both paths
        values["user_last_items"] = rng.normal(size=len(items))  # the similarity serving computes
        frame = frame_of([state.item_ids[i] for i in items], user, values, encoder.categorical)
        expected = encoder.transform(frame)
        got = columnar.encode(items, user, values)
        np.testing.assert_array_equal(got.sparse, expected.sparse)
        np.testing.assert_allclose(got.dense, expected.dense, rtol=1e-6, atol=1e-6)
    # the new item, its creator and its topic map to the unseen row
    new_item = [
        encoder.categorical.index(c)
        for c in ("item_id", "item_creator", "item_topic")
        if c in encoder.categorical
    ]
    assert (got.sparse[-1, new_item] == 0).all() and new_item
