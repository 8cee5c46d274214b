"""Recalibration alone: when only calibration drifted, the champion's rankers stay and its calibration
maps are refitted on recent served impressions (the heavy ranker's logged raw probabilities against
their outcomes). The first 70% of the window's settled impressions (by time) fit the maps, the last
30% judge them: the recalibrated bundle is registered with both log losses and promoted through the
gate on ``neg_logloss_recent`` (it must beat the champion's calibration on those same rows)."""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING

import numpy as np

from recstack.config import CalibrationKind, Settings
from recstack.errors import RecstackError
from recstack.eval.metrics import logloss
from recstack.monitoring.window import Window
from recstack.servables.bundle import ServingBundle
from recstack.servables.calibration import read_calibration

if TYPE_CHECKING:
    from recstack.monitoring.monitor import Action

GATE_METRIC = "neg_logloss_recent"


def recalibrate(settings: Settings, window: Window, version: str, why: str = "") -> Action:
    """Refit ``version``'s calibration on its impressions in ``window`` (the one the monitor read)."""
    from recstack.monitoring.monitor import Action
    from recstack.registry import Registry
    from recstack.train.feed import fit_calibration

    registry = Registry(settings)
    folder = registry.fetch(version)
    bundle = ServingBundle.load(folder)
    start, end = window.start, window.end
    rows = window.of_version(version).settled.sort_values("timestamp", kind="stable").reset_index(drop=True)
    kind = settings.ranking.calibration
    kind = CalibrationKind.platt if kind is CalibrationKind.none else kind
    old = json.loads((folder / "calibration.json").read_text())
    new = dict(old)
    old_maps = read_calibration(old)
    old_loss = new_loss = 0.0
    fitted = []
    for task in bundle.tasks:
        if task not in rows:
            continue
        raw = np.array([d.get(f"p:{task}", np.nan) for d in rows["serving_info"]], dtype=np.float64)
        ok = np.isfinite(raw)
        p, y = raw[ok], (rows[task].to_numpy(np.float64)[ok] > 0).astype(np.float64)
        cut = int(len(p) * 0.7)
        if cut < settings.monitoring.min_rows or len(np.unique(y[:cut])) < 2 or len(np.unique(y[cut:])) < 2:
            continue
        spec = fit_calibration(kind, p[:cut], y[:cut])
        if spec is None:
            continue
        maps = read_calibration({task: spec})
        before = old_maps[task](p[cut:]) if task in old_maps else p[cut:]
        old_loss += logloss(y[cut:], np.clip(before, 1e-7, 1 - 1e-7))
        new_loss += logloss(y[cut:], np.clip(maps[task](p[cut:]), 1e-7, 1 - 1e-7))
        new[task] = spec
        fitted.append(task)
    if not fitted:
        raise RecstackError(
            f"recalibration: no task has {settings.monitoring.min_rows} settled impressions with both "
            "outcomes in the window's first 70%"
        )
    target = settings.paths.state_dir / "build" / "recalibrated"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(folder, target)
    (target / "calibration.json").write_text(json.dumps(new))
    meta = json.loads((target / "bundle.json").read_text())
    meta.pop("version", None)
    meta["recalibrated_from"] = version
    meta["recalibrated_on"] = [start.isoformat(), end.isoformat()]
    (target / "bundle.json").write_text(json.dumps(meta, indent=2, default=str))
    champion_metrics = registry.metrics(version)
    metrics = {k: v for k, v in champion_metrics.items() if not k.startswith("baseline_")}
    metrics |= {GATE_METRIC: -new_loss, f"baseline_{GATE_METRIC}": -old_loss, "baseline_of": float(version)}
    lineage = {
        "data_start": meta.get("data_start"),
        "data_end": meta.get("data_end"),
        "recalibrated_from": version,
        "recalibrated_tasks": fitted,
        "recalibration_window": [start.isoformat(), end.isoformat()],
    }
    new_version = registry.register(target, metrics, lineage)
    registry.set_alias("challenger", new_version)
    gate = Registry(settings, gate_metric=GATE_METRIC).promote(new_version)
    return Action(
        "recalibrate",
        new_version,
        gate.passed,
        f"on {why}; tasks {fitted}; recent log loss {old_loss:.4f} -> {new_loss:.4f}; gate: {gate.reason}",
    )
