"""docs/own-data.md, step by step: MovieLens-100k imported as a team's own log, trained, served by
``recstack serve`` and read over HTTP. Every command the test runs is checked to appear in the
tutorial as written, so the two cannot drift apart."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

from recstack.cli import app

from .conftest import data_path

TUTORIAL = (Path(__file__).resolve().parents[1] / "docs" / "own-data.md").read_text()
USER_FEATURES = """
[[features]]
type = "attribute"
name = "user_occupation"
entity = "user"
field = "occupation"

[[features]]
type = "attribute"
name = "user_age"
entity = "user"
field = "age"
kind = "dense"
"""
KEY = {"X-API-Key": "recstack-local"}


def step(command: str, data: Path, env: dict[str, str]) -> Result:
    """Run one ``$ recstack ...`` line of the tutorial (which must hold it verbatim)."""
    assert f"$ {command}" in TUTORIAL, f"docs/own-data.md does not show `{command}`"
    args = shlex.split(command.replace("$DATA", str(data)))
    assert args[0] == "recstack"
    return CliRunner().invoke(app, args[1:], env=env)


def test_the_own_data_tutorial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data = data_path("movielens-100k")
    monkeypatch.chdir(tmp_path)
    env = {"RECSTACK_TRAIN__PROGRESS": "false"}  # the bars only; everything else as the reader has it

    # 1. configuration
    assert "$ recstack config default > recstack.toml" in TUTORIAL
    default = CliRunner().invoke(app, ["config", "default"], env=env)
    assert '$ sed -i \'s/^field = "topic"/field = "genres"/\' recstack.toml' in TUTORIAL
    assert USER_FEATURES.strip() in TUTORIAL
    text = default.output.replace('field = "topic"', 'field = "genres"') + USER_FEATURES
    Path("recstack.toml").write_text(text)
    checked = step("recstack config check recstack.toml", data, env)
    assert checked.exit_code == 0 and "recstack.toml: ok" in checked.output

    # 2. import, again (nothing added), and a file with bad lines
    command = "recstack import $DATA/u.data --items $DATA/u.item --users $DATA/u.user --text title"
    first = step(command, data, env)
    assert first.exit_code == 0, first.output
    for line in (
        "u.item: 1,682 rows -> item 1,682; accepted 1,682, duplicates 0, bad lines 0",
        "u.user: 943 rows -> user 943; accepted 943, duplicates 0, bad lines 0",
        "u.data: 100,000 rows -> impression 100,000, click 55,375, like 21,201; accepted 176,576, "
        "duplicates 0, bad lines 0",
    ):
        assert line in first.output and line in TUTORIAL
    again = step(command, data, env)
    assert "accepted 0, duplicates 176,576, bad lines 0" in again.output
    Path("bad.csv").write_text(
        "user_id,item_id,rating,timestamp\n1,2,5,881250949\n1,,4,881250949\nx,3,abc,881250949\n2,4,3,2020-01-01\n"
    )
    bad = step("recstack import bad.csv", data, env)
    assert bad.exit_code == 1
    for line in bad.output.strip().splitlines():
        assert line.strip() in TUTORIAL, line
    replay = step("recstack events replay --limit 3", data, env)
    assert replay.exit_code == 0 and replay.output.count('"kind":"item"') == 3
    for line in replay.output.strip().splitlines():
        assert line in TUTORIAL, line

    # 3. train
    trained = step("recstack train --feed", data, env)
    assert trained.exit_code == 0, trained.output
    assert "registered version 1" in trained.output and "promoted to champion" in trained.output
    assert "auc_click" in trained.output and "task 'share' is left out" in caplog.text

    # 4. serve, as the reader runs it, and read the feed over HTTP
    assert "$ recstack serve\n" in TUTORIAL
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("recstack")), "serve", "--port", str(port)],
        env=os.environ | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                ready = httpx.get(f"{base}/health/ready", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "recstack serve did not get ready"
            time.sleep(0.5)
        assert ready.json()["catalog_items"] == 1682 and ready.json()["waiting_for"] == []
        feed = httpx.get(f"{base}/v1/recommend", params={"user_id": "1", "n": 10}, headers=KEY).json()
        rated = {
            line.split()[1] for line in (data / "u.data").read_text().splitlines() if line.split()[0] == "1"
        }
        assert len(feed["items"]) == 10 and not {i["item_id"] for i in feed["items"]} & rated
        unknown = httpx.get(f"{base}/v1/recommend", params={"user_id": "944", "n": 3}, headers=KEY).json()
        assert len(unknown["items"]) == 3
        click = [
            {
                "event_id": "tutorial-1",
                "kind": "click",
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "user_id": "1",
                "item_id": feed["items"][0]["item_id"],
            }
        ]
        posted = httpx.post(f"{base}/v1/events", json=click, headers=KEY)
        assert posted.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert f"serving on http://127.0.0.1:{port}" in output and '"GET /v1/recommend?user_id=1&n=10' in output

    # 5. evaluate
    evaluated = step("recstack evaluate", data, env)
    assert evaluated.exit_code == 0, evaluated.output
    assert "merged recall@10" in evaluated.output and "holdout:" in evaluated.output
