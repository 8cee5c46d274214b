"""The skew test of the running system: simulated users are served through the HTTP API, then the
offline path materializes the same [[features]] at each served impression's time; every value the
API logged equals its offline value (the worker keeps up between requests here: what it has not yet
applied when a request comes is the documented lag, not skew)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from fastapi.testclient import TestClient

from recstack.data.simulator import World
from recstack.events.parquet import ParquetEventLog
from recstack.features.definitions import LastN, RetrievalScore
from recstack.features.feed import history_similarity
from recstack.features.offline import materialize
from recstack.features.stores import MemoryStore
from recstack.serving.api import Runtime, create_app
from tests.serving.conftest import KEY, feed_settings


def test_every_logged_feature_equals_its_offline_value(
    feed_world: tuple[World, Path, Path], feed_log: ParquetEventLog, tmp_path: Path
) -> None:
    world = feed_world[0]
    runtime = Runtime(
        feed_settings(tmp_path), feed_log, store=MemoryStore(), bundle_source=lambda: ("1", feed_world[2])
    )
    assert runtime.worker is not None
    runtime.worker.drain()
    runtime.reload()  # no background threads: the test paces the worker
    rng = np.random.default_rng(0)
    served: list[str] = []
    with TestClient(create_app(runtime)) as client:
        for step in range(40):
            user = f"u{rng.integers(world.n_users)}"
            device = ["ios", "android", "web"][step % 3]
            body = client.post(
                "/v1/recommend", json={"user_id": user, "n": 8, "context": {"device": device}}, headers=KEY
            ).json()
            served.append(body["request_id"])
            runtime.flush_impressions()
            # the user clicks, likes or hides some of what was shown, a moment later
            events = []
            for n, item in enumerate(body["items"]):
                kind = ["click", "like", "hide", None][int(rng.integers(4))] if n < 4 else None
                if kind is not None:
                    events.append(
                        {
                            "event_id": f"skew-{step}-{n}-{kind}",
                            "kind": kind,
                            "timestamp": time.time(),
                            "user_id": user,
                            "item_id": item["item_id"],
                            "request_id": body["request_id"],
                        }
                    )
            if events:
                assert client.post("/v1/events", json=events, headers=KEY).json()["accepted"] == len(events)
            runtime.worker.drain()
    bundle = runtime.pipeline.bundle if runtime.pipeline is not None else None
    assert bundle is not None
    runtime.close()

    log_table = feed_log.table()
    impressions = log_table.filter(
        pc.and_(
            pc.equal(log_table["kind"], "impression"), pc.is_in(log_table["request_id"], pa.array(served))
        )
    )
    assert impressions.num_rows == 40 * 8
    features = bundle.features
    offline = materialize(
        log_table, impressions.select(["timestamp", "user_id", "item_id", "surface", "context"]), features
    )
    logged = [json.loads(f) for f in impressions["features"].to_pylist()]
    index = bundle.retriever.item_index
    checked = 0
    for f in features:
        if isinstance(f, RetrievalScore):  # request-time: the towers' score, not a function of the log
            continue
        values = offline.column(f.name).to_pylist()
        for row, (expected, got) in enumerate(zip(values, logged, strict=True)):
            if isinstance(f, LastN):  # serving logs the similarity to the sequence it read
                # float32 unit vectors: a mean taken in another order differs by ~D x 1e-7
                item = impressions["item_id"][row].as_py()
                rows = [index[i] for i in expected if i in index]
                want = (
                    history_similarity(bundle.vectors[[index[item]]], bundle.vectors[rows])[0]
                    if rows
                    else 0.0
                )
                assert math.isclose(got[f.name], want, rel_tol=1e-6, abs_tol=1e-5), (f.name, row)
            else:
                same = got[f.name] == expected or (math.isnan(got[f.name]) and math.isnan(expected))
                assert same, (f.name, row, got[f.name], expected)
            checked += 1
    assert checked == impressions.num_rows * (len(features) - 1)


def test_served_features_reuse_what_the_rankers_read_and_read_the_rest(
    feed_world: tuple[World, Path, Path], feed_log: ParquetEventLog, tmp_path: Path
) -> None:
    from recstack.serving.ops.base import RecRequest
    from recstack.serving.ops.rank import request_features, served_features

    runtime = Runtime(
        feed_settings(tmp_path), feed_log, store=MemoryStore(), bundle_source=lambda: ("1", feed_world[2])
    )
    assert runtime.worker is not None
    runtime.worker.drain()
    runtime.reload()
    pipeline, state = runtime.pipeline, runtime.state
    assert pipeline is not None
    user = "u7"
    request = RecRequest(user, 10, 1_800_000_000_000_000, history=tuple(state.users[user].history))
    served = pipeline.run(request, state).candidates.items
    assert "feature_items" in request.cache
    unranked = np.setdiff1d(np.arange(state.n_items), request.cache["feature_items"])[:3]
    items = np.concatenate([served, unranked])  # some the rankers read, some (as explore picks) not
    got = served_features(request, items, pipeline.bundle, state)
    fresh = RecRequest(user, 10, request.now_us, history=request.history)
    fresh.cache["bundle_of"] = request.cache["bundle_of"]
    fresh.cache["user_vector"] = request.cache["user_vector"]
    expected = request_features(fresh, items, pipeline.bundle, state)
    vector_dots = {"retrieval_score", "user_last_items"}  # float32 products: the batch changes the sum order
    for name, values in expected.items():
        if name in vector_dots:
            np.testing.assert_allclose(got[name], values, rtol=1e-6, atol=1e-5, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], values, err_msg=name)
    runtime.close()
