from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from recstack.data.simulator import World
from recstack.errors import BackendUnavailableError
from recstack.events.parquet import ParquetEventLog
from recstack.features.stores import MemoryStore
from recstack.serving.api import RecommendBody, RecommendFastPath, Runtime, create_app
from tests.serving.conftest import feed_settings

KEY = {"X-API-Key": "recstack-local"}


def test_recommend_returns_items_sources_and_logs_impressions(
    served: tuple[TestClient, Runtime, dict],
) -> None:
    client, runtime, _ = served
    body = client.get("/v1/recommend", params={"user_id": "u3", "n": 8}, headers=KEY).json()
    assert len(body["items"]) == 8 and body["model_version"] == "1" and not body["degraded"]
    assert [i["position"] for i in body["items"]] == list(range(8))
    assert {i["source"] for i in body["items"]} <= {
        "two_tower",
        "item_to_item",
        "trending",
        "fresh",
        "explore",
    }
    logged = runtime.impressions.rows()
    assert [e["request_id"] for e in logged] == [body["request_id"]] * 8
    # every feature the rankers read, as serving computed it
    assert set(json.loads(logged[0]["features"])) == {f.name for f in runtime.pipeline.bundle.features}
    # no experiment configured: no arm; ranked slots have propensity 1, exploration picks (0, 1]
    assert body["experiments"] == {} and all(e["experiment_arm"] is None for e in logged)
    for entry, row in zip(body["items"], logged, strict=True):
        assert row["propensity"] == 1.0 if not entry["explore"] else 0 < row["propensity"] <= 1
    # what serving knew (monitoring reads it): each item's source, the heads' raw probabilities of
    # the ranked ones, and on the first item the request's stage latencies and candidate counts
    known = [json.loads(row["serving"]) for row in logged]
    tasks = runtime.pipeline.bundle.tasks
    for entry, info in zip(body["items"], known, strict=True):
        assert info["source"] == entry["source"] and bool(info.get("explore")) == entry["explore"]
        probs = [info.get(f"p:{t}") for t in tasks]
        assert all(p is None for p in probs) if entry["explore"] else all(0 < p < 1 for p in probs)
    stages = {k[3:] for k in known[0] if k.startswith("ms:")}
    assert {"retrieve", "heavy_rank", "explore"} <= stages and known[0]["n:rerank"] >= 8
    assert not any(k.startswith("ms:") for info in known[1:] for k in info)
    per_source = {k: v for k, v in known[0].items() if k.startswith("n:retrieve.")}
    assert per_source and sum(per_source.values()) == known[0]["n:retrieve"]  # candidates per source
    posted = client.post("/v1/recommend", json={"user_id": "never-seen", "n": 5}, headers=KEY)
    assert posted.status_code == 200 and len(posted.json()["items"]) == 5  # cold start: trending/fresh


def test_api_key_is_required(served: tuple[TestClient, Runtime, dict]) -> None:
    client = served[0]
    assert client.get("/v1/recommend", params={"user_id": "u1"}).status_code == 401
    assert (
        client.get("/v1/recommend", params={"user_id": "u1"}, headers={"X-API-Key": "wrong"}).status_code
        == 401
    )
    assert client.get("/health/live").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_bad_input_gets_4xx_with_a_message(served: tuple[TestClient, Runtime, dict]) -> None:
    client = served[0]
    huge = client.get("/v1/recommend", params={"user_id": "u1", "n": 10**9}, headers=KEY)
    assert huge.status_code == 422 and "less than or equal to 200" in huge.text  # [serving] max_n
    assert client.get("/v1/recommend", params={"n": "ten"}, headers=KEY).status_code == 422
    bad_json = client.post("/v1/events", content=b"{nope", headers=KEY | {"content-type": "application/json"})
    assert bad_json.status_code == 422
    unknown = client.get("/v1/items/no-such-item/similar", headers=KEY)
    assert unknown.status_code == 404 and "no-such-item" in unknown.json()["detail"]
    assert client.post("/v1/recommend", json={"user_id": "", "n": 3}, headers=KEY).status_code == 422


def test_events_report_each_rejection_with_its_index_and_are_idempotent(
    served: tuple[TestClient, Runtime, dict],
) -> None:
    client, _runtime, _ = served
    batch = [
        {
            "event_id": "ok-1",
            "kind": "click",
            "timestamp": "2026-11-23T10:00:00Z",
            "user_id": "u1",
            "item_id": "i1",
        },
        {"event_id": "bad-1", "kind": "click", "timestamp": "2026-11-23T10:00:00Z", "user_id": "u1"},
        {"event_id": "ok-2", "kind": "like", "timestamp": 1_790_000_000, "user_id": "u1", "item_id": "i2"},
    ]
    first = client.post("/v1/events", json=batch, headers=KEY).json()
    assert first["accepted"] == 2 and [r["index"] for r in first["rejected"]] == [1]
    assert "item_id" in first["rejected"][0]["error"]
    again = client.post("/v1/events", json={"events": batch}, headers=KEY).json()
    assert again["accepted"] == 0 and again["duplicates"] == 2


def test_gorse_aliases(served: tuple[TestClient, Runtime, dict]) -> None:
    client = served[0]
    fed = client.post(
        "/api/feedback", json=[{"FeedbackType": "like", "UserId": "u2", "ItemId": "i5"}], headers=KEY
    )
    assert fed.status_code == 200 and fed.json()["RowAffected"] == 1
    listed = client.get("/api/recommend/u2", params={"n": 4}, headers=KEY)
    assert (
        listed.status_code == 200
        and len(listed.json()) == 4
        and all(isinstance(i, str) for i in listed.json())
    )


def test_corrupt_model_is_refused_and_the_champion_keeps_serving(
    served: tuple[TestClient, Runtime, dict], tmp_path: Path
) -> None:
    client, runtime, source = served
    broken = tmp_path / "broken"
    shutil.copytree(source["version"][1], broken)
    (broken / "heavy" / "model.onnx").write_bytes(b"garbage")
    source["version"] = ("2", broken)
    assert runtime.reload() is False
    assert runtime.version == "1" and "corrupt" in (runtime.reload_error or "")
    assert client.get("/v1/recommend", params={"user_id": "u1"}, headers=KEY).json()["model_version"] == "1"
    source["version"] = ("3", tmp_path.parent)  # not a bundle at all
    assert runtime.reload() is False and runtime.version == "1"


def test_hot_reload_swaps_the_champion_between_requests(
    served: tuple[TestClient, Runtime, dict], tmp_path: Path
) -> None:
    client, runtime, source = served
    copy = tmp_path / "v2"
    shutil.copytree(source["version"][1], copy)
    source["version"] = ("2", copy)
    deadline = time.monotonic() + 10
    while runtime.version != "2" and time.monotonic() < deadline:  # the watcher polls every 0.2 s
        assert client.get("/v1/recommend", params={"user_id": "u1"}, headers=KEY).status_code == 200
        time.sleep(0.05)
    assert runtime.version == "2"
    assert client.get("/v1/recommend", params={"user_id": "u1"}, headers=KEY).json()["model_version"] == "2"


def test_dead_bus_answers_from_memory_and_refuses_writes(served: tuple[TestClient, Runtime, dict]) -> None:
    client, runtime, _ = served

    def down(_: object) -> None:
        raise BackendUnavailableError("Redis at redis://127.0.0.1:1 is unreachable during append")

    runtime.bus.append = down  # type: ignore[method-assign]
    runtime.bus.append_table = down  # type: ignore[method-assign]
    write = client.post(
        "/v1/events",
        json=[{"event_id": "x", "kind": "click", "timestamp": 1, "user_id": "u", "item_id": "i1"}],
        headers=KEY,
    )
    assert write.status_code == 503 and "nothing in this batch was accepted" in write.json()["detail"]
    read = client.get("/v1/recommend", params={"user_id": "u1", "n": 5}, headers=KEY).json()
    assert len(read["items"]) == 5 and read["degraded"] is True
    kept = len(runtime.impressions)
    assert runtime.flush_impressions() == 0 and len(runtime.impressions) == kept  # kept for retry


def test_no_model_yet_is_a_clear_503(feed_log: ParquetEventLog, tmp_path: Path) -> None:
    runtime = Runtime(feed_settings(tmp_path), feed_log, store=MemoryStore(), bundle_source=lambda: None)
    client = TestClient(create_app(runtime))
    answer = client.get("/v1/recommend", params={"user_id": "u1"}, headers=KEY)
    assert answer.status_code == 503 and "no model" in answer.json()["detail"]
    assert client.get("/health/ready").status_code == 503


def test_served_items_are_not_repeated_and_counted_once(served: tuple[TestClient, Runtime, dict]) -> None:
    client, runtime, _ = served
    first = client.get("/v1/recommend", params={"user_id": "u9", "n": 10}, headers=KEY).json()
    second = client.get("/v1/recommend", params={"user_id": "u9", "n": 10}, headers=KEY).json()
    shown = [i["item_id"] for i in first["items"]]
    assert not set(shown) & {i["item_id"] for i in second["items"]}  # before the worker catches up
    state = runtime.state
    before = {i: state.impressions.values[state.item_index[i]] for i in shown}
    assert runtime.worker is not None
    runtime.flush_impressions()
    runtime.worker.drain()  # the worker reads the same impressions from the log: skipped by id
    after = {i: state.impressions.values[state.item_index[i]] for i in shown}
    assert after == before


def _scope(query: bytes, key: bytes = b"recstack-local", method: str = "GET") -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": "/v1/recommend",
        "query_string": query,
        "headers": [(b"host", b"x"), (b"x-api-key", key)],
    }


def test_recommend_fast_path_takes_only_what_the_route_would_accept() -> None:
    async def route(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("well-formed requests do not reach the route")

    answered: list[RecommendBody] = []

    def handler(body: RecommendBody) -> dict[str, Any]:
        answered.append(body)
        return {"items": []}

    fast = RecommendFastPath(route, {"recstack-local"}, 50, lambda: True, handler, lambda p, e: None)  # type: ignore[arg-type,return-value]
    body = fast.parse(_scope(b"user_id=u%201&n=7&surface=home&extra=1"))
    assert body is not None and (body.user_id, body.n, body.surface) == ("u 1", 7, "home")
    default = fast.parse(_scope(b""))
    assert default is not None and (default.user_id, default.n, default.surface) == (None, None, "feed")
    for query in (
        b"user_id=",
        b"n=0",
        b"n=51",
        b"n=ten",
        b"n=-1",
        b"n=%EF%BC%91",
        b"user_id=a&user_id=b",
        b"surface=",
        b"user_id=" + b"x" * 257,
    ):
        assert fast.parse(_scope(query)) is None, query  # the route answers (422) with its message
    assert fast.parse(_scope(b"n=5", key=b"wrong")) is None  # the route answers 401
    assert fast.parse(_scope(b"n=5", method="POST")) is None
    not_ready = RecommendFastPath(route, {"recstack-local"}, 50, lambda: False, handler, lambda p, e: None)  # type: ignore[arg-type,return-value]
    assert not_ready.parse(_scope(b"n=5")) is None  # no model yet: the route's 503

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(fast(_scope(b"user_id=u1&n=3"), receive, send))
    assert sent[0]["status"] == 200 and json.loads(sent[1]["body"]) == {"items": []}
    assert answered[-1].n == 3


def test_snapshot_copies_run_on_the_serving_loop_when_one_runs(
    feed_log: ParquetEventLog, tmp_path: Path
) -> None:
    import threading

    runtime = Runtime(feed_settings(tmp_path), feed_log, store=MemoryStore(), bundle_source=lambda: None)
    assert runtime.worker is not None and runtime.worker.capture_on == runtime.on_serving_thread
    here = threading.get_ident()
    assert runtime.on_serving_thread(threading.get_ident) == here  # no loop: run in place
    loop = asyncio.new_event_loop()
    serving = threading.Thread(target=loop.run_forever)
    serving.start()
    try:
        runtime.loop, runtime.loop_thread = loop, serving.ident
        assert runtime.on_serving_thread(threading.get_ident) == serving.ident
        runtime.worker.checkpoint()  # the copy on the loop, encoding and writing here
        assert runtime.store.get_many(["recstack:feed_state:version"]) != [None]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        serving.join()
        loop.close()
    assert runtime.on_serving_thread(threading.get_ident) == here  # the loop stopped: in place again


def test_ready_only_when_the_state_has_caught_up_with_the_log(
    feed_world: tuple[World, Path, Path], feed_log: ParquetEventLog, tmp_path: Path
) -> None:
    """Embedded: not ready while the in-process worker has not read the log to its end (the first
    feeds would repeat what users already saw), ready after. A separate worker's API: not ready
    until a snapshot of the worker's is loaded, and it says why."""
    bundle = feed_world[2]
    runtime = Runtime(
        feed_settings(tmp_path), feed_log, store=MemoryStore(), bundle_source=lambda: ("1", bundle)
    )
    runtime.reload()
    client = TestClient(create_app(runtime))
    waiting = client.get("/health/ready")
    assert waiting.status_code == 503
    reasons = " ".join(waiting.json()["waiting_for"])
    assert "worker is reading the event log" in reasons and "catalog is empty" in reasons
    assert runtime.worker is not None
    runtime.worker.poll(count=100)  # part of the log: still behind
    assert client.get("/health/ready").status_code == 503
    runtime.worker.drain()
    ready = client.get("/health/ready")
    assert (
        ready.status_code == 200 and ready.json()["waiting_for"] == [] and ready.json()["catalog_items"] > 0
    )

    apart = Runtime(
        feed_settings(tmp_path / "apart"),
        feed_log,
        store=MemoryStore(),
        bundle_source=lambda: ("1", bundle),
        in_process_worker=False,
    )
    apart.reload()
    answer = TestClient(create_app(apart)).get("/health/ready")
    assert answer.status_code == 503 and any("recstack worker" in w for w in answer.json()["waiting_for"])


def test_the_key_is_checked_before_the_body_and_every_route_bounds_its_size(
    feed_world: tuple[World, Path, Path], feed_log: ParquetEventLog, tmp_path: Path
) -> None:
    settings = feed_settings(tmp_path)
    settings = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"max_body_bytes": 4096})}
    )
    runtime = Runtime(settings, feed_log, store=MemoryStore(), bundle_source=lambda: ("1", feed_world[2]))
    assert runtime.worker is not None
    runtime.worker.drain()
    runtime.start()
    try:
        with TestClient(create_app(runtime)) as client:
            json_header = {"content-type": "application/json"}
            # malformed JSON without a key: 401, not 422 (the body is never read)
            assert client.post("/v1/events", content=b"{nope", headers=json_header).status_code == 401
            assert client.post("/v1/events", content=b"{nope", headers=KEY | json_header).status_code == 422
            big = b'{"user_id": "u1", "context": {"k": "' + b"x" * 5000 + b'"}}'
            for route in ("/v1/recommend", "/v1/events", "/v1/items", "/api/feedback"):
                answer = client.post(route, content=big, headers=KEY | json_header)
                assert answer.status_code == 413 and "max_body_bytes = 4,096" in answer.json()["detail"]

            def streamed() -> Any:  # no Content-Length: counted as it arrives
                for _ in range(10):
                    yield b" " * 1000

            chunked = client.post("/v1/events", content=streamed(), headers=KEY | json_header)
            assert chunked.status_code == 413
            # bounded ids and context on every route, the Gorse aliases included; the connection goes on
            long_id = "u" * 257
            assert client.get(f"/api/recommend/{long_id}", headers=KEY).status_code == 422
            assert client.get(f"/v1/items/{long_id}/similar", headers=KEY).status_code == 422
            many = {"user_id": "u1", "context": {f"k{i}": "v" for i in range(33)}}
            assert client.post("/v1/recommend", json=many, headers=KEY).status_code == 422
            assert client.get("/api/recommend/u1", headers=KEY).status_code == 200
            assert client.get("/nowhere", headers=KEY).status_code == 404
            metrics = client.get("/metrics").text
    finally:
        runtime.close()
    counted = {
        line[line.index("{") + 1 : line.rindex("}")]
        for line in metrics.splitlines()
        if line.startswith("recstack_responses_total{")
    }
    assert 'route="/v1/events",status="401"' in counted and 'route="/v1/events",status="422"' in counted
    assert 'route="/v1/recommend",status="413"' in counted
    assert 'route="/api/recommend/{user_id}",status="422"' in counted
    assert 'route="/api/recommend/{user_id}",status="200"' in counted
    assert 'route="unmatched",status="404"' in counted
    assert not any(long_id in label or "u1" in label for label in counted)  # never a raw path


def test_items_and_users_take_one_object_refuse_unknown_fields_and_keep_client_ids(
    served: tuple[TestClient, Runtime, dict],
) -> None:
    client, runtime, _ = served
    item = {
        "item_id": "new-1",
        "attributes": {"topic": "t1"},
        "event_id": "client-7",
        "timestamp": "2026-11-30T10:00:00Z",
    }
    first = client.post("/v1/items", json=item, headers=KEY)
    assert first.status_code == 200 and first.json()["accepted"] == 1
    retry = client.post("/v1/items", json=[item], headers=KEY).json()
    assert (retry["accepted"], retry["duplicates"]) == (0, 1)  # the client's id: a retry is a duplicate
    upserted = [e for e in runtime.bus.replay(kinds=["item"]) if e.event_id == "client-7"]
    assert len(upserted) == 1 and upserted[0].timestamp.isoformat() == "2026-11-30T10:00:00+00:00"
    unknown = client.post("/v1/items", json={"item_id": "x", "colour": "red"}, headers=KEY)
    assert unknown.status_code == 422 and "colour" in unknown.text
    user = client.post("/v1/users", json={"user_id": "new-u", "attributes": {"age": 30}}, headers=KEY)
    assert user.status_code == 200 and user.json()["accepted"] == 1
    assert client.post("/v1/users", json={"user_id": "x", "name": "y"}, headers=KEY).status_code == 422


def test_the_docs_page_loads_its_assets_from_the_api_itself(served: tuple[TestClient, Runtime, dict]) -> None:
    """/docs works offline: the page names no external host, and every asset it loads is served."""
    import re

    client = served[0]
    page = client.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text) + re.findall(r"url: '([^']+)'", page.text)
    assert assets and not [a for a in assets if a.startswith(("http://", "https://", "//"))]
    for asset in assets:
        answer = client.get(asset)
        assert answer.status_code == 200 and len(answer.content) > 100, asset


def test_an_item_reads_back_and_feeds_carry_the_attributes_asked_for(
    served: tuple[TestClient, Runtime, dict],
) -> None:
    client, runtime, _ = served
    item = {"item_id": "i3", "attributes": {"topic": "t9", "colour": "red"}, "text": "A red thing"}
    assert client.post("/v1/items", json=item, headers=KEY).json()["accepted"] == 1
    assert runtime.worker is not None
    runtime.worker.poll()  # applied (written to the store with the next snapshot)
    got = client.get("/v1/items/i3", headers=KEY)
    assert got.status_code == 200 and got.json()["attributes"] == {"topic": "t9", "colour": "red"}
    assert got.json()["text"] == "A red thing"
    runtime.worker.checkpoint()  # written: read back from the store now
    assert (
        runtime.worker.items == {} and client.get("/v1/items/i3", headers=KEY).json()["text"] == "A red thing"
    )
    assert client.get("/v1/items/never", headers=KEY).status_code == 404
    feed = client.get(
        "/v1/recommend", params={"user_id": "u4", "n": 8, "fields": "topic,text"}, headers=KEY
    ).json()
    assert len(feed["items"]) == 8 and all(set(i["attributes"]) <= {"topic", "text"} for i in feed["items"])
    assert any("topic" in i["attributes"] for i in feed["items"])  # the simulator's items have topics
    posted = client.post(
        "/v1/recommend", json={"user_id": "u4", "n": 3, "fields": ["topic"]}, headers=KEY
    ).json()
    assert all(set(i["attributes"]) <= {"topic"} for i in posted["items"])
    plain = client.get("/v1/recommend", params={"user_id": "u4", "n": 3}, headers=KEY).json()
    assert all("attributes" not in i for i in plain["items"])
    too_many = ",".join(f"f{i}" for i in range(17))
    assert (
        client.get("/v1/recommend", params={"user_id": "u4", "fields": too_many}, headers=KEY).status_code
        == 422
    )


def test_the_openapi_document_names_the_key_scheme_the_limits_and_the_event_schemas(
    served: tuple[TestClient, Runtime, dict],
) -> None:
    spec = served[0].get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["APIKeyHeader"] == {
        "type": "apiKey",
        "description": "One of [serving] api_keys (recstack-local by default).",
        "in": "header",
        "name": "X-API-Key",
    }
    assert spec["paths"]["/v1/recommend"]["get"]["security"] == [{"APIKeyHeader": []}]
    assert {"Event", "Impression", "Engagement", "ItemUpsert", "UserUpsert"} <= set(
        spec["components"]["schemas"]
    )
    n = next(p for p in spec["paths"]["/v1/recommend"]["get"]["parameters"] if p["name"] == "n")
    assert n["schema"]["anyOf"][0]["maximum"] == 200  # [serving] max_n
    responses = spec["paths"]["/v1/events"]["post"]["responses"]
    assert {"200", "400", "401", "413", "422", "503"} <= set(responses)


def test_experiment_arms_and_the_holdout_are_served_side_by_side(
    feed_world: tuple[World, Path, Path], feed_log: ParquetEventLog, tmp_path: Path
) -> None:
    """An arm pinned to another registered version serves it, an arm's settings apply to its users
    only, holdout users get the holdout's settings, and each impression logs its variant; an arm
    naming a version the registry lacks refuses the load with the reason."""
    from recstack.config import ExperimentsConfig
    from recstack.experiments.assignment import Assigner
    from recstack.registry.mlflow_registry import RegistryError

    bundle = feed_world[2]

    def registry(ref: str) -> tuple[str, Path]:
        if ref != "2":
            raise RegistryError(f"model 'recstack-feed' has no version {ref}")
        return "2", bundle

    experiments = ExperimentsConfig.model_validate(
        {
            "holdout": 0.2,
            "holdout_serving": {"explore_slots": 0},
            "tests": [
                {
                    "name": "v2",
                    "arms": [{"name": "v1"}, {"name": "v2", "model": "2", "serving": {"explore_slots": 5}}],
                }
            ],
        }
    )
    settings = feed_settings(tmp_path).model_copy(update={"experiments": experiments})
    runtime = Runtime(
        settings, feed_log, store=MemoryStore(), bundle_source=lambda: ("1", bundle), model_source=registry
    )
    assert runtime.worker is not None
    runtime.worker.drain()
    runtime.start()
    assigner = Assigner(experiments)
    with TestClient(create_app(runtime)) as client:
        seen = set()
        for u in range(40):
            body = client.get("/v1/recommend", params={"user_id": f"u{u}", "n": 10}, headers=KEY).json()
            variant = assigner.assign(f"u{u}")
            explored = sum(i["explore"] for i in body["items"])
            if variant.holdout:
                assert body["experiments"] == {"holdout": "holdout"} and explored == 0
            elif dict(variant.arms)["v2"] == "v2":
                assert body["model_version"] == "2" and body["experiments"] == {"v2": "v2"}
            else:
                assert body["model_version"] == "1" and body["experiments"] == {"v2": "v1"}
            seen.add(json.dumps(body["experiments"], sort_keys=True))
        assert len(seen) == 3  # all three variants were served
    runtime.close()  # stops the flush thread, then writes what it left: the log has every impression
    labels = feed_log.table(kinds=["impression"])["experiment_arm"].to_pylist()
    assert {label for label in labels if label is not None} == {
        '{"holdout": "holdout"}', '{"v2": "v1"}', '{"v2": "v2"}'
    }  # fmt: skip

    broken = experiments.model_copy(
        update={"tests": [experiments.tests[0].model_copy(update={"arms": [
            experiments.tests[0].arms[0], experiments.tests[0].arms[1].model_copy(update={"model": "9"})
        ]})]}
    )  # fmt: skip
    settings = feed_settings(tmp_path / "b").model_copy(update={"experiments": broken})
    runtime = Runtime(
        settings, feed_log, store=MemoryStore(), bundle_source=lambda: ("1", bundle), model_source=registry
    )
    assert not runtime.reload()
    assert runtime.pipeline is None and "names model '9'" in (runtime.reload_error or "")
    assert "no version 9" in (runtime.reload_error or "")
    runtime.close()
