"""docs/safety.md as a newcomer follows it: a catalog with text imported before any model exists is
served unscored and says so; `recstack safety train` registers a champion; from then on the same
catalog is held back until `recstack safety rescore` scores it, and a second rescore appends nothing.
Each command run here appears in the guide as written, and so does the shape of its output."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from recstack.cli import app
from recstack.config import load_settings
from recstack.features.stores import MemoryStore
from recstack.serving.api import Runtime, bus_for, registry_source

from ..conftest import data_path

GUIDE = (Path(__file__).resolve().parents[2] / "docs" / "safety.md").read_text()
IMPORT = "recstack import $DATA/u.data --items $DATA/u.item --users $DATA/u.user --text title"
RESCORED = re.compile(
    r"(\d[\d,]*) items with text; (\d[\d,]*) scored by recstack-safety/1 and appended \(allow [\d,]+"
    r"(, block [\d,]+)?(, review [\d,]+)?\); (\d[\d,]*) already scored by it"
)


def step(command: str, data: Path, env: dict[str, str]) -> Result:
    assert f"$ {command}" in GUIDE or command.startswith("recstack import"), command
    result = CliRunner().invoke(app, shlex.split(command.replace("$DATA", str(data)))[1:], env=env)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_the_safety_guide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    movielens, tweets = data_path("movielens-100k"), data_path("davidson_hate_offensive")
    monkeypatch.chdir(tmp_path)
    env = {
        "RECSTACK_TRAIN__PROGRESS": "false",
        "RECSTACK_SAFETY__DATA": str(tweets),
        "RECSTACK_SAFETY__MAX_TRAIN_ROWS": "3000",  # the guide trains on all 19,826; the shape is the same
    }
    # the own-data tutorial's import, before any safety model exists
    assert f"$ {IMPORT}" in (Path(__file__).resolve().parents[2] / "docs" / "own-data.md").read_text()
    imported = step(IMPORT, movielens, env)
    unscored = (
        "moderation: 1,682 items with text not scored (no safety model is registered as recstack-safety "
        "(recstack safety train)); served unscored"
    )
    assert unscored in " ".join(imported.output.split()) and unscored in " ".join(GUIDE.split())

    trained = step("recstack safety train", movielens, env)
    assert "registered recstack-safety version 1; promoted to champion" in trained.output
    assert "registered recstack-safety version 1; promoted to champion" in GUIDE

    # the catalog imported before the model is held back now, and /health/ready says why
    settings = load_settings(None, env)
    runtime = Runtime(
        settings,
        bus_for(settings),
        store=MemoryStore(),
        safety_source=registry_source(settings, settings.safety.model_name),
    )
    runtime.check_safety()
    assert runtime.worker is not None
    runtime.worker.drain()
    safety = runtime.safety_status()
    assert safety["items"]["unscored"] == 1_682 and safety["unscored_held_back"]
    assert "recstack safety rescore" in safety["note"]

    first = step("recstack safety rescore", movielens, env)
    found = RESCORED.search(" ".join(first.output.split()))
    assert found is not None, first.output
    assert found.group(1) == found.group(2) == "1,682" and found.group(5) == "0"
    assert RESCORED.search(" ".join(GUIDE.split())) is not None  # the guide shows the same line
    second = " ".join(step("recstack safety rescore", movielens, env).output.split())
    assert "1,682 items with text; 0 scored by recstack-safety/1 and appended (none); 1,682 already" in second

    runtime.worker.drain()
    safety = runtime.safety_status()
    assert safety["items"]["unscored"] == 0 and safety["note"] is None
    assert sum(safety["items"].values()) == 1_682

    # items imported from now on are scored as they come in
    Path("more.jsonl").write_text('{"item_id": "new-1", "title": "a lovely film for the family"}\n')
    more = step("recstack import --items more.jsonl --text title", movielens, env)
    assert "moderation: 1 item with text scored" in more.output
    assert "moderation: 1,682 items with text scored" in GUIDE
