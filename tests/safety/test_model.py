"""`recstack safety train` registers the classifier; POST /v1/moderate serves its champion with no
training code, answers every kind of text, and says why when there is no model or it is damaged."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from recstack.cli import app
from recstack.config import load_settings
from recstack.events.parquet import ParquetEventLog
from recstack.features.stores import MemoryStore
from recstack.serving.api import Runtime, create_app, registry_source

from ..conftest import data_path

KEY = {"X-API-Key": "recstack-local"}


def test_train_register_and_moderate_over_http(tmp_path: Path) -> None:
    data = data_path("davidson_hate_offensive")
    env = {
        "RECSTACK_PATHS__STATE_DIR": str(tmp_path / "state"),
        "RECSTACK_SAFETY__DATA": str(data),
        "RECSTACK_SAFETY__MAX_TRAIN_ROWS": "3000",
    }
    trained = CliRunner().invoke(app, ["safety", "train"], env=env)
    assert trained.exit_code == 0, trained.output
    assert "registered recstack-safety version 1; promoted to champion" in trained.output
    settings = load_settings(None, env)
    runtime = Runtime(
        settings,
        ParquetEventLog(tmp_path / "events"),
        store=MemoryStore(),
        safety_source=registry_source(settings, settings.safety.model_name),
    )
    client = TestClient(create_app(runtime))
    texts = ["have a lovely day with your family", "you stupid bitch", "", "🙂🙂🙂", "x" * 5_000, "a\x00b"]
    answer = client.post("/v1/moderate", json={"texts": texts}, headers=KEY)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_version"] == "1" and len(body["results"]) == len(texts)
    kind, insult = body["results"][0], body["results"][1]
    # most of the tweets are offensive, so even kind words score high; the insult scores higher
    assert insult["label"] in ("offensive", "hate") and insult["decision"] == "block"
    assert insult["score"] > kind["score"], (insult, kind)
    assert [r["truncated"] for r in body["results"]] == [False, False, False, False, True, False]
    assert all(r["decision"] in ("block", "review", "allow") for r in body["results"])
    assert client.post("/v1/moderate", json={"texts": []}, headers=KEY).status_code == 422
    assert client.post("/v1/moderate", json={"texts": ["a"] * 101}, headers=KEY).status_code == 422
    assert client.post("/v1/moderate", json={"texts": ["a"], "lang": "en"}, headers=KEY).status_code == 422


def test_no_model_or_a_damaged_one_is_a_503_that_says_why(tmp_path: Path) -> None:
    settings = load_settings(None, {"RECSTACK_PATHS__STATE_DIR": str(tmp_path)})
    none = Runtime(
        settings, ParquetEventLog(tmp_path / "e1"), store=MemoryStore(), safety_source=lambda: None
    )
    answer = TestClient(create_app(none)).post("/v1/moderate", json={"texts": ["hi"]}, headers=KEY)
    assert answer.status_code == 503 and "recstack safety train" in answer.json()["detail"]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bundle.json").write_text('{"format": 1, "block_at": 0.5, "review_at": 0.3}')
    (broken / "classifier.joblib").write_bytes(b"not a pickle")
    damaged = Runtime(
        settings, ParquetEventLog(tmp_path / "e2"), store=MemoryStore(), safety_source=lambda: ("3", broken)
    )
    answer = TestClient(create_app(damaged)).post("/v1/moderate", json={"texts": ["hi"]}, headers=KEY)
    assert answer.status_code == 503 and "could not be loaded" in answer.json()["detail"]
    assert "classifier.joblib" in answer.json()["detail"] or "broken" in answer.json()["detail"]
