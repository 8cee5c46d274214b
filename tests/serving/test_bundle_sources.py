"""The candidate sources a bundle carries (item_cf, ease, mf, popularity): trained by train_bundle
when [retrieval] sources gives them a quota, proposed as their definitions say, served over HTTP."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from recstack.config import Settings
from recstack.data.simulator import World
from recstack.errors import ConfigError, RecstackError
from recstack.events.parquet import ParquetEventLog
from recstack.features.stores import MemoryStore
from recstack.index.sources import Request
from recstack.servables.bundle import ServingBundle
from recstack.serving.api import Runtime, create_app
from recstack.serving.graph import Alignment, build_pipeline
from recstack.serving.ops.retrieve import BundleMF, BundleNeighbours, BundlePopularity
from recstack.serving.state import FeedState
from recstack.serving.worker import FeedWorker
from recstack.train.feed import train_bundle
from tests.serving.conftest import FEATURES, KEY, feed_settings

QUOTAS = {"two_tower": 0, "item_to_item": 0, "item_cf": 40, "ease": 40, "mf": 40, "popularity": 40}


def sources_settings(state_dir: Path, **quotas: int) -> Settings:
    base = feed_settings(state_dir)
    retrieval = base.retrieval.model_validate(base.retrieval.model_dump() | {"sources": quotas})
    return base.model_copy(update={"retrieval": retrieval})


@pytest.fixture(scope="module")
def sources_bundle(feed_world: tuple[World, Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sources")
    log = ParquetEventLog(feed_world[1])
    train_bundle(sources_settings(root / "state", **QUOTAS), log, root / "bundle")
    return root / "bundle"


def bundle_weights(folder: Path) -> str:
    """The bundle item with the most item_cf neighbours."""
    bundle = ServingBundle.load(folder)
    row = int(np.argmax(bundle.sources.neighbours["item_cf"].getnnz(axis=1)))
    return bundle.retriever.item_ids[row]


def served_state(feed_log: ParquetEventLog) -> FeedState:
    """The live state of the history, as the worker builds it."""
    state = FeedState(history=10, features=FEATURES)
    FeedWorker(feed_log, state, MemoryStore()).drain()
    return state


def test_sources_propose_what_their_definitions_say(sources_bundle: Path, feed_log: ParquetEventLog) -> None:
    bundle = ServingBundle.load(sources_bundle)
    assert sorted(bundle.sources.kinds()) == ["ease", "item_cf", "mf", "popularity"]
    state = served_state(feed_log)
    alignment = Alignment(bundle, state)
    user = next(u for u, s in state.users.items() if len(s.history) >= 3)
    history = tuple(state.users[user].history)
    request = Request(None, history, 0, frozenset(), user)
    rows = [int(alignment.bundle_of[i]) for i in history[:10]]
    for name, weights in bundle.sources.neighbours.items():
        items, scores = BundleNeighbours(name, weights, alignment, 10).propose(request, 15)
        expected = weights.toarray()[rows].sum(axis=0)  # the definition, densely
        expected[rows] = 0.0
        catalog_scores = expected[alignment.bundle_of[items]]
        np.testing.assert_allclose(scores, catalog_scores, rtol=1e-5)
        assert np.isclose(scores[0], expected.max(), rtol=1e-5) and np.all(np.diff(scores) <= 1e-9)
        assert not set(items.tolist()) & set(history[:10])
    assert bundle.sources.mf is not None
    mf = BundleMF(bundle.sources.mf, alignment, 10)
    items, scores = mf.propose(request, 10)
    vectors = bundle.sources.mf
    exact = vectors.items @ vectors.users[vectors.user_index[user]]
    np.testing.assert_allclose(scores, np.sort(exact)[::-1][:10], rtol=1e-4)
    cold_items, _ = mf.propose(Request(None, history, 0, frozenset(), "never-seen"), 10)
    fold_in = vectors.items @ vectors.items[rows].mean(axis=0)
    assert alignment.bundle_of[cold_items[0]] == int(np.argmax(fold_in))
    assert bundle.sources.popularity is not None
    items, counts = BundlePopularity(bundle.sources.popularity, alignment, state).propose(request, 5)
    assert counts[0] == bundle.sources.popularity.max() and np.all(np.diff(counts) <= 0)


@pytest.mark.parametrize("source", ["item_cf", "ease", "mf", "popularity"])
def test_each_source_serves_a_feed_over_http(
    source: str, sources_bundle: Path, feed_log: ParquetEventLog, tmp_path: Path
) -> None:
    quotas = {k: 0 for k in QUOTAS} | {source: 200}
    settings = sources_settings(tmp_path, **quotas)
    runtime = Runtime(settings, feed_log, store=MemoryStore(), bundle_source=lambda: ("1", sources_bundle))
    assert runtime.worker is not None
    runtime.worker.drain()
    runtime.start()
    weights = bundle_weights(sources_bundle)
    try:
        with TestClient(create_app(runtime)) as client:
            # a new user clicks the item with the most neighbours, then asks for a feed (the
            # history's users have seen the few items co-engaged in this popularity-served log)
            click = {
                "event_id": f"new-click-{source}",
                "kind": "click",
                "timestamp": time.time(),
                "user_id": "new-user",
                "item_id": weights,
            }
            assert client.post("/v1/events", json=[click], headers=KEY).json()["accepted"] == 1
            runtime.worker.drain()
            body = client.get("/v1/recommend", params={"user_id": "new-user", "n": 4}, headers=KEY).json()
    finally:
        runtime.close()
    assert len(body["items"]) == 4 and not body["degraded"]
    assert {i["source"] for i in body["items"]} <= {source, "explore"}
    assert any(i["source"] == source for i in body["items"])


def test_a_source_the_bundle_lacks_and_an_oversized_ease_are_clear_errors(
    feed_world: tuple[World, Path, Path], feed_log: ParquetEventLog, tmp_path: Path
) -> None:
    state = served_state(feed_log)
    bundle = ServingBundle.load(feed_world[2])  # trained with the default sources
    with pytest.raises(ConfigError, match=r"names \['ease'\].*retrain the bundle"):
        build_pipeline(sources_settings(tmp_path, two_tower=100, ease=50), bundle, state)
    settings = sources_settings(tmp_path / "big", ease=50)
    settings = settings.model_copy(
        update={"retrieval": settings.retrieval.model_copy(update={"ease_max_items": 100})}
    )
    with pytest.raises(RecstackError, match=r"EASE\^R inverts .* items need .*ease_max_items = 100"):
        train_bundle(settings, feed_log, tmp_path / "bundle")
