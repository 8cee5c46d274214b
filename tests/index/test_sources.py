from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recstack.config import RetrievalConfig, SourceKind
from recstack.errors import ConfigError
from recstack.events import ParquetEventLog
from recstack.index.faiss_index import IndexKind, ItemIndex
from recstack.index.sources import (
    US,
    FreshSource,
    ItemToItemSource,
    MergeScratch,
    Request,
    TrendingConsumer,
    TrendingSource,
    TwoTowerSource,
    build_sources,
    merge,
    merge_arrays,
)
from recstack.models.baselines import ItemCF


class Fixed:
    def __init__(self, name: str, items: list[int]) -> None:
        self.name = name
        self.items = items

    def propose(self, request: Request, k: int) -> list[tuple[int, float]]:
        return [(i, 1.0 / (n + 1)) for n, i in enumerate(self.items[:k])]


def test_merge_quotas_dedupe_exclusions_and_spill() -> None:
    a, b, c = Fixed("a", [1, 2, 3, 4]), Fixed("b", [2, 5, 6]), Fixed("c", [7, 8, 9])
    out = merge([(a, 2), (b, 2), (c, 2)], Request(user=0, exclude=frozenset({1})))
    assert [(x.item, x.source) for x in out] == [(2, "a"), (3, "a"), (5, "b"), (6, "b"), (7, "c"), (8, "c")]
    assert out[0].also_from == ["b"]  # item 2 came from both; recorded
    # a source that runs short leaves its quota to the next one
    short = merge([(Fixed("a", [1]), 3), (c, 2)], Request(user=None))
    assert [x.item for x in short] == [1, 7, 8, 9]
    assert len(merge([(a, 4), (c, 3)], Request(user=0), k=5)) == 5


def test_merge_with_a_reused_scratch_is_the_same_merge_and_leaves_it_clear() -> None:
    # r proposes items twice (the first counts) and is asked for 3 + room for 2 exclusions = 5
    repeating = Fixed("r", [4, 9, 4, 10, 9, 11])
    other = Fixed("o", [9, 11, 12, 10_000])  # an index past the scratch's size grows it mid-merge
    request = Request(user=0, exclude=frozenset({10, 500}))
    scratch = MergeScratch()
    for _ in range(2):
        merged = merge_arrays([(repeating, 3), (other, 3)], request, scratch=scratch)
        assert merged.items.tolist() == [4, 9, 11, 12, 10_000]
        assert merged.sources == ["r", "r", "o", "o", "o"] and merged.also_from == {9: ["o"]}
        assert not scratch.marks.any()


def test_trending_decays_with_half_life() -> None:
    trend = TrendingSource(n_items=3, half_life_s=3600)
    trend.observe(np.array([0, 0, 1]), np.array([0, 0, 3600 * US]))
    top = trend.propose(Request(user=None, now_us=3600 * US), 3)
    # item 0: two engagements one half-life ago -> 1.0; item 1: one engagement now -> 1.0
    assert dict(top) == pytest.approx({0: 1.0, 1: 1.0})
    later = dict(trend.propose(Request(user=None, now_us=7200 * US), 3))
    assert later[1] == pytest.approx(0.5)
    assert 2 not in later


def test_fresh_items_for_a_user_without_history() -> None:
    created = np.array([0, 10, 20, 30]) * 86_400 * US
    fresh = FreshSource(created, window_s=15 * 86_400)
    got = fresh.propose(Request(user=None, now_us=31 * 86_400 * US), 5)
    assert [i for i, _ in got] == [3, 2]  # newest first, within the window
    content = np.array([[1.0, 0.0], [0.9, 0.0], [0.0, 1.0], [1.0, 0.1]])
    by_content = FreshSource(created, window_s=30 * 86_400, content=content)
    picks = by_content.propose(Request(user=None, history=(0,), now_us=31 * 86_400 * US), 2)
    assert [i for i, _ in picks] == [3, 1]


def test_unknown_user_gets_trending_and_fresh_not_an_error() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(20, 4)).astype(np.float32)
    tower = TwoTowerSource(ItemIndex(4, IndexKind.flat).build(vectors), lambda u, h: vectors[u])
    trend = TrendingSource(20)
    trend.observe(np.array([5, 5, 6]), np.array([0, 0, 0]))
    fresh = FreshSource(np.arange(20) * US, window_s=5)
    out = merge([(tower, 5), (trend, 2), (fresh, 2)], Request(user=None, now_us=19 * US))
    assert [x.source for x in out] == ["trending", "trending", "fresh", "fresh", "fresh", "fresh", "fresh"][
        : len(out)
    ]
    assert {x.item for x in out} >= {5, 6, 19}


def test_two_tower_and_item_to_item_sources() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(30, 8)).astype(np.float32)
    tower = TwoTowerSource(ItemIndex(8, IndexKind.flat).build(vectors), lambda u, h: vectors[u])
    assert tower.propose(Request(user=3), 1)[0][0] == 3
    x = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=np.float32))
    i2i = ItemToItemSource(ItemCF(neighbours=3).fit(x))
    assert i2i.propose(Request(user=None, history=(0,)), 3) == [(1, pytest.approx(1.0))]


def test_build_sources_follows_config_order_and_refuses_missing_ones() -> None:
    cfg = RetrievalConfig(sources={SourceKind.trending: 5, SourceKind.fresh: 0, SourceKind.two_tower: 7})
    trending, two_tower = Fixed("trending", [1]), Fixed("two_tower", [2])
    built = build_sources(cfg, {SourceKind.two_tower: two_tower, SourceKind.trending: trending})
    assert [(s.name, q) for s, q in built] == [("trending", 5), ("two_tower", 7)]  # fresh has quota 0
    with pytest.raises(ConfigError, match="two_tower"):
        build_sources(cfg, {SourceKind.trending: trending})


def test_trending_consumer_counts_each_engagement_once(tmp_path: Path) -> None:
    log = ParquetEventLog(tmp_path)
    t = "2026-11-23T10:00:00Z"
    events = [
        {"event_id": "a", "kind": "click", "timestamp": t, "user_id": "u", "item_id": "i1"},
        {"event_id": "b", "kind": "share", "timestamp": t, "user_id": "u", "item_id": "i1"},
        {"event_id": "c", "kind": "hide", "timestamp": t, "user_id": "u", "item_id": "i0"},  # not counted
        {"event_id": "d", "kind": "like", "timestamp": t, "user_id": "u", "item_id": "ghost"},  # unknown
        {"event_id": "e", "kind": "like", "timestamp": t, "user_id": "u", "item_id": "i2"},
    ]
    log.append(events)
    index = {"i0": 0, "i1": 1, "i2": 2}
    trending = TrendingSource(n_items=3, half_life_s=3600)
    consumer = TrendingConsumer(log, trending, index.get, RetrievalConfig().trending_weights)
    consumer.drain()
    log.append(events[:2])  # a retried batch: deduplicated by the log
    consumer.drain()
    now = int(datetime(2026, 11, 23, 10, tzinfo=UTC).timestamp() * US)
    assert dict(trending.propose(Request(user=None, now_us=now), 3)) == pytest.approx({1: 4.0, 2: 2.0})
    assert consumer.unknown_items == 1
    assert consumer.applied == 5


def test_trending_grows_with_new_items() -> None:
    trending = TrendingSource(n_items=2)
    trending.observe(np.array([4]), np.array([0]))
    assert trending.propose(Request(user=None), 1) == [(4, 1.0)]
