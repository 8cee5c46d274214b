from pathlib import Path

import pytest

from recstack.config import EventLogBackend, Optimizer, Settings, annotated_default, load_settings
from recstack.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_checked_in_toml_is_the_annotated_default() -> None:
    assert (ROOT / "recstack.toml").read_text() == annotated_default() + "\n"


def test_annotated_default_loads_to_the_model_defaults(tmp_path: Path) -> None:
    path = tmp_path / "recstack.toml"
    path.write_text(annotated_default())
    assert load_settings(path, {}) == Settings()


def test_every_key_has_a_comment() -> None:
    text = annotated_default()
    lines = text[: text.index("[[features]]")].splitlines()  # feature tables are documented per type
    for i, line in enumerate(lines):
        if " = " in line and not line.startswith("#"):
            assert lines[i - 1].startswith("# "), line


def test_unknown_key_lists_valid_names(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nepoch = 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'epoch' in \[train\]; valid keys: .*epochs"):
        load_settings(path, {})


def test_unknown_section(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[trian]\nepochs = 3\n")
    with pytest.raises(ConfigError, match="unknown key 'trian' in the top level"):
        load_settings(path, {})


def test_wrong_type_names_key_and_value(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nepochs = 'many'\n")
    with pytest.raises(ConfigError, match=r"train\.epochs.*'many'"):
        load_settings(path, {})


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[train\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_settings(path, {})


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text("[train]\nepochs = 3\noptimizer = 'sgd'\n")
    s = load_settings(
        path,
        {
            "RECSTACK_TRAIN__EPOCHS": "7",
            "REDIS_URL": "redis://example:1/2",
            "RECSTACK_EVENT_LOG__BACKEND": "redis",
        },
    )
    assert s.train.epochs == 7
    assert s.train.optimizer is Optimizer.sgd
    assert s.event_log.backend is EventLogBackend.redis
    assert s.event_log.redis_url == "redis://example:1/2"


def test_environment_unknown_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown key 'epoch'"):
        load_settings(None, {"RECSTACK_TRAIN__EPOCH": "7"})


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(Path("/nonexistent/recstack.toml"), {})


def test_feature_tables_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    path.write_text(
        '[[features]]\ntype = "counter"\nname = "c"\nentity = "item"\nkinds = ["click"]\nwindw = "1h"\n'
    )
    with pytest.raises(
        ConfigError, match=r"unknown key 'windw' in features\[0\] \(counter\); valid keys: .*window"
    ):
        load_settings(path, {})
    path.write_text('[[features]]\ntype = "median"\nname = "m"\n')
    with pytest.raises(ConfigError, match="type 'median' unknown; valid types: counter, rate"):
        load_settings(path, {})
    path.write_text(
        '[[features]]\ntype = "counter"\nname = "c"\nentity = "item"\nkinds = ["click"]\nwindow = "0h"\n'
    )
    with pytest.raises(ConfigError, match="longer than zero"):
        load_settings(path, {})
    path.write_text(
        '[[features]]\ntype = "counter"\nname = "c"\nentity = "item"\nkinds = ["clck"]\nwindow = "1h"\n'
    )
    with pytest.raises(ConfigError, match=r"event kinds \['clck'\] invalid"):
        load_settings(path, {})
    path.write_text('[[features]]\ntype = "recency"\nname = "r"\nentity = "item"\nkinds = ["click"]\n' * 2)
    with pytest.raises(ConfigError, match="repeated: r"):
        load_settings(path, {})


def test_retrieval_sources_and_weights_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text("[retrieval]\nsources = { trending = 30, popular = 5 }\n")
    with pytest.raises(ConfigError, match="popular"):
        load_settings(path, {})
    path.write_text("[retrieval]\ntrending_weights = { click = 1.0, purchase = 5.0 }\n")
    with pytest.raises(ConfigError, match="purchase"):
        load_settings(path, {})
    path.write_text("[retrieval]\nsources = { fresh = 20, trending = 30 }\n")
    assert [k.value for k in load_settings(path, {}).retrieval.sources] == ["fresh", "trending"]
