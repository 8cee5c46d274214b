"""Items are moderated as they are ingested (POST /v1/items, /v1/events, recstack import): the score,
the label and the decision become attributes of the logged upsert, the feed state reads the decision,
an item whose text could not be scored is held back and says why, and `recstack safety rescore`
scores the catalog again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from recstack.config import load_settings
from recstack.events.parquet import ParquetEventLog
from recstack.features.stores import MemoryStore
from recstack.safety.classifier import TfidfLogistic
from recstack.safety.items import (
    BLOCK,
    REVIEW,
    UNSCORED,
    IngestScorer,
    ItemScorer,
    rescore_catalog,
    safety_code,
    score_table,
)
from recstack.safety.model import SafetyModel
from recstack.schema import events_to_table, parse_event
from recstack.serving.api import Runtime, create_app
from recstack.serving.state import FeedState

KEY = {"X-API-Key": "recstack-local"}
FIELDS = ("text", "title", "description")


@pytest.fixture(scope="module")
def model() -> SafetyModel:
    """A real TF-IDF classifier fitted on a made-up corpus where 'zzhate' marks hate, 'zzrude'
    offence and neither marks the rest: its decisions on such words are sure."""
    rng = np.random.default_rng(0)
    words = ["garden", "coffee", "river", "music", "morning", "friends", "blue", "walk"]
    texts, labels = [], []
    for label, marker in ((0, "zzhate"), (1, "zzrude"), (2, "")):
        for _ in range(60):
            text = " ".join(rng.choice(words, 4)) + (f" {marker}" if marker else "")
            texts.append(text)
            labels.append(label)
    classifier = TfidfLogistic(seed=0).fit(texts, np.array(labels))
    return SafetyModel(classifier, block_at=0.9, review_at=0.5, meta={"model": "tfidf_lr"})


def _scorer(model: SafetyModel) -> ItemScorer:
    return ItemScorer(model, "recstack-safety/1", FIELDS)


def test_item_records_get_score_label_and_decision(model: SafetyModel) -> None:
    records: list[dict[str, object]] = [
        {"kind": "item", "item_id": "a", "text": "river walk zzrude"},
        {"kind": "item", "item_id": "b", "attributes": {"title": "coffee morning", "description": "friends"}},
        {"kind": "item", "item_id": "c", "attributes": {"caption": "zzhate zzhate"}},  # not a text field
        {"kind": "item", "item_id": "d", "text": "garden music", "attributes": {"unsafe_score": 0.95}},
        {"kind": "click", "item_id": "a", "text": "zzhate"},  # not an upsert
        {"kind": "item", "item_id": "e", "text": "   "},  # empty after trimming: nothing to score
        {
            "kind": "item",
            "item_id": "f",
            "text": "🙂🙂🙂 \x07 river zzhate",
        },  # emoji and a control character
        {"kind": "item", "item_id": "g", "attributes": "not an object"},  # left for validation to reject
    ]
    assert _scorer(model).score_records(records) == 4
    a, b, c, d, click, e, f, g = (r.get("attributes") for r in records)
    assert isinstance(a, dict) and a["unsafe_label"] == "offensive" and a["unsafe_decision"] == "block"
    assert a["unsafe_model"] == "recstack-safety/1" and a["unsafe_score"] >= 0.9
    assert isinstance(b, dict) and b["unsafe_label"] == "neither" and b["unsafe_decision"] == "allow"
    assert b["title"] == "coffee morning"  # the item's own attributes are kept
    assert c == {"caption": "zzhate zzhate"}  # text outside [safety] text_fields is not read
    # the client's own score is kept apart, and the higher of the two decides
    assert isinstance(d, dict) and d["client_unsafe_score"] == 0.95 and d["unsafe_score"] == 0.95
    assert d["unsafe_label"] == "neither" and d["unsafe_decision"] == "block"
    assert click is None and e is None and g == "not an object"
    assert isinstance(f, dict) and f["unsafe_label"] == "hate"


def test_a_rescore_keeps_the_clients_score_not_the_last_models(model: SafetyModel) -> None:
    record: dict[str, object] = {"kind": "item", "item_id": "d", "text": "garden zzrude"}
    _scorer(model).score_records([record])
    first = dict(record["attributes"])  # type: ignore[call-overload]
    assert first["unsafe_decision"] == "block" and "client_unsafe_score" not in first
    record["text"] = "garden music"  # the model's earlier score must not stick
    _scorer(model).score_records([record])
    assert record["attributes"]["unsafe_decision"] == "allow"  # type: ignore[index]


def test_the_state_reads_the_decision_and_flags_text_no_model_scored() -> None:
    scored = {"unsafe_model": "m/1", "unsafe_score": 0.7, "unsafe_decision": "review"}
    assert safety_code("t", scored, FIELDS, 0.5) == (REVIEW, 0.7)
    assert safety_code(None, {"title": "a post"}, FIELDS, 0.5) == (UNSCORED, 0.0)
    assert safety_code("a post", {"unsafe": True}, FIELDS, 0.5) == (BLOCK | UNSCORED, 1.0)
    assert safety_code(None, {"caption": "a post"}, FIELDS, 0.5) == (0, 0.0)


def test_import_batches_are_scored_and_say_why_when_there_is_no_model(
    model: SafetyModel, tmp_path: Path
) -> None:
    events = [
        parse_event(
            {"event_id": "u1", "kind": "item", "timestamp": 0, "item_id": "a", "text": "blue zzhate"}
        ),
        parse_event({"event_id": "u2", "kind": "user", "timestamp": 0, "user_id": "u"}),
    ]
    table, scored = score_table(events_to_table(events), _scorer(model))
    attributes = table.column("attributes").to_pylist()
    assert scored == 1 and json.loads(attributes[0])["unsafe_label"] == "hate" and attributes[1] is None
    settings = load_settings(None, {"RECSTACK_PATHS__STATE_DIR": str(tmp_path)})
    passing = IngestScorer(settings)  # an empty registry: no model
    out = passing(events_to_table(events))
    assert out.column("attributes").to_pylist()[0] is None
    assert passing.unscored == 1 and not passing.held_back() and "no safety model" in str(passing.problem)


def _runtime(tmp_path: Path, folder: Path, env: dict[str, str] | None = None) -> Runtime:
    settings = load_settings(None, {"RECSTACK_PATHS__STATE_DIR": str(tmp_path)} | (env or {}))
    return Runtime(
        settings,
        ParquetEventLog(tmp_path / "events"),
        store=MemoryStore(),
        safety_source=lambda: ("1", folder),
    )


def test_ingest_scores_items_and_a_damaged_model_holds_them_back(model: SafetyModel, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    model.save(folder)
    runtime = _runtime(tmp_path, folder)
    runtime.check_safety()
    client = TestClient(create_app(runtime))
    posted = client.post("/v1/items", json={"item_id": "bad", "text": "river zzhate"}, headers=KEY)
    assert posted.status_code == 200 and posted.json()["accepted"] == 1
    batch = [
        {
            "event_id": "e1",
            "kind": "item",
            "timestamp": 1,
            "item_id": "fine",
            "attributes": {"title": "coffee"},
        },
        {"event_id": "e2", "kind": "item", "timestamp": 1, "item_id": "plain"},
    ]
    assert client.post("/v1/events", json=batch, headers=KEY).json()["accepted"] == 2
    assert runtime.worker is not None
    runtime.worker.drain()
    state = runtime.state
    codes = {i: int(state.safety.values[state.item_index[i]]) for i in ("bad", "fine", "plain")}
    assert codes == {"bad": BLOCK, "fine": 0, "plain": 0}
    record = client.get("/v1/items/bad", headers=KEY).json()
    assert record["attributes"]["unsafe_decision"] == "block"  # logged with the upsert

    (folder / "classifier.joblib").write_bytes(b"damaged")
    damaged = _runtime(tmp_path / "second", folder)
    damaged.check_safety()
    client = TestClient(create_app(damaged))
    assert (
        client.post("/v1/items", json={"item_id": "new", "text": "garden"}, headers=KEY).json()["accepted"]
        == 1
    )
    assert damaged.worker is not None
    damaged.worker.drain()
    assert damaged.state.safety.values[damaged.state.item_index["new"]] == UNSCORED  # accepted, held back
    assert damaged.hold_unscored()
    safety = client.get("/health/ready").json()["safety"]
    assert safety["items"]["unscored"] == 1 and safety["unscored_held_back"]
    assert "could not be loaded" in safety["error"] and "recstack safety rescore" in safety["note"]


def test_without_a_model_items_pass_unscored_unless_required(tmp_path: Path) -> None:
    settings = load_settings(None, {"RECSTACK_PATHS__STATE_DIR": str(tmp_path)})
    runtime = Runtime(
        settings, ParquetEventLog(tmp_path / "e"), store=MemoryStore(), safety_source=lambda: None
    )
    runtime.check_safety()
    assert not runtime.hold_unscored()
    required = load_settings(
        None, {"RECSTACK_PATHS__STATE_DIR": str(tmp_path), "RECSTACK_SAFETY__SCORE_ITEMS": "required"}
    )
    strict = Runtime(
        required, ParquetEventLog(tmp_path / "f"), store=MemoryStore(), safety_source=lambda: None
    )
    strict.check_safety()
    assert strict.hold_unscored()


def test_rescore_scores_the_catalog_once_per_model_version(model: SafetyModel, tmp_path: Path) -> None:
    log = ParquetEventLog(tmp_path / "events")
    created = "2026-01-01T00:00:00+00:00"
    log.append(
        [
            {"event_id": "a1", "kind": "item", "timestamp": 10, "item_id": "a", "text": "old text"},
            {
                "event_id": "a2",
                "kind": "item",
                "timestamp": 20,
                "item_id": "a",
                "text": "blue zzrude",
                "created_at": created,
            },
            {
                "event_id": "b1",
                "kind": "item",
                "timestamp": 10,
                "item_id": "b",
                "attributes": {"title": "music"},
            },
            {"event_id": "c1", "kind": "item", "timestamp": 10, "item_id": "c"},  # no text
        ]
    )
    done: list[tuple[int, int]] = []
    first = rescore_catalog(log, _scorer(model), progress=lambda n, total: done.append((n, total)))
    assert (first.considered, first.scored) == (2, 2) and first.decisions == {"block": 1, "allow": 1}
    assert done == [(2, 2)]
    again = rescore_catalog(log, _scorer(model))
    assert (again.considered, again.scored) == (2, 0)  # the champion scored them already
    state = FeedState()
    state.apply(log.replay())
    assert int(state.safety.values[state.item_index["a"]]) == BLOCK
    assert state.safety_counts() == {"allow": 2, "review": 0, "block": 1, "unscored": 0}
    rescored = [e for e in log.replay(kinds=["item"]) if e.event_id.startswith("item-rescore-")]
    a = next(e for e in rescored if e.item_id == "a")  # type: ignore[union-attr]
    assert a.created_at is not None and a.created_at.isoformat() == created  # type: ignore[union-attr]
    forced = rescore_catalog(log, _scorer(model), everything=True)
    assert forced.scored == 2 and log.count() == 6  # the same content: the same ids, nothing appended
    assert pa is not None


def test_the_score_is_a_feature_with_the_same_value_offline_and_online(model: SafetyModel) -> None:
    """An `attribute` feature on unsafe_score reads the logged upsert: materialized offline at an
    impression's time it equals what the feed state serves then (and the rescored value after)."""
    from recstack.features.definitions import Attribute
    from recstack.features.offline import materialize

    feature = Attribute(name="item_unsafe", entity="item", field="unsafe_score", kind="dense")
    records: list[dict[str, object]] = [
        {"event_id": "a1", "kind": "item", "timestamp": 10, "item_id": "a", "text": "river zzhate"},
        {"event_id": "b1", "kind": "item", "timestamp": 10, "item_id": "b", "text": "garden music"},
    ]
    _scorer(model).score_records(records)
    later: dict[str, object] = {
        "event_id": "a2",
        "kind": "item",
        "timestamp": 30,
        "item_id": "a",
        "text": "coffee",
    }
    _scorer(model).score_records([later])
    events = [parse_event(r) for r in [*records, later]]
    rows = pa.table(
        {
            "timestamp": pa.array([20_000_000, 20_000_000, 40_000_000], pa.timestamp("us", tz="UTC")),
            "user_id": ["u", "u", "u"],
            "item_id": ["a", "b", "a"],
        }
    )
    offline = materialize(events_to_table(events), rows, [feature]).column("item_unsafe").to_pylist()
    online = []
    for upto, item in ((2, "a"), (2, "b"), (3, "a")):
        state = FeedState(features=[feature])
        state.apply(events[:upto])
        read = state.features.read("u", np.array([state.item_index[item]]), 0)
        online.append(float(read["item_unsafe"][0]))
    logged = [r["attributes"]["unsafe_score"] for r in (*records, later)]  # type: ignore[index]
    assert offline == online == [logged[0], logged[1], logged[2]]
    assert offline[0] > 0.5 > offline[2]  # the rescored text is the one served after


def test_a_new_champion_that_cannot_load_leaves_the_last_one_scoring(
    model: SafetyModel, tmp_path: Path
) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    model.save(good)
    bad.mkdir()
    source = {"champion": ("1", good)}
    settings = load_settings(None, {"RECSTACK_PATHS__STATE_DIR": str(tmp_path)})
    runtime = Runtime(
        settings,
        ParquetEventLog(tmp_path / "e"),
        store=MemoryStore(),
        safety_source=lambda: source["champion"],
    )
    runtime.check_safety()
    source["champion"] = ("2", bad)  # promoted, but its files are missing
    runtime.check_safety()
    version, _ = runtime.safety_model()
    assert version == "1" and "safety model 2 could not be loaded" in str(runtime.safety_status()["error"])
    records: list[dict[str, object]] = [{"kind": "item", "item_id": "a", "text": "river zzhate"}]
    runtime.score_items(records)
    assert records[0]["attributes"]["unsafe_model"] == "recstack-safety/1"  # type: ignore[index]


def test_a_client_cannot_pass_its_item_off_as_scored(tmp_path: Path) -> None:
    """An upsert claiming a model's decision is stripped of it: with a registered model that fails,
    the item is held back like any unscored one."""
    (tmp_path / "broken").mkdir()
    runtime = _runtime(tmp_path, tmp_path / "broken")
    runtime.check_safety()
    forged = {"unsafe_model": "recstack-safety/9", "unsafe_decision": "allow", "unsafe_label": "neither"}
    client = TestClient(create_app(runtime))
    body = {"item_id": "sneaky", "text": "zzhate", "attributes": forged | {"unsafe_score": 0.1}}
    assert client.post("/v1/items", json=body, headers=KEY).json()["accepted"] == 1
    assert runtime.worker is not None
    runtime.worker.drain()
    state = runtime.state
    assert int(state.safety.values[state.item_index["sneaky"]]) == UNSCORED
    record = client.get("/v1/items/sneaky", headers=KEY).json()
    assert record["attributes"] == {"unsafe_score": 0.1}
    table = events_to_table(
        [parse_event({"event_id": "x", "kind": "item", "timestamp": 0, "item_id": "t", "attributes": forged})]
    )
    settings = load_settings(None, {"RECSTACK_PATHS__STATE_DIR": str(tmp_path / "cli")})
    assert IngestScorer(settings)(table).column("attributes").to_pylist() == [None]
