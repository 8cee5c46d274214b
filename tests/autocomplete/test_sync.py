"""Autocomplete in the separate topology (autocomplete/sync.py): the worker publishes the queries it
applies through the state store and the API processes follow: the same counts as the embedded
topology, each query once across snapshots, worker restarts and a worker that starts again from
the log's beginning; a damaged snapshot is an error that leaves what was served; and the real
processes' wiring over Redis."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from recstack.autocomplete.service import Autocomplete
from recstack.autocomplete.sync import (
    AUTOCOMPLETE_KEY,
    Follower,
    Publisher,
    decode_counts,
    publish_autocomplete,
)
from recstack.config import AutocompleteConfig, Settings, load_settings
from recstack.errors import CheckpointError
from recstack.events.parquet import ParquetEventLog
from recstack.features.stores import MemoryStore
from recstack.serving.api import Runtime, create_app
from recstack.serving.state import FeedState
from recstack.serving.worker import FeedWorker, sync_state
from tests.autocomplete.test_service import KEY, NOW, queries, table

CFG = AutocompleteConfig(half_life_s=3_600, typo_below=0)


def settings_for(tmp_path: Path, **env: str) -> Settings:
    return load_settings(None, {"RECSTACK_PATHS__STATE_DIR": str(tmp_path), **env})


def worker_on(log: ParquetEventLog, store: MemoryStore, settings: Settings) -> tuple[FeedWorker, Publisher]:
    worker = FeedWorker(log, FeedState.for_settings(settings), store)
    return worker, publish_autocomplete(worker, settings.autocomplete, resumed=worker.resumed_group)


def scores(ac: Autocomplete, prefix: str = "") -> dict[str, float]:
    return {s.text: s.score for s in ac.suggest(prefix, n=10)}


HISTORY = queries(
    ("h1", "Star Wars", "u1", NOW),
    ("h2", "star wars", "u2", NOW + 10),
    ("h3", "star trek", "u2", NOW - 7_200),  # two half-lives before: a quarter
    ("h4", "stardust", "u3", NOW + 20),
)


def test_the_api_serves_the_counts_a_separate_worker_published(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    log = ParquetEventLog(tmp_path / "events")
    log.append(HISTORY)
    store = MemoryStore()
    worker, _ = worker_on(log, store, settings)
    worker.drain()  # applied, published with the snapshot that acknowledges it
    api = Runtime(settings, log, store=store, in_process_worker=False)
    api.sync_autocomplete()
    embedded = Autocomplete(settings.autocomplete)  # the same events counted in one process
    embedded.observe(table(HISTORY))
    assert scores(api.autocomplete, "sta") == pytest.approx(scores(embedded, "sta"), rel=1e-6)
    assert list(scores(api.autocomplete, "sta"))[:2] == ["star wars", "stardust"]
    # the users' recent queries travel too: u2's personal boost
    assert api.autocomplete.suggest("star", "u2")[0].text == "star wars"
    # a query posted to the API is suggested after one worker checkpoint and one sync
    client = TestClient(create_app(api))
    new = queries(*((f"n{i}", "star gazing", "u4", NOW + 30 + i) for i in range(5)))
    assert client.post("/v1/events", json=new, headers=KEY).json()["accepted"] == 5
    worker.drain()
    api.sync_autocomplete()
    body = client.get("/v1/autocomplete", params={"q": "star g"}, headers=KEY).json()
    assert [s["text"] for s in body["suggestions"] if not s["corrected"]] == ["star gazing"]
    embedded.observe(table(new))
    assert scores(api.autocomplete, "star") == pytest.approx(scores(embedded, "star"), rel=1e-6)
    api.close()


def test_snapshots_fold_the_batches_and_a_follower_behind_them_loads_the_snapshot(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    log = ParquetEventLog(tmp_path / "events")
    store = MemoryStore()
    worker, publisher = worker_on(log, store, settings)
    # followers configured with another half-life: they decay as the worker counted
    early, late = Follower(store, Autocomplete(CFG)), Follower(store, Autocomplete(CFG))
    log.append(HISTORY[:2])
    worker.drain()  # the chain's first checkpoint: a snapshot
    assert store.get_many([AUTOCOMPLETE_KEY + ":snapshot"])[0] is not None
    early.sync()
    log.append(HISTORY[2:3])
    worker.drain()  # a batch
    assert store.get_many([f"{AUTOCOMPLETE_KEY}:batch:{publisher.chain}:2"])[0] is not None
    publisher.full_due = True  # as publish_full_s passing would
    log.append(HISTORY[3:])
    worker.drain()  # a snapshot at 3: batch 2 is in it and deleted
    assert store.get_many([f"{AUTOCOMPLETE_KEY}:batch:{publisher.chain}:2"])[0] is None
    log.append(queries(("h5", "star wars", "u5", NOW + 40)))
    worker.drain()  # batch 4
    assert early.sync() > 0  # it lacked batch 2: the snapshot at 3, then batch 4
    late.sync()
    want = scores(publisher.autocomplete)
    assert scores(early.autocomplete) == pytest.approx(want, rel=1e-6)
    assert scores(late.autocomplete) == pytest.approx(want, rel=1e-6)
    assert early.seq == late.seq == publisher.seq == 4


def test_a_restarted_worker_counts_each_query_once(tmp_path: Path) -> None:
    """Killed after its last checkpoint: the deliveries it had not acknowledged come again to the
    restarted worker, which goes on with the chain; none is lost, none counted twice."""
    settings = settings_for(tmp_path)
    log = ParquetEventLog(tmp_path / "events")
    store = MemoryStore()
    log.append(HISTORY[:2])
    first, _ = worker_on(log, store, settings)
    first.drain()
    log.append(HISTORY[2:])
    first.poll()  # applied and counted in its memory, never checkpointed: the process dies here
    state, at = sync_state(store) or (None, None)
    assert state is not None
    second = FeedWorker(ParquetEventLog(tmp_path / "events"), state, store, resume=at)  # a new process
    assert second.resumed_group
    publisher = publish_autocomplete(second, settings.autocomplete, resumed=True)
    second.drain()
    follower = Follower(store, Autocomplete(settings.autocomplete))
    follower.sync()
    embedded = Autocomplete(settings.autocomplete)
    embedded.observe(table(HISTORY))
    assert scores(follower.autocomplete, "sta") == pytest.approx(scores(embedded, "sta"), rel=1e-6)
    assert publisher.autocomplete.counted == 2  # the two delivered again, on the snapshot's two


def test_a_worker_reading_the_log_again_starts_new_counts_the_api_follows(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    log = ParquetEventLog(tmp_path / "events")
    log.append(HISTORY)
    store = MemoryStore()
    worker, old = worker_on(log, store, settings)
    worker.drain()
    api = Follower(store, Autocomplete(settings.autocomplete))
    api.sync()
    # a fresh feed state (as when the stored one keeps other [[features]]): a new group, from the start
    fresh, new = worker_on(log, store, settings)
    assert not fresh.resumed_group
    fresh.drain()
    assert new.chain != old.chain
    api.sync()
    assert api.chain == new.chain
    embedded = Autocomplete(settings.autocomplete)
    embedded.observe(table(HISTORY))
    assert scores(api.autocomplete, "sta") == pytest.approx(scores(embedded, "sta"), rel=1e-6)  # not twice


def test_a_damaged_snapshot_is_an_error_and_the_api_keeps_its_suggestions(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    log = ParquetEventLog(tmp_path / "events")
    log.append(HISTORY)
    store = MemoryStore()
    worker, _ = worker_on(log, store, settings)
    worker.drain()
    api = Runtime(settings, log, store=store, in_process_worker=False)
    api.sync_autocomplete()
    before = scores(api.autocomplete, "sta")
    assert before
    (blob,) = store.get_many([AUTOCOMPLETE_KEY + ":snapshot"])
    assert blob is not None
    with pytest.raises(CheckpointError, match="cannot be read"):
        decode_counts(blob[: len(blob) // 2])
    store.put_many({AUTOCOMPLETE_KEY + ":snapshot": blob[:100], AUTOCOMPLETE_KEY + ":chain": b"other"})
    api.sync_autocomplete()  # logged; the last counts keep serving
    assert scores(api.autocomplete, "sta") == before
    api.close()


@pytest.mark.services
def test_recstack_worker_and_serve_over_redis_suggest_a_new_query_within_seconds(
    redis_url: str, unique: str, tmp_path: Path
) -> None:
    """The processes' own wiring (``run_worker``, ``make_runtime``) on a live Redis: a query posted
    to the API is suggested by it within a few syncs."""
    import redis

    from recstack.serving.service import make_runtime, run_worker

    url = redis_url.rsplit("/", 1)[0] + "/14"  # the state keys have a fixed prefix: a db of their own
    client_redis = redis.Redis.from_url(url)
    settings = settings_for(
        tmp_path,
        RECSTACK_EVENT_LOG__BACKEND="redis",
        RECSTACK_EVENT_LOG__REDIS_URL=url,
        RECSTACK_EVENT_LOG__STREAM=f"test:{unique}:events",
        RECSTACK_SERVING__STATE_SYNC_S="0.2",
        RECSTACK_MONITORING__ENABLED="false",
    )
    client_redis.delete(*(client_redis.keys("recstack:serving:*") or [b"none"]))
    stop = threading.Event()
    worker_thread = threading.Thread(target=run_worker, args=(settings, stop), daemon=True)
    runtime = make_runtime(settings)
    assert runtime.worker is None
    try:
        client = TestClient(create_app(runtime))
        assert client.post("/v1/events", json=HISTORY, headers=KEY).json()["accepted"] == len(HISTORY)
        worker_thread.start()
        runtime.start_background()
        posted = time.monotonic()
        while time.monotonic() - posted < 20:
            body = client.get("/v1/autocomplete", params={"q": "star w"}, headers=KEY).json()
            if body["suggestions"]:
                break
            time.sleep(0.1)
        assert [s["text"] for s in body["suggestions"] if not s["corrected"]] == ["star wars"]
    finally:
        stop.set()
        worker_thread.join(timeout=10)
        runtime.close()
        client_redis.delete(f"test:{unique}:events", *(client_redis.keys("recstack:serving:*") or [b"none"]))


def test_the_topic_boost_is_published_too(tmp_path: Path) -> None:
    """The worker resolves each engagement's topic (the items' topics are kept there only) and the
    API process boosts as one process counting the same events does, after a batch and a snapshot."""
    from tests.autocomplete.test_service import topic_history

    settings = settings_for(tmp_path)
    log = ParquetEventLog(tmp_path / "events")
    history = topic_history()
    log.append(history[:6])  # the items and the first search: the chain's first snapshot
    store = MemoryStore()
    worker, publisher = worker_on(log, store, settings)
    worker.drain()
    log.append(history[6:])
    worker.drain()  # a batch
    follower = Follower(store, Autocomplete(settings.autocomplete))
    follower.sync()
    assert follower.autocomplete.item_topic == {}  # resolved by the worker
    embedded = Autocomplete(settings.autocomplete)
    embedded.observe(table(history))
    for user in ("u9", "u8", "s0"):
        want = {s.text: s.score for s in embedded.suggest("star", user)}
        assert {s.text: s.score for s in follower.autocomplete.suggest("star", user)} == pytest.approx(want)
    assert next(iter(want)) == "star wars" and embedded.suggest("star", "u9")[0].text == "star trek"
    publisher.full_due = True
    log.append(queries(("late", "star wars", "u7", NOW + 5)))
    worker.drain()  # a snapshot: the topic counts are in it
    fresh = Follower(store, Autocomplete(settings.autocomplete))
    fresh.sync()
    embedded.observe(table(queries(("late", "star wars", "u7", NOW + 5))))
    want = {s.text: s.score for s in embedded.suggest("star", "u9")}
    assert {s.text: s.score for s in fresh.autocomplete.suggest("star", "u9")} == pytest.approx(want)


def test_a_restarted_worker_still_resolves_the_topics(tmp_path: Path) -> None:
    """The items' topics and the last searches are in the worker's snapshot: after a restart, a
    click on an item upserted before it still counts for the user and for the search it follows."""
    from tests.autocomplete.test_service import topic_history

    settings = settings_for(tmp_path)
    log = ParquetEventLog(tmp_path / "events")
    history = topic_history()
    log.append(history[:5])  # the items, a search for star wars, its result clicked
    store = MemoryStore()
    first, _ = worker_on(log, store, settings)
    first.drain()  # the chain's first snapshot
    state, at = sync_state(store) or (None, None)
    assert state is not None
    second = FeedWorker(ParquetEventLog(tmp_path / "events"), state, store, resume=at)
    publisher = publish_autocomplete(second, settings.autocomplete, resumed=True)
    assert publisher.autocomplete.item_topic == {"i1": "space", "i2": "drama", "i3": "drama"}
    log.append(history[5:])
    second.drain()
    follower = Follower(store, Autocomplete(settings.autocomplete))
    follower.sync()
    assert follower.autocomplete.item_topic == {}  # an API process does not keep them
    embedded = Autocomplete(settings.autocomplete)
    embedded.observe(table(history))
    for user in ("u9", "s0", "s1"):
        want = {s.text: s.score for s in embedded.suggest("star", user)}
        assert {s.text: s.score for s in follower.autocomplete.suggest("star", user)} == pytest.approx(want)
