from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recstack.cli import app

from .conftest import DATA_DIR

runner = CliRunner()


def env(tmp_path: Path) -> dict[str, str]:
    return {
        "RECSTACK_PATHS__STATE_DIR": str(tmp_path / "state"),
        "RECSTACK_PATHS__DATA_DIR": str(DATA_DIR),
        "RECSTACK_TRACKING__ENABLED": "false",
    }


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "train", "data", "events", "config"):
        assert command in result.output


def test_data_list_and_summary(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "list"], env=env(tmp_path))
    assert result.exit_code == 0 and "movielens-100k" in result.output
    if not (DATA_DIR / "movielens-100k").exists():
        pytest.skip(f"movielens-100k not found under {DATA_DIR}")
    result = runner.invoke(app, ["data", "summary", "movielens-100k"], env=env(tmp_path))
    assert result.exit_code == 0 and '"interactions": 100000' in result.output


def test_data_summary_of_a_missing_folder_fails_clearly(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["data", "summary", "frappe_x1_partial", "--path", str(tmp_path / "x")], env=env(tmp_path)
    )
    assert result.exit_code == 1 and "does not exist" in result.output


def test_config_check(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepoch = 3\n")
    result = runner.invoke(app, ["config", "check", str(bad)])
    assert result.exit_code == 2 and "unknown key 'epoch' in [train]" in result.output
    good = tmp_path / "good.toml"
    good.write_text(runner.invoke(app, ["config", "default"]).output)
    assert runner.invoke(app, ["config", "check", str(good)]).exit_code == 0


def test_events_ingest_replay_join(tmp_path: Path) -> None:
    lines = [
        {
            "event_id": "i1",
            "kind": "impression",
            "timestamp": "2026-11-23T10:00:00Z",
            "request_id": "r1",
            "user_id": "u1",
            "item_id": "a",
            "position": 0,
        },
        {
            "event_id": "c1",
            "kind": "click",
            "timestamp": "2026-11-23T10:00:03Z",
            "request_id": "r1",
            "user_id": "u1",
            "item_id": "a",
        },
        {"event_id": "bad", "kind": "click", "timestamp": "2026-11-23T10:00:03Z", "user_id": "u1"},
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n")
    result = runner.invoke(app, ["events", "ingest", str(path)], env=env(tmp_path))
    assert result.exit_code == 1
    assert "accepted 2, duplicates 0, rejected 2" in result.output
    assert "#2: event 2: field 'item_id'" in result.output and "line 4: invalid JSON" in result.output
    again = runner.invoke(app, ["events", "ingest", str(path)], env=env(tmp_path))
    assert "accepted 0, duplicates 2" in again.output
    replay = runner.invoke(app, ["events", "replay", "--kind", "click"], env=env(tmp_path))
    assert replay.exit_code == 0 and [json.loads(x)["event_id"] for x in replay.output.split()] == ["c1"]
    out = tmp_path / "joined.parquet"
    joined = runner.invoke(app, ["events", "join", str(out)], env=env(tmp_path))
    assert joined.exit_code == 0 and "wrote 1 impressions" in joined.output
    import pyarrow.parquet as pq

    assert pq.read_table(out).column("click").to_pylist() == [1]


def test_serve_refuses_several_processes_without_the_separate_worker(tmp_path: Path) -> None:
    result = runner.invoke(app, ["serve", "--processes", "2"], env=env(tmp_path))
    assert result.exit_code == 1
    assert "needs the separate worker" in result.output and "redis" in result.output


def test_a_memory_state_with_a_separate_worker_is_refused(tmp_path: Path) -> None:
    environ = env(tmp_path) | {"RECSTACK_EVENT_LOG__BACKEND": "redis", "RECSTACK_ONLINE__BACKEND": "memory"}
    for command in (["serve"], ["worker"]):
        result = runner.invoke(app, command, env=environ)
        assert result.exit_code == 1 and "[online] backend = 'memory'" in result.output, result.output
