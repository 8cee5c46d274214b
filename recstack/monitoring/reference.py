"""The training reference saved with each bundle (``reference.json``): what monitoring compares the
serving windows with.

Rows: the bundle's validation and holdout impressions (the latest 20% of its window, which it was not
fitted on), only those the API served when at least ``[monitoring] min_rows`` of them were (a
reference of imported or backfilled rows is marked ``served: false``: what a model serves differs
from what another policy showed by design, so drift against it is reported but is not a breach).

It holds, per ``[[features]]`` definition the rankers read (text embeddings aside), a drift profile
(``monitoring.drift.profile``); per task head the profile of the heavy ranker's raw probabilities;
per task the calibration on those rows (label rate, mean calibrated prediction, ECE); and the online
rates of those impressions (click rate, hides and reports per request).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recstack.config import MonitoringConfig
from recstack.errors import CheckpointError
from recstack.eval.metrics import ece
from recstack.features.definitions import TextEmbedding
from recstack.features.feed import is_categorical
from recstack.features.online import AnyFeature
from recstack.monitoring.drift import DriftError, one_per_request, profile, ratio_rse

REFERENCE_FILE = "reference.json"
REFERENCE_FORMAT = 1


def build_reference(
    rows: pd.DataFrame,
    features: Sequence[AnyFeature],
    tasks: Sequence[str],
    raw: np.ndarray,
    calibrate: Callable[[np.ndarray], np.ndarray],
    served: np.ndarray,
    cfg: MonitoringConfig,
    seed: int = 0,
) -> dict[str, Any]:
    """The reference of ``rows`` (impressions with one column per feature and label), ``raw`` (N, T)
    their heavy-ranker probabilities, ``calibrate`` the bundle's map to calibrated ones, ``served``
    (N,) which rows the API served."""
    use_served = int(served.sum()) >= cfg.min_rows
    if use_served:
        rows, raw = rows[served].reset_index(drop=True), raw[served]
    out: dict[str, Any] = {
        "format": REFERENCE_FORMAT,
        "rows": len(rows),
        "served": use_served,
        "start": str(rows["timestamp"].min()) if len(rows) else None,
        "end": str(rows["timestamp"].max()) if len(rows) else None,
        "features": {},
        "predictions": {},
        "calibration": {},
        "online": {},
        "unprofiled": {},
    }
    requests = rows["request_id"].to_numpy() if len(rows) else np.zeros(0, dtype=object)
    sample = one_per_request(requests, seed=seed)  # as the checks count the window (one per request)
    for f in features:
        if isinstance(f, TextEmbedding) or f.name not in rows:
            continue
        values = pd.to_numeric(rows[f.name].iloc[sample], errors="coerce").to_numpy(np.float64)
        try:
            out["features"][f.name] = profile(values, is_categorical(f), cfg.bins, cfg.sample, seed=seed)
        except DriftError as exc:
            out["unprofiled"][f.name] = str(exc)
    calibrated = calibrate(raw) if len(raw) and raw.shape[1] else raw
    for t, task in enumerate(tasks):
        try:
            scored = one_per_request(requests, np.isfinite(raw[:, t]), seed)
            out["predictions"][task] = profile(raw[scored, t], False, cfg.bins, cfg.sample, seed=seed)
        except DriftError as exc:
            out["unprofiled"][f"p:{task}"] = str(exc)
        if task in rows and len(rows):
            labels = (rows[task].to_numpy(np.float64) > 0).astype(np.float64)
            out["calibration"][task] = {
                "rate": float(labels.mean()),
                "predicted": float(calibrated[:, t].mean()),
                "ece": float(ece(labels, calibrated[:, t])) if len(labels) else None,
                "ratio_rse": _rse(labels, calibrated[:, t], requests),
            }
    if len(rows):
        requests = max(int(rows["request_id"].nunique()), 1)
        negative = sum(rows[k].to_numpy(np.float64).clip(0, 1).sum() for k in ("hide", "report") if k in rows)
        out["online"] = {
            "ctr": float((rows["click"].to_numpy(np.float64) > 0).mean()) if "click" in rows else None,
            "hides_per_request": float(negative / requests),
            "impressions_per_request": float(len(rows) / requests),
        }
    return out


def _rse(y: np.ndarray, p: np.ndarray, requests: np.ndarray) -> float | None:
    """The calibration ratio's relative standard error (``ratio_rse``); None where it has none
    (no positive), as JSON holds no infinity."""
    rse = ratio_rse(y, np.clip(p, 1e-6, 1 - 1e-6), requests) if len(y) else math.inf
    return rse if math.isfinite(rse) else None


def save_reference(reference: dict[str, Any], folder: Path) -> Path:
    path = Path(folder) / REFERENCE_FILE
    path.write_text(json.dumps(reference))
    return path


def load_reference(folder: Path) -> dict[str, Any] | None:
    """The bundle's reference, or None for a bundle saved without one (an older bundle)."""
    path = Path(folder) / REFERENCE_FILE
    if not path.exists():
        return None
    try:
        reference = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is unreadable: {exc}") from exc
    if not isinstance(reference, dict) or reference.get("format") != REFERENCE_FORMAT:
        raise CheckpointError(f"{path} is not a monitoring reference of format {REFERENCE_FORMAT}")
    return reference


def window_reference(
    impressions: pd.DataFrame,
    settled: pd.DataFrame,
    features: Sequence[AnyFeature],
    tasks: Sequence[str],
    calibrate: Callable[[np.ndarray], np.ndarray],
    cfg: MonitoringConfig,
    seed: int = 0,
) -> dict[str, Any]:
    """A version's serving baseline: the reference of one window it served (its ``impressions``,
    with ``logged`` feature values and ``serving_info`` predictions; ``settled``, those whose
    outcomes are in, for the calibration and the online rates)."""
    rows = pd.DataFrame({f.name: [d.get(f.name, np.nan) for d in impressions["logged"]] for f in features})
    raw = (
        np.column_stack(
            [[d.get(f"p:{t}", np.nan) for d in impressions["serving_info"]] for t in tasks]
        ).astype(np.float64)
        if len(impressions)
        else np.zeros((0, len(tasks)))
    )
    out = build_reference(
        pd.concat([rows, impressions[["timestamp", "request_id"]]], axis=1),
        features,
        [],
        raw,
        calibrate,
        np.ones(len(rows), dtype=bool),
        cfg,
        seed,
    )
    requests = impressions["request_id"].to_numpy()
    for t, task in enumerate(tasks):  # predictions: the items the heavy ranker scored
        scored = raw[one_per_request(requests, np.isfinite(raw[:, t]), seed), t]
        try:
            out["predictions"][task] = profile(scored, False, cfg.bins, cfg.sample, seed=seed)
        except DriftError as exc:
            out["unprofiled"][f"p:{task}"] = str(exc)
    settled_ref = build_reference(
        settled, [], [], np.zeros((len(settled), 0)), calibrate, np.ones(len(settled), bool), cfg, seed
    )
    out["online"] = settled_ref["online"]
    if len(settled):
        raw_settled = np.column_stack(
            [[d.get(f"p:{t}", np.nan) for d in settled["serving_info"]] for t in tasks]
        ).astype(np.float64)
        for t, task in enumerate(tasks):  # the calibration the version had on its own traffic
            scored = np.isfinite(raw_settled[:, t])
            if task not in settled or not scored.any():
                continue
            probs = np.zeros((int(scored.sum()), len(tasks)))
            probs[:, t] = raw_settled[scored, t]
            p = calibrate(probs)[:, t]
            y = (settled[task].to_numpy(np.float64)[scored] > 0).astype(np.float64)
            out["calibration"][task] = {
                "rate": float(y.mean()),
                "predicted": float(p.mean()),
                "ece": ece(y, p),
                "ratio_rse": _rse(y, p, settled["request_id"].to_numpy()[scored]),
            }
    out["served"] = True
    out["baseline"] = True
    return out
