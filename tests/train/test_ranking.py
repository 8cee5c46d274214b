"""Neural rankers end to end on click data from a known model: fit, ONNX export, parity, position."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recstack.config import Settings, load_settings
from recstack.errors import CheckpointError, RecstackError
from recstack.eval.metrics import auc
from recstack.features.tabular import MissingFeatureError
from recstack.servables.ranker import OnnxRanker
from recstack.train.ranking import NeuralRanker

Frames = tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]


def ranker_settings(tmp_path: Path, **ranking: str) -> Settings:
    env = {
        "RECSTACK_PATHS__STATE_DIR": str(tmp_path / "state"),
        "RECSTACK_TRACKING__ENABLED": "false",
        "RECSTACK_TRAIN__PROGRESS": "false",
        "RECSTACK_TRAIN__EPOCHS": "12",
        "RECSTACK_TRAIN__PATIENCE": "3",
        "RECSTACK_TRAIN__BATCH_SIZE": "512",
        "RECSTACK_TRAIN__LR": "0.01",
        "RECSTACK_RANKING__HIDDEN": "[64, 32]",
        "RECSTACK_RANKING__EXPERT_HIDDEN": "[32]",
        "RECSTACK_RANKING__EXPERTS": "2",
        "RECSTACK_RANKING__MODEL": "dcn_v2",
        "RECSTACK_RANKING__TASKS": '{"click": 1.0}',
    }
    return load_settings(None, env | {f"RECSTACK_RANKING__{k.upper()}": v for k, v in ranking.items()})


@pytest.mark.parametrize("model", ["dcn_v2", "mmoe", "ple", "shared_bottom"])
def test_multitask_rankers_learn_and_onnx_matches_eager(
    model: str, ctr_frames: Frames, tmp_path: Path
) -> None:
    train, valid, test = ctr_frames
    settings = ranker_settings(tmp_path, model=model, tasks='{"click": 1.0, "like": 0.5}')
    ranker = NeuralRanker(settings, ["user", "app"], ["price"], position="position")
    ranker.fit(train, valid)
    eager = ranker.predict_proba(test)  # (N, 2)
    assert eager.shape == (len(test), 2)
    # served without position, the best any score can do is rank by the position-free truth
    best = auc(test["click"].to_numpy(), test["p_top"].to_numpy())
    assert auc(test["click"].to_numpy(), eager[:, 0]) == pytest.approx(best, abs=0.03)
    served = OnnxRanker(ranker.export(tmp_path / "servable")).score(test)
    assert np.abs(served - eager).max() <= 1e-5


def test_position_tower_recovers_the_known_position_effect(ctr_frames: Frames, tmp_path: Path) -> None:
    train, valid, _ = ctr_frames
    ranker = NeuralRanker(
        ranker_settings(tmp_path, position="tower"), ["user", "app"], ["price"], position="position"
    )
    ranker.fit(train, valid)
    assert ranker.model is not None and ranker.model.position_bias is not None
    table = ranker.model.position_bias.table.weight.detach().numpy()[:10, 0]
    slope = np.polyfit(np.arange(10), table, 1)[0]
    assert slope == pytest.approx(-0.25, abs=0.06)  # the data's logit falls 0.25 per position


def test_position_as_feature_is_pinned_to_the_top_slot_at_serving(ctr_frames: Frames, tmp_path: Path) -> None:
    train, valid, test = ctr_frames
    ranker = NeuralRanker(
        ranker_settings(tmp_path, position="feature"), ["user", "app"], ["price"], position="position"
    )
    ranker.fit(train, valid)
    moved = test.assign(position=(test["position"] + 3) % 10)
    assert np.allclose(ranker.predict_proba(moved), ranker.predict_proba(test))  # position does not matter
    served = OnnxRanker(ranker.export(tmp_path / "s")).score(moved)
    assert np.abs(served - ranker.predict_proba(test)).max() <= 1e-5


def test_bad_inputs(ctr_frames: Frames, tmp_path: Path) -> None:
    train, valid, test = ctr_frames
    settings = ranker_settings(tmp_path)
    with pytest.raises(RecstackError, match="one class"):
        NeuralRanker(settings, ["user"], ["price"]).fit(train.assign(click=0.0), valid)
    with pytest.raises(RecstackError, match="like"):
        NeuralRanker(ranker_settings(tmp_path, tasks='{"click": 1.0, "like": 1.0}'), ["user"]).fit(
            train.drop(columns=["like"]), valid
        )
    with pytest.raises(RecstackError, match="ips"):
        NeuralRanker(ranker_settings(tmp_path, position="ips"), ["user"], position="position").fit(
            train, valid
        )
    ranker = NeuralRanker(settings, ["user", "app"], ["price"])
    ranker.fit(train, valid)
    odd = test.head(4).assign(user=[10_000, -1, 5, 5], price=[np.nan, np.inf, -np.inf, 1e308])
    assert np.isfinite(ranker.predict_proba(odd)).all()
    with pytest.raises(MissingFeatureError, match="app"):
        ranker.predict_proba(test.drop(columns=["app"]))
    folder = ranker.export(tmp_path / "servable")
    (folder / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(CheckpointError, match="corrupt"):
        OnnxRanker(folder)


def test_light_ranker_learns_the_heavy_rankers_top_k() -> None:
    from recstack.models.lr import LogisticRanker
    from recstack.train.ranking import distill_light_ranker
    from tests.conftest import synthetic_ctr

    frame = synthetic_ctr(20_000, seed=5)
    frame["request"] = np.arange(len(frame)) // 50  # 400 requests of 50 candidates
    heavy = frame["p_top"].to_numpy()  # a heavy ranker that knows the position-free truth
    train, test = frame[frame.request < 300], frame[frame.request >= 300]
    light = distill_light_ranker(
        LogisticRanker(["user", "app"], ["price"]), train, heavy[: len(train)], "request", k=5
    )
    scores = light.predict_proba(test)
    kept = []
    for _, group in test.assign(light=scores).groupby("request"):
        heavy_top = set(group.nlargest(5, "p_top").index)
        light_top = set(group.nlargest(20, "light").index)  # the light stage passes 20 of 50 on
        kept.append(len(heavy_top & light_top) / 5)
    # passing 20 of 50 at random keeps 40% of the heavy top 5; the distilled ranker keeps most
    assert np.mean(kept) > 0.85
