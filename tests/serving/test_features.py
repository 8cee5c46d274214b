from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recstack.data.simulator import World
from recstack.events.parquet import ParquetEventLog
from recstack.features.feed import ColumnarEncoder, dense_values, serving_frame
from recstack.servables.ranker import OnnxRanker
from recstack.serving.state import FeedState


@pytest.mark.parametrize("part", ["heavy", "light"])
def test_columnar_encoding_equals_the_frame_path(
    feed_world: tuple[World, Path, Path], feed_log: ParquetEventLog, part: str
) -> None:
    state = FeedState(item_fields=("topic",))
    state.apply(feed_log.replay())
    state.load_items(["brand-new"], ["new-creator"], np.array([0]), {"topic": ["t-unseen"]})
    encoder = OnnxRanker(feed_world[2] / part).encoder
    columnar = ColumnarEncoder(encoder, ["topic"])
    columnar.refresh(state)
    rng = np.random.default_rng(0)
    items = np.append(rng.choice(state.n_items - 1, 50, replace=False), state.n_items - 1)
    scores = rng.normal(size=len(items))
    scores[3] = np.nan  # non-finite -> the training mean, on both paths
    now = 1_800_000_000_000_000
    for user, context in (("u5", {"device": "ios"}), (None, {}), ("stranger", {"device": "tv"})):
        frame = serving_frame(
            user,
            "feed",
            context,
            [state.item_ids[i] for i in items],
            [state.creators[c] for c in state.creator.values[items]],
            {"topic": [state.fields["topic"][i] for i in items]},
            scores,
            state.created_us.values[items],
            now,
            state.clicks.values[items],
            state.impressions.values[items],
        )
        expected = encoder.transform(frame)
        dense = dense_values(
            scores,
            state.created_us.values[items],
            now,
            state.clicks.values[items],
            state.impressions.values[items],
        )
        got = columnar.encode(
            items, {"user_id": user or "", "surface": "feed", "device": context.get("device", "")}, dense
        )
        np.testing.assert_array_equal(got.sparse, expected.sparse)
        np.testing.assert_allclose(got.dense, expected.dense, rtol=1e-6, atol=1e-6)
    assert (got.sparse[-1] == 0).sum() >= 2  # the new item, creator and topic map to the unseen row
