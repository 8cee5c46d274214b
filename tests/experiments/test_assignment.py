from __future__ import annotations

import subprocess
import sys

import pytest

from recstack.config import load_settings
from recstack.errors import ConfigError
from recstack.experiments.assignment import Assigner, Variant, bucket, parse_label


def _settings(tmp_path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "recstack.toml"
    path.write_text(text)
    return load_settings(path, environ={})


TWO_LAYERS = """
[experiments]
holdout = 0.1

[[experiments.tests]]
name = "explore"
layer = "explore"
fraction = 0.5
arms = [{ name = "control" }, { name = "more", serving = { explore_slots = 4 } }]

[[experiments.tests]]
name = "diversity"
layer = "rerank"
fraction = 0.6
arms = [{ name = "mmr" }, { name = "dpp", weight = 2, serving = { diversity = "dpp" } }]

[[experiments.tests]]
name = "weights"
layer = "rerank"
fraction = 0.4
arms = [{ name = "a" }, { name = "b", serving = { value_weights = { click = 1.0 } } }]
"""


def test_assignment_is_stable_across_processes_and_follows_the_shares(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = _settings(tmp_path, TWO_LAYERS)
    assigner = Assigner(settings.experiments)
    users = [f"user-{i}" for i in range(20_000)]
    variants = [assigner.assign(u) for u in users]
    here = [bucket("s", u) for u in users[:5]]
    code = (
        "from recstack.experiments.assignment import bucket; "
        "print([bucket('s', f'user-{i}') for i in range(5)])"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert str(here) == there.strip()  # a fresh interpreter (another hash seed) agrees
    held = sum(v.holdout for v in variants) / len(users)
    assert held == pytest.approx(0.1, abs=0.01)
    inside = [dict(v.arms) for v in variants if not v.holdout]
    explore = sum("explore" in a for a in inside) / len(inside)
    assert explore == pytest.approx(0.5, abs=0.02)
    # one layer's experiments are exclusive and fill it: everyone outside the holdout is in one
    assert all(("diversity" in a) != ("weights" in a) for a in inside)
    dpp = [a["diversity"] == "dpp" for a in inside if "diversity" in a]
    assert sum(dpp) / len(dpp) == pytest.approx(2 / 3, abs=0.02)
    # layers are independent: the explore split is the same inside either rerank experiment
    in_div = [("explore" in a) for a in inside if "diversity" in a]
    assert sum(in_div) / len(in_div) == pytest.approx(0.5, abs=0.02)
    assert set(variants) <= set(assigner.variants())
    assert Variant() in assigner.variants()


def test_labels_round_trip_and_overrides_merge(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assigner = Assigner(_settings(tmp_path, TWO_LAYERS).experiments)
    variant = Variant((("diversity", "dpp"), ("explore", "more")))
    assert parse_label(variant.label) == {"diversity": "dpp", "explore": "more"}
    model, serving, retrieval = assigner.overrides(variant)
    assert model is None and serving == {"diversity": "dpp", "explore_slots": 4} and retrieval == {}
    assert Variant().label is None and parse_label(None) == {} and parse_label("not json") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[experiments.tests]]\nname = "a"\nfraction = 0.7\narms = [{name = "x"}, {name = "y"}]\n'
            '[[experiments.tests]]\nname = "b"\nfraction = 0.5\narms = [{name = "x"}, {name = "y"}]\n',
            "add up to 1.2 > 1",
        ),
        ('[[experiments.tests]]\nname = "a"\narms = [{name = "x"}]\n', "at least two arms"),
        ('[[experiments.tests]]\nname = "a"\narms = []\n', "at least two arms"),
        (
            '[[experiments.tests]]\nname = "a"\narms = [{name = "x"}, {name = "y", serving = {port = 1}}]\n',
            "cannot differ per arm",
        ),
        (
            '[[experiments.tests]]\nname = "a"\nlayer = "l1"\narms = [{name = "x"}, {name = "y", serving = '
            '{explore_slots = 1}}]\n[[experiments.tests]]\nname = "b"\nlayer = "l2"\narms = [{name = "x"}, '
            '{name = "y", serving = {explore_slots = 3}}]\n',
            "both set serving.explore_slots",
        ),
        (
            '[[experiments.tests]]\nname = "a"\ncontrol = "z"\narms = [{name = "x"}, {name = "y"}]\n',
            "not an arm",
        ),
        (
            '[[experiments.tests]]\nname = "a"\ndesign = "interleave"\n'
            'arms = [{name = "x"}, {name = "y"}, {name = "z"}]\n',
            "exactly two arms",
        ),
        (
            '[[experiments.tests]]\nname = "a"\nlayer = "l1"\ndesign = "interleave"\n'
            'arms = [{name = "x"}, {name = "y"}]\n'
            '[[experiments.tests]]\nname = "b"\nlayer = "l2"\ndesign = "interleave"\n'
            'arms = [{name = "x"}, {name = "y"}]\n',
            "at most one interleaving",
        ),
    ],
)
def test_bad_experiment_configs_are_clear_errors(tmp_path, text: str, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=message):
        _settings(tmp_path, text)
