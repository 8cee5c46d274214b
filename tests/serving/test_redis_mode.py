"""The API and the worker as separate processes over Redis (the bus and the state snapshots), and
the API with Redis down."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from recstack.data.simulator import World
from recstack.events.parquet import ParquetEventLog
from recstack.events.redis_stream import RedisStreamLog
from recstack.features.stores import MemoryStore
from recstack.serving.api import Runtime, create_app
from recstack.serving.state import FeedState
from tests.serving.conftest import FEATURES, KEY, RedisFeed, feed_settings


@pytest.mark.services
def test_api_serves_what_a_separate_worker_consumed(
    redis_feed: RedisFeed, unique: str, feed_world: tuple[World, Path, Path], tmp_path: Path
) -> None:
    bus, store, worker = redis_feed.bus, redis_feed.store, redis_feed.worker
    runtime = Runtime(
        feed_settings(tmp_path),
        bus,
        store=store,
        bundle_source=lambda: ("1", feed_world[2]),
        in_process_worker=False,
    )
    runtime.reload()
    client = TestClient(create_app(runtime))
    assert runtime.state.n_items == worker.state.n_items > 0
    posted = client.post(
        "/v1/events",
        json=[
            {
                "event_id": f"{unique}-hide",
                "kind": "hide",
                "timestamp": 1_795_000_000,
                "user_id": "u7",
                "item_id": "i3",
            }
        ],
        headers=KEY,
    )
    assert posted.json()["accepted"] == 1
    assert "i3" not in [i for i in _hidden(runtime, "u7")]  # the API does not own the state
    worker.drain()  # the worker applies the hide and snapshots
    runtime._sync_state()  # what the API's sync thread does every state_sync_s
    assert runtime.state.item_index["i3"] in runtime.state.users["u7"].blocked
    served = client.get("/v1/recommend", params={"user_id": "u7", "n": 50}, headers=KEY).json()
    assert "i3" not in [i["item_id"] for i in served["items"]]


def _hidden(runtime: Runtime, user: str) -> list[str]:
    state = runtime.state.user(user)
    return [runtime.state.item_ids[i] for i in state.blocked] if state else []


def test_redis_down_writes_get_503_and_reads_are_served_from_memory(
    feed_world: tuple[World, Path, Path], feed_log: ParquetEventLog, tmp_path: Path
) -> None:
    dead = RedisStreamLog("redis://127.0.0.1:1/0", socket_timeout_s=0.5)  # nothing listens there
    state = FeedState(features=FEATURES)
    state.apply(feed_log.replay())
    runtime = Runtime(
        feed_settings(tmp_path),
        dead,
        state=state,
        store=MemoryStore(),
        bundle_source=lambda: ("1", feed_world[2]),
        in_process_worker=False,
    )
    runtime.reload()
    client = TestClient(create_app(runtime))
    write = client.post(
        "/v1/events",
        json=[{"event_id": "e1", "kind": "click", "timestamp": 1, "user_id": "u1", "item_id": "i1"}],
        headers=KEY,
    )
    assert write.status_code == 503 and "unreachable" in write.json()["detail"]
    read = client.get("/v1/recommend", params={"user_id": "u1", "n": 5}, headers=KEY)
    assert read.status_code == 200 and len(read.json()["items"]) == 5 and read.json()["degraded"] is True
    pending = len(runtime.impressions)
    assert pending == 5 and runtime.flush_impressions() == 0 and len(runtime.impressions) == pending
