from __future__ import annotations

import json
import time
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


EXPERIMENT_TOML = """
[[experiments.tests]]
name = "bigger-thumbnails"
arms = [{ name = "control" }, { name = "big", serving = { explore_slots = 3 } }]
"""


def test_experiment_report_reads_the_arms_from_the_log(tmp_path: Path) -> None:
    """A log whose treatment users click twice as often: the report finds the lift, ships, and
    writes its plot; an experiment the config does not name is a clear error."""
    import numpy as np

    from recstack.config import load_settings
    from recstack.events.parquet import ParquetEventLog
    from recstack.experiments.assignment import Assigner
    from recstack.schema import events_to_table, parse_event

    config = tmp_path / "recstack.toml"
    config.write_text(EXPERIMENT_TOML)
    settings = load_settings(config, env(tmp_path))
    assigner = Assigner(settings.experiments)
    rng = np.random.default_rng(0)
    start = int(time.time()) - 3_600
    events = []
    for u in range(400):
        user = f"u{u}"
        variant = assigner.assign(user)
        rate = 0.2 if dict(variant.arms)["bigger-thumbnails"] == "big" else 0.1
        for r in range(5):
            for pos in range(4):
                base = {"user_id": user, "item_id": f"i{(u + r + pos) % 50}", "request_id": f"{user}-{r}"}
                events.append(
                    {"event_id": f"{user}-{r}-{pos}", "kind": "impression", "timestamp": start + r,
                     "position": pos, "experiment_arm": variant.label, **base}
                )  # fmt: skip
                if rng.random() < rate:
                    events.append({"event_id": f"c-{user}-{r}-{pos}", "kind": "click",
                                   "timestamp": start + r + 1, **base})  # fmt: skip
    log = ParquetEventLog(settings.event_log_path())
    log.append_table(events_to_table([parse_event(e) for e in events]))
    log.close()
    result = runner.invoke(
        app, ["experiment", "report", "bigger-thumbnails", "-c", str(config)], env=env(tmp_path)
    )
    assert result.exit_code == 0, result.output
    assert "big: ship" in result.output and "sample ratio" in result.output
    assert (tmp_path / "state" / "reports" / "experiment-bigger-thumbnails.png").stat().st_size > 0
    missing = runner.invoke(app, ["experiment", "report", "nope", "-c", str(config)], env=env(tmp_path))
    assert missing.exit_code == 1 and "no experiment named 'nope'" in missing.output


def test_experiment_budget_allocates_and_refuses_bad_counts(tmp_path: Path) -> None:
    counts = tmp_path / "day0.csv"
    counts.write_text("item,impressions,clicks\na,1000,10\nb,1000,80\nc,10,1\n")
    out = tmp_path / "plan.csv"
    args = ["experiment", "budget", str(counts), "--budget", "1000", "--out", str(out)]
    result = runner.invoke(app, args, env=env(tmp_path))
    assert result.exit_code == 0, result.output
    import pandas as pd

    plan = pd.read_csv(out).set_index("item")["allocated"]
    assert plan.sum() == 1000 and plan["a"] == 0 and plan["b"] > plan["c"] > 0
    counts.write_text("item,shown\na,3\n")
    bad = runner.invoke(app, ["experiment", "budget", str(counts), "--budget", "5"], env=env(tmp_path))
    assert bad.exit_code == 1 and "missing columns ['impressions', 'clicks']" in bad.output
    counts.write_text("item,impressions,clicks\na,3,5\n")
    bad = runner.invoke(app, ["experiment", "budget", str(counts), "--budget", "5"], env=env(tmp_path))
    assert bad.exit_code == 1 and "clicks <= impressions" in bad.output


def test_experiment_ope_on_a_log_without_served_impressions_fails_clearly(tmp_path: Path) -> None:
    result = runner.invoke(app, ["experiment", "ope", "challenger"], env=env(tmp_path))
    assert result.exit_code == 1 and "no impressions with propensities" in result.output
