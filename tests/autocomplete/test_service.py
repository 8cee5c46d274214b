"""GET /v1/autocomplete over the log's query events: counted once, suggestible within a refresh,
personal boosts, one-edit typos, the block list and the safety check, bad input answered."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from recstack.autocomplete.service import Autocomplete
from recstack.config import AutocompleteConfig, load_settings
from recstack.events.parquet import ParquetEventLog
from recstack.features.stores import MemoryStore
from recstack.schema import events_to_table, parse_event
from recstack.serving.api import Runtime, create_app

KEY = {"X-API-Key": "recstack-local"}
NOW = int(time.time()) - 86_400  # a day ago: inside the window the log accepts


def queries(*rows: tuple[str, str, str | None, float]) -> list[dict[str, object]]:
    return [{"event_id": e, "kind": "query", "timestamp": t, "query": q, "user_id": u} for e, q, u, t in rows]


def table(rows: list[dict[str, object]]) -> object:
    return events_to_table([parse_event(r) for r in rows])


def test_counts_once_ranks_by_decayed_count_and_boosts_the_users_own() -> None:
    ac = Autocomplete(AutocompleteConfig(half_life_s=3_600, typo_below=0))
    history = queries(
        ("q1", "Star Wars", "u1", NOW),
        ("q2", "star wars", "u2", NOW),
        ("q3", "STAR TREK", "u2", NOW),
        ("q4", "star trek", "u3", NOW - 7_200),  # two half-lives old: a quarter
        ("q5", "the", "u1", NOW),  # only stop words: not counted
    )
    assert ac.observe(table(history)) == 4
    assert ac.observe(table(history)) == 0  # the same ids again: counted once
    ac.rebuild()
    assert [s.text for s in ac.suggest("sta")] == ["star wars", "star trek"]
    assert ac.suggest("the") == []
    # u3 searched star trek: 1.25 x (1 + 1 x 1) = 2.5 beats star wars's 2
    assert [s.text for s in ac.suggest("sta", "u3")] == ["star trek", "star wars"]
    assert ac.suggest("sta", n=1)[0].text == "star wars"


def test_one_edit_typos_blocked_words_and_the_moderator() -> None:
    cfg = AutocompleteConfig(half_life_s=86_400, typo_below=2, block_list=["Badword"])
    checked: list[str] = []

    def moderator(texts: list[str]) -> list[bool]:
        checked.extend(texts)
        return ["hateful" not in t for t in texts]

    ac = Autocomplete(cfg, moderator)
    ac.observe(
        table(
            queries(
                ("a", "godfather", None, NOW),
                ("b", "godfather part ii", None, NOW),
                ("c", "goodfellas", None, NOW),
                ("d", "hateful eight", None, NOW),
                ("e", "badword film", None, NOW),
                ("f", "hat shop", None, NOW),
            )
        )
    )
    ac.rebuild()
    fixed = ac.suggest("gdfather")  # a letter missing: no completion of its own
    assert [s.text for s in fixed] == ["godfather", "godfather part ii"] and all(s.corrected for s in fixed)
    assert [s.text for s in ac.suggest("god")] == ["godfather", "godfather part ii"]  # two: no typo pass
    assert [s.text for s in ac.suggest("ha")] == ["hat shop"]  # the moderator refused the other
    assert ac.suggest("badw") == []  # the block list, with or without a model
    before = len(checked)
    ac.suggest("ha")
    assert len(checked) == before  # answers are remembered per text


def test_the_route_serves_what_the_log_holds_and_answers_bad_input(tmp_path: Path) -> None:
    log = ParquetEventLog(tmp_path / "events")
    log.append(queries(("h1", "star wars", "u1", NOW), ("h2", "star wars", "u2", NOW)))
    settings = load_settings(None, {"RECSTACK_PATHS__STATE_DIR": str(tmp_path)})
    runtime = Runtime(settings, log, store=MemoryStore())
    assert runtime.worker is not None
    runtime.worker.drain()  # a fresh state: the worker replays the log, autocomplete counts it
    try:
        client = TestClient(create_app(runtime))
        body = client.get("/v1/autocomplete", params={"q": "Star "}, headers=KEY).json()
        assert body["prefix"] == "star " and [s["text"] for s in body["suggestions"]] == ["star wars"]
        # a new query posted now is suggested as soon as the worker has read it
        new = queries(("n1", "stardust", "u3", NOW + 5), ("n2", "stardust", "u3", NOW + 6))
        new += queries(("n3", "stardust", "u3", NOW + 7))
        assert client.post("/v1/events", json=new, headers=KEY).json()["accepted"] == 3
        runtime.worker.poll()
        top = client.get("/v1/autocomplete", params={"q": "star", "n": 1}, headers=KEY).json()
        assert [s["text"] for s in top["suggestions"]] == ["stardust"]
        for q in ("", " \t ", "\x00\x01", "мир 🙂", "zzzz"):
            answer = client.get("/v1/autocomplete", params={"q": q}, headers=KEY)
            assert answer.status_code == 200 and isinstance(answer.json()["suggestions"], list)
        for params in ({"q": "x" * 101}, {"q": "s", "n": 0}, {"q": "s", "n": 10_000}):
            assert client.get("/v1/autocomplete", params=params, headers=KEY).status_code == 422
        assert client.get("/v1/autocomplete", params={"q": "s"}).status_code == 401
    finally:
        runtime.close()


def test_an_empty_log_completes_nothing(tmp_path: Path) -> None:
    settings = load_settings(None, {"RECSTACK_PATHS__STATE_DIR": str(tmp_path)})
    runtime = Runtime(settings, ParquetEventLog(tmp_path / "e"), store=MemoryStore(), in_process_worker=False)
    runtime.autocomplete.load_history(runtime.bus)
    client = TestClient(create_app(runtime))
    assert client.get("/v1/autocomplete", params={"q": "a"}, headers=KEY).json()["suggestions"] == []


def test_suggestions_wait_when_a_registered_safety_model_cannot_check_them(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    log = ParquetEventLog(tmp_path / "events")
    log.append(queries(("h1", "star wars", "u1", NOW)))
    settings = load_settings(None, {"RECSTACK_PATHS__STATE_DIR": str(tmp_path)})
    runtime = Runtime(
        settings,
        log,
        store=MemoryStore(),
        in_process_worker=False,
        safety_source=lambda: ("1", tmp_path / "broken"),
    )
    runtime.check_safety()
    runtime.autocomplete.load_history(runtime.bus)
    answer = TestClient(create_app(runtime)).get("/v1/autocomplete", params={"q": "st"}, headers=KEY)
    assert answer.status_code == 503 and "could not be loaded" in answer.json()["detail"]


@pytest.fixture(autouse=True)
def _quiet_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def test_a_resumed_worker_counts_the_history_once(tmp_path: Path) -> None:
    """The API starts on a stored snapshot: the history is read from the log, and the deliveries the
    worker had not acknowledged come again without being counted twice."""
    log = ParquetEventLog(tmp_path / "events")
    log.append(queries(("h1", "star wars", "u1", NOW), ("h2", "star trek", "u1", NOW)))
    settings = load_settings(None, {"RECSTACK_PATHS__STATE_DIR": str(tmp_path)})
    store = MemoryStore()
    first = Runtime(settings, log, store=store)
    assert first.worker is not None
    first.worker.drain()  # snapshot written, deliveries acknowledged
    log.append(queries(("h3", "star wars", "u2", NOW + 1)))  # not acknowledged by anyone yet
    second = Runtime(settings, log, store=store)
    assert second.worker is not None and second.synced is not None
    second.autocomplete.load_history(log)  # what start() does on a resumed state
    second.worker.drain()  # delivers h3 again
    scores = dict((s.text, s.score) for s in second.autocomplete.suggest("star"))
    assert scores["star wars"] == pytest.approx(2 * scores["star trek"], rel=1e-4)


def test_a_teams_search_log_comes_in_through_recstack_import(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from recstack.cli import app

    day = NOW - 3_600
    (tmp_path / "searches.csv").write_text(
        "user_id,query,timestamp\n"
        f"u1,Star Wars,{day}\n"
        f"u2,star wars,{day + 1}\n"
        f",star trek,{day + 2}\n"  # no user: still a query
        f"u3,,{day + 3}\n"  # no text
        f"u4,stardust,yesterday\n"  # no time
    )
    env = {"RECSTACK_PATHS__STATE_DIR": str(tmp_path / "state")}
    result = CliRunner().invoke(app, ["import", "--queries", str(tmp_path / "searches.csv")], env=env)
    assert result.exit_code == 1, result.output  # bad lines: reported, the rest imported
    out = " ".join(result.output.split())
    assert "searches.csv: 5 rows -> query 3; accepted 3, duplicates 0, bad lines 2" in out
    assert "line 5: column 'query' (the query) is missing or empty" in out
    assert "line 6: column 'timestamp': 'yesterday' is not a time in s" in out
    again = CliRunner().invoke(app, ["import", "--queries", str(tmp_path / "searches.csv")], env=env)
    assert "accepted 0, duplicates 3" in " ".join(again.output.split())
    settings = load_settings(None, env)
    runtime = Runtime(settings, ParquetEventLog(settings.paths.state_dir / "events"), store=MemoryStore())
    assert runtime.worker is not None
    runtime.worker.drain()
    assert [s.text for s in runtime.autocomplete.suggest("st")] == ["star wars", "star trek"]


def topic_history() -> list[dict[str, object]]:
    """Two queries searched alike, whose results were clicked in two topics; u9 reads the feed's
    'drama' items (three clicks), u8 engaged nothing."""
    rows: list[dict[str, object]] = [
        {
            "event_id": f"item-{i}",
            "kind": "item",
            "timestamp": NOW - 60,
            "item_id": i,
            "attributes": {"topic": t},
        }
        for i, t in (("i1", "space"), ("i2", "drama"), ("i3", "drama"))
    ]
    for n, (query, item) in enumerate((("star wars", "i1"), ("star trek", "i2")) * 2):
        request = f"search-{n}"
        rows.append({"event_id": f"q{n}", "kind": "query", "timestamp": NOW, "query": query,
                     "user_id": f"s{n}", "request_id": request})  # fmt: skip
        rows.append({"event_id": f"c{n}", "kind": "click", "timestamp": NOW + 1, "user_id": f"s{n}",
                     "item_id": item, "request_id": request})  # fmt: skip
    rows += [
        {"event_id": f"f{n}", "kind": "click", "timestamp": NOW + 2, "user_id": "u9", "item_id": item}
        for n, item in enumerate(("i2", "i3", "i3"))
    ]
    return rows


def test_the_topic_boost_raises_the_queries_whose_results_the_user_engages_with() -> None:
    ac = Autocomplete(AutocompleteConfig(half_life_s=3_600, typo_below=0, topic_weight=1.0))
    assert ac.observe(table(topic_history())) == 4
    plain = {s.text: s.score for s in ac.suggest("star", "u8")}
    assert plain["star wars"] == pytest.approx(plain["star trek"], rel=1e-9)  # searched alike
    # u9's last three engagements are all drama, and every click on star trek's results was drama:
    # affinity 1, so star trek x (1 + 1 x 1); star wars's results were space: unchanged
    boosted = {s.text: s.score for s in ac.suggest("star", "u9")}
    assert list(boosted) == ["star trek", "star wars"]
    assert boosted["star trek"] == pytest.approx(2 * plain["star trek"], rel=1e-9)
    assert boosted["star wars"] == pytest.approx(plain["star wars"], rel=1e-9)
    assert {s.text: s.score for s in ac.suggest("star", "u9", topic_boost=False)} == plain
    # a searcher who clicked one space result and nothing else: star wars x 2
    assert ac.suggest("star", "s0")[0].text == "star wars"
    off = Autocomplete(AutocompleteConfig(half_life_s=3_600, typo_below=0, topic_weight=0.0))
    off.observe(table(topic_history()))
    assert off.item_topic == {} and off.searches == {}  # nothing kept for a boost that is off
    assert {s.text: s.score for s in off.suggest("star", "u9")} == pytest.approx(plain, rel=1e-9)


def test_the_history_read_at_start_holds_the_topics_and_redeliveries_count_once(tmp_path: Path) -> None:
    log = ParquetEventLog(tmp_path / "events")
    log.append(topic_history())
    ac = Autocomplete(AutocompleteConfig(half_life_s=3_600, typo_below=0, topic_weight=1.0))
    assert ac.load_history(log) == 4
    plain = {s.text: s.score for s in ac.suggest("star", "u9", topic_boost=False)}
    assert next(iter(ac.suggest("star", "u9"))).text == "star trek"
    # the worker delivers u9's first click again, then a new one on a space item: its topics are
    # drama x 3 and space (a click counted twice would make it drama x 4 and space)
    again = [parse_event(r) for r in topic_history() if r["event_id"] == "f0"]
    ac.observe_events(again)
    ac.observe_events([parse_event({"event_id": "f9", "kind": "click", "timestamp": NOW + 3,
                                    "user_id": "u9", "item_id": "i1"})])  # fmt: skip
    boosted = {s.text: s.score for s in ac.suggest("star", "u9")}
    assert boosted["star trek"] == pytest.approx(plain["star trek"] * 1.75, rel=1e-9)
    assert boosted["star wars"] == pytest.approx(plain["star wars"] * 1.25, rel=1e-9)
