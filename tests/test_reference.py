"""docs/cli.md and docs/config.md are what the code generates: a command, option or setting added,
changed or removed without `make docs` fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from recstack.reference import generated

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("name", ["cli.md", "config.md"])
def test_the_generated_references_are_current(name: str) -> None:
    expected = generated()[name]
    assert (DOCS / name).read_text() == expected, f"docs/{name} is stale: run `make docs`"


def test_the_references_cover_every_command_and_section() -> None:
    from recstack.config import Settings

    docs = generated()
    for command in ("recstack import", "recstack train", "recstack serve", "recstack events dead-letters"):
        assert f"## `{command}`" in docs["cli.md"]
    for section in Settings.model_fields:
        if section != "features":
            assert f"## `[{section}]`" in docs["config.md"]
    assert '### `type = "rate"`' in docs["config.md"]
