"""Every ranker kind, light ranker, calibration and position handling that ``[ranking]`` names is
trained by ``train_bundle`` on the simulator's log and answers a request through the HTTP API."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from recstack.config import Settings
from recstack.data.simulator import World
from recstack.errors import CheckpointError, RecstackError
from recstack.events.parquet import ParquetEventLog
from recstack.features.stores import MemoryStore
from recstack.servables.bundle import ServingBundle
from recstack.serving.api import Runtime, create_app
from recstack.train.feed import train_bundle
from tests.serving.conftest import KEY, feed_settings


def kind_settings(state_dir: Path, **ranking: object) -> Settings:
    base = feed_settings(state_dir)
    return base.model_copy(
        update={"ranking": base.ranking.model_validate(base.ranking.model_dump() | ranking)}
    )


def serve_one(settings: Settings, log: ParquetEventLog, bundle: Path) -> dict[str, object]:
    runtime = Runtime(settings, log, store=MemoryStore(), bundle_source=lambda: ("1", bundle))
    assert runtime.worker is not None
    runtime.worker.drain()
    runtime.start()
    try:
        with TestClient(create_app(runtime)) as client:
            response = client.get("/v1/recommend", params={"user_id": "u3", "n": 6}, headers=KEY)
    finally:
        runtime.close()
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


CASES = {
    "lr": {"model": "lr", "light": "lr", "calibration": "isotonic", "position": "feature"},
    "gbdt": {"model": "gbdt", "light": "gbdt", "calibration": "none", "position": "ips", "gbdt_rounds": 40},
    "dcn_v2": {"model": "dcn_v2", "light": "none", "position": "tower", "hidden": [32]},
    "shared_bottom": {"model": "shared_bottom", "position": "feature", "hidden": [32]},
    "mmoe": {"model": "mmoe", "calibration": "isotonic", "expert_hidden": [32]},
    "ple": {"model": "ple", "position": "ips", "expert_hidden": [32], "experts": 2},
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_ranker_kind_trains_and_serves_over_http(
    case: str, feed_world: tuple[World, Path, Path], feed_log: ParquetEventLog, tmp_path: Path
) -> None:
    options = CASES[case]
    settings = kind_settings(tmp_path / "state", **options)
    report = train_bundle(settings, feed_log, tmp_path / "bundle")
    meta = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert meta["ranking"]["model"] == options["model"]
    assert json.loads((tmp_path / "bundle" / "heavy" / "ranker.json").read_text())["kind"] == options["model"]
    assert report.metrics["auc_click"] > 0.5  # the simulator's clicks depend on the items served
    bundle = ServingBundle.load(tmp_path / "bundle")
    light = options.get("light", "shared_bottom")
    assert (bundle.light is None) == (light == "none")
    if bundle.light is not None:
        assert bundle.light.meta["kind"] == light
    calibration = options.get("calibration", "platt")
    assert {c.kind for c in bundle.calibration.values()} == (
        set() if calibration == "none" else {calibration}
    )
    body = serve_one(settings, feed_log, tmp_path / "bundle")
    items = body["items"]
    assert isinstance(items, list) and len(items) == 6 and not body["degraded"]


def test_lr_and_gbdt_continue_from_a_champion_of_their_kind(
    feed_world: tuple[World, Path, Path], feed_log: ParquetEventLog, tmp_path: Path
) -> None:
    settings = kind_settings(tmp_path / "state", model="gbdt", light="lr", gbdt_rounds=20)
    train_bundle(settings, feed_log, tmp_path / "champion")
    train_bundle(settings, feed_log, tmp_path / "next", champion=tmp_path / "champion")
    first = (tmp_path / "champion" / "heavy" / "tasks" / "click" / "gbdt.txt").read_text()
    second = (tmp_path / "next" / "heavy" / "tasks" / "click" / "gbdt.txt").read_text()
    assert second.count("Tree=") > first.count("Tree=")  # the champion's trees, then more
    # a champion of another kind is no warm start: the challenger trains from scratch
    other = kind_settings(tmp_path / "state", model="lr", light="none")
    report = train_bundle(other, feed_log, tmp_path / "lr", champion=tmp_path / "champion")
    assert "baseline_auc_click" in report.metrics  # the gate still compares against the champion


def test_a_task_with_one_class_is_left_out_with_a_warning(
    feed_world: tuple[World, Path, Path],
    feed_log: ParquetEventLog,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # the simulator's users never report an item: 'report' has one class in every window
    settings = kind_settings(
        tmp_path / "state", model="lr", light="none", tasks={"click": 1.0, "report": 1.0}
    )
    settings = settings.model_copy(
        update={
            "serving": settings.serving.model_copy(update={"value_weights": {"click": 1.0, "report": -9.0}})
        }
    )
    with caplog.at_level(logging.WARNING, logger="recstack.train.feed"):
        train_bundle(settings, feed_log, tmp_path / "bundle")
    meta = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert meta["tasks"] == ["click"] and "report" in meta["tasks_left_out"]
    assert "one class" in meta["tasks_left_out"]["report"]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "task 'report' is left out" in messages and "'report': -9.0" in messages
    body = serve_one(settings, feed_log, tmp_path / "bundle")
    assert len(body["items"]) == 6  # type: ignore[arg-type]

    only_report = kind_settings(tmp_path / "state", model="lr", tasks={"report": 1.0})
    with pytest.raises(RecstackError, match=r"no task of .* has both classes.*report: one class"):
        train_bundle(only_report, feed_log, tmp_path / "none")


def test_an_attribute_the_data_lacks_is_an_error_naming_what_it_has(
    feed_world: tuple[World, Path, Path], feed_log: ParquetEventLog, tmp_path: Path
) -> None:
    from recstack.features.definitions import Attribute

    settings = feed_settings(tmp_path / "state")
    genre = Attribute(name="item_genre", entity="item", field="genre")
    settings = settings.model_copy(update={"features": [*settings.features, genre]})
    with pytest.raises(RecstackError, match=r"item_genre' reads attributes.genre.*attributes seen: .*topic"):
        train_bundle(settings, feed_log, tmp_path / "bundle")


def test_a_ranker_kind_serving_cannot_load_is_a_clear_error(
    feed_world: tuple[World, Path, Path], tmp_path: Path
) -> None:
    import shutil

    shutil.copytree(feed_world[2], tmp_path / "bundle")
    meta_path = tmp_path / "bundle" / "heavy" / "ranker.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(meta | {"kind": "xgboost"}))
    with pytest.raises(CheckpointError, match="kind 'xgboost', which serving cannot load"):
        ServingBundle.load(tmp_path / "bundle")
    meta_path.write_text(json.dumps(meta))
    (tmp_path / "bundle" / "calibration.json").write_text(json.dumps({"click": {"kind": "beta"}}))
    with pytest.raises(CheckpointError, match="unknown calibration kind 'beta'"):
        ServingBundle.load(tmp_path / "bundle")


def test_position_feature_is_served_at_the_top_slot(
    feed_world: tuple[World, Path, Path], feed_log: ParquetEventLog, tmp_path: Path
) -> None:
    """A position-feature ranker scores every candidate as if shown first: the columnar encoding
    serving uses equals the frame path with position set to the training minimum."""
    from recstack.features.feed import ColumnarEncoder
    from recstack.servables.ranker import position_value

    settings = kind_settings(tmp_path / "state", model="lr", light="none", position="feature")
    train_bundle(settings, feed_log, tmp_path / "bundle")
    bundle = ServingBundle.load(tmp_path / "bundle")
    assert position_value(bundle.heavy.meta) == "0"
    encoder = ColumnarEncoder(bundle.heavy.encoder, {"position": "0"})
    column = bundle.heavy.encoder.categorical.index("position")
    code = encoder.constant_codes["position"]
    assert code == bundle.heavy.encoder.vocab["position"].index("0") + 1
    assert np.all(code > 0) and column >= 0


def test_a_bundle_trained_on_other_features_than_the_state_keeps_is_refused(
    feed_world: tuple[World, Path, Path], tmp_path: Path
) -> None:
    from recstack.errors import ConfigError
    from recstack.features.definitions import Rate
    from recstack.serving.graph import build_pipeline
    from recstack.serving.state import FeedState
    from tests.serving.conftest import FEATURES

    bundle = ServingBundle.load(feed_world[2])
    fewer = FeedState(features=[f for f in FEATURES if f.name != "item_ctr_1d"])
    with pytest.raises(
        ConfigError, match=r"read features \['item_ctr_1d'\] that the live state does not keep"
    ):
        build_pipeline(feed_settings(tmp_path), bundle, fewer)
    changed = [
        Rate(
            name="item_ctr_1d", entity="item", numerator=("click",), denominator=("impression",), window="2d"
        )
        if f.name == "item_ctr_1d"
        else f
        for f in FEATURES
    ]
    with pytest.raises(ConfigError, match="item_ctr_1d"):  # the same name, another definition
        build_pipeline(feed_settings(tmp_path), bundle, FeedState(features=changed))


def test_an_empty_training_window_is_a_clear_error(
    feed_world: tuple[World, Path, Path], feed_log: ParquetEventLog, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    window = (datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 1, 2, tzinfo=UTC))  # before the history
    with pytest.raises(RecstackError, match="0 impressions in the selected range: at least 100 are needed"):
        train_bundle(feed_settings(tmp_path / "state"), feed_log, tmp_path / "bundle", *window)


def test_train_since_until_trains_on_that_window_and_registers_its_range(
    feed_world: tuple[World, Path, Path], feed_log: ParquetEventLog, tmp_path: Path
) -> None:
    """``recstack train --feed --since --until``: the bundle's rows and data range are the window's;
    a window that is not a range is refused before anything trains."""
    from datetime import timedelta

    from typer.testing import CliRunner

    from recstack.cli import app
    from recstack.registry import Registry

    times = feed_log.table(kinds=["impression"]).column("timestamp").to_pylist()
    first, last = min(times), max(times)
    since, until = first + (last - first) / 4, first + 3 * (last - first) / 4
    env = {
        "RECSTACK_PATHS__STATE_DIR": str(tmp_path / "state"),
        "RECSTACK_EVENT_LOG__PATH": str(feed_log.root),
        "RECSTACK_TRACKING__ENABLED": "false",
        "RECSTACK_TRAIN__PROGRESS": "false",
        "RECSTACK_TRAIN__EPOCHS": "1",
        "RECSTACK_TWO_TOWER__DIM": "16",
        "RECSTACK_RETRIEVAL__INDEX": "flat",
    }
    window = ["--since", since.isoformat(), "--until", until.isoformat()]
    result = CliRunner().invoke(app, ["train", "--feed", *window], env=env)
    assert result.exit_code == 0, result.output
    settings = feed_settings(tmp_path / "state")
    (version,) = Registry(settings).versions()
    assert version["data_start"] == since.isoformat() and version["data_end"] == until.isoformat()
    meta = json.loads((Registry(settings).fetch(version["version"]) / "bundle.json").read_text())
    inside = sum(since <= t < until for t in times)
    assert sum(meta["rows"][k] for k in ("train", "valid", "holdout")) == inside < len(times)
    backwards = ["--since", until.isoformat(), "--until", (since - timedelta(seconds=1)).isoformat()]
    refused = CliRunner().invoke(app, ["train", "--feed", *backwards], env=env)
    assert refused.exit_code == 1 and "is not before --until" in refused.output
