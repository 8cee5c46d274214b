"""The checks of one window served by one bundle: each returns :class:`Finding` rows.

- ``feature_drift`` / ``prediction_drift``: every feature the rankers read (``[monitoring] skip``
  aside) and every task head's raw probability against the bundle's reference (PSI and KS, or PSI
  and chi-squared). A breach needs the effect size over its threshold (PSI, or KS D / Cramér's V with
  a p-value under ``p_value``).
- ``calibration``: per task, on the settled impressions the heavy ranker scored, the calibrated
  predictions against the outcomes: ECE and calibration in the large (observed / predicted rate).
  A breach is a slide (the ratio off the reference's by more than ``calibration_ratio``) or an
  outright miscalibration (ECE over ``ece``), each with its z score over ``calibration_z``.
- ``skew``: a sample of served impressions whose features are materialized offline at their times;
  a feature breaches when more than ``skew_share`` of its logged values differ from the offline ones.
- ``online``: CTR, engagement value, actions per user, hides and reports per request, catalog
  coverage, exploration share, online AUC of the click head, latency per stage, degraded requests,
  candidates per stage and the share of each source in what was served. CTR, hides, latency and
  degraded requests have thresholds; the rest is reported.

Statuses: ``ok``, ``breach``, ``too_small`` (fewer than ``min_rows`` values: reported, never a
breach), ``constant`` (a reference with one value and a window with the same one), ``off_policy``
(drift against a reference the API did not serve: reported, not a breach), ``settling`` (drift or
calibration in a version's first ``settle_windows`` windows, while its own feedback loop still moves
the features it reads: reported, not a breach), ``missing`` (a feature the reference has and the
window's log does not, or the reverse: a breach of the logging contract).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from recstack.config import Settings
from recstack.eval.metrics import auc, ece
from recstack.events.base import EventLog
from recstack.features.definitions import LastN, RetrievalScore, TextEmbedding
from recstack.features.feed import history_similarity
from recstack.features.offline import materialize
from recstack.monitoring.drift import DriftError, DriftStat, compare, one_per_request, ratio_rse, residual_sd
from recstack.monitoring.window import Window
from recstack.servables.bundle import ServingBundle

OK, BREACH, TOO_SMALL, OFF_POLICY, MISSING, CONSTANT, SETTLING = (
    "ok",
    "breach",
    "too_small",
    "off_policy",
    "missing",
    "constant",
    "settling",
)


@dataclass
class Finding:
    check: str  # feature_drift | prediction_drift | calibration | skew | online
    subject: str  # a feature, a task head or an online metric
    status: str
    value: float | None = None  # the primary statistic (PSI, ECE, mismatch share, the metric)
    threshold: float | None = None
    values: dict[str, Any] = field(default_factory=dict)  # every statistic computed
    detail: str = ""

    @property
    def breached(self) -> bool:
        return self.status in (BREACH, MISSING)


def _clean(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def drift_finding(
    check: str, stat: DriftStat, settings: Settings, served_reference: bool, tests: int = 1
) -> Finding:
    """The finding of one drift statistic; ``tests``: how many the run makes (the p-value must be
    under ``p_value / tests``, Bonferroni: the chance of any false alarm in a run stays under
    ``p_value``)."""
    cfg = settings.monitoring
    values = {k: _clean(v) for k, v in stat.__dict__.items() if isinstance(v, float | int) and k != "n"}
    values["n"] = stat.n
    if stat.n < cfg.min_rows:
        return Finding(check, stat.name, TOO_SMALL, stat.psi, cfg.psi, values, f"{stat.n} values < min_rows")
    # PSI beyond what two samples of these sizes differ by with no change (drift.psi_noise)
    psi_beyond = stat.psi - stat.psi_noise
    psi_how = f"PSI {stat.psi:.3f} less its sampling noise {stat.psi_noise:.3f} (> {cfg.psi})"
    if stat.kind == "numeric":
        effect = stat.ks is not None and stat.ks > cfg.ks
        how = f"{psi_how}, KS D {stat.ks:.3f} (> {cfg.ks}), p {stat.ks_p:.2g}"
    else:
        effect = (stat.cramers_v or 0.0) > cfg.cramers_v
        how = (
            f"{psi_how}, Cramér's V {stat.cramers_v:.3f} bias-corrected, {stat.cramers_v_raw:.3f} raw "
            f"(> {cfg.cramers_v}), p {stat.chi2_p:.2g}"
        )
    p_value = stat.ks_p if stat.kind == "numeric" else stat.chi2_p
    significant = 1.0 if p_value is None else p_value
    drifted = (psi_beyond > cfg.psi or effect) and significant < cfg.p_value / max(tests, 1)
    status = (BREACH if served_reference else OFF_POLICY) if drifted else OK
    return Finding(check, stat.name, status, stat.psi, cfg.psi, values, how)


def drift_tests(bundle: ServingBundle, settings: Settings) -> int:
    """How many drift tests a window of ``bundle`` gets: one per checked feature and per head."""
    skipped = settings.drift_skipped()
    features = [f for f in bundle.features if not isinstance(f, TextEmbedding) and f.name not in skipped]
    return len(features) + len(bundle.tasks)


def feature_drift(
    window: Window, bundle: ServingBundle, reference: dict[str, Any], settings: Settings
) -> list[Finding]:
    frame = window.impressions
    out: list[Finding] = []
    skipped = settings.drift_skipped()
    logged_names = set().union(*(d.keys() for d in frame["logged"])) if len(frame) else set()
    served = bool(reference.get("served"))
    rows = frame.iloc[one_per_request(frame["request_id"].to_numpy(), seed=settings.train.seed)]
    tests = drift_tests(bundle, settings)
    for f in bundle.features:
        if isinstance(f, TextEmbedding) or f.name in skipped:
            continue
        ref = reference["features"].get(f.name)
        if ref is None:
            out.append(
                Finding(
                    "feature_drift",
                    f.name,
                    MISSING,
                    detail="the bundle's reference has no profile of this feature "
                    f"({reference.get('unprofiled', {}).get(f.name, 'not in the reference')})",
                )
            )
            continue
        if len(frame) and f.name not in logged_names:
            out.append(
                Finding("feature_drift", f.name, MISSING, detail="serving logged no value of this feature")
            )
            continue
        values = np.array([d.get(f.name, np.nan) for d in rows["logged"]], dtype=np.float64)
        out.append(_drift_or_small("feature_drift", f.name, ref, values, settings, served, tests))
    return out


def _drift_or_small(
    check: str,
    name: str,
    ref: dict[str, Any],
    values: np.ndarray,
    settings: Settings,
    served: bool,
    tests: int = 1,
) -> Finding:
    cfg = settings.monitoring
    finite = values[np.isfinite(values)]
    if len(finite) < cfg.min_rows:
        why = f"{len(finite)} values (one impression per request) < min_rows"
        return Finding(check, name, TOO_SMALL, None, cfg.psi, {"n": len(finite)}, why)
    if ref["kind"] == "numeric" and ref.get("std", 1.0) == 0.0 and np.all(finite == ref["mean"]):
        return Finding(
            check, name, CONSTANT, 0.0, cfg.psi, {"n": len(finite)}, "constant, as in the reference"
        )
    try:
        stat = compare(name, ref, finite)
    except DriftError as exc:  # pragma: no cover - finite values were checked above
        return Finding(check, name, TOO_SMALL, detail=str(exc))
    return drift_finding(check, stat, settings, served, tests)


def _predictions(frame: pd.DataFrame, task: str) -> np.ndarray:
    key = f"p:{task}"
    return np.array([d.get(key, np.nan) for d in frame["serving_info"]], dtype=np.float64)


def prediction_drift(
    window: Window, bundle: ServingBundle, reference: dict[str, Any], settings: Settings
) -> list[Finding]:
    out = []
    seed = settings.train.seed
    tests = drift_tests(bundle, settings)
    for task in bundle.tasks:
        ref = reference["predictions"].get(task)
        if ref is None:
            out.append(
                Finding(
                    "prediction_drift", task, MISSING, detail="the reference has no predictions of this head"
                )
            )
            continue
        values = _predictions(window.impressions, task)
        sampled = one_per_request(window.impressions["request_id"].to_numpy(), np.isfinite(values), seed)
        values = values[sampled]
        out.append(
            _drift_or_small(
                "prediction_drift", task, ref, values, settings, bool(reference.get("served")), tests
            )
        )
    return out


def calibration(
    window: Window, bundle: ServingBundle, reference: dict[str, Any] | None, settings: Settings
) -> list[Finding]:
    """Per task: a breach when calibration slid from the reference's (observed / predicted rate
    off the reference's ratio by more than ``calibration_ratio``) or when the head is miscalibrated
    outright (ECE over ``ece``), either with its z score over ``calibration_z``."""
    cfg = settings.monitoring
    frame = window.settled
    known = (reference or {}).get("calibration", {})
    out = []
    for t, task in enumerate(bundle.tasks):
        raw = _predictions(frame, task)
        scored = np.isfinite(raw)
        if task not in frame or scored.sum() < cfg.min_rows:
            out.append(
                Finding(
                    "calibration",
                    task,
                    TOO_SMALL,
                    None,
                    cfg.ece,
                    {"n": int(scored.sum())},
                    f"{int(scored.sum())} settled, scored impressions < min_rows",
                )
            )
            continue
        probs = np.zeros((int(scored.sum()), len(bundle.tasks)))
        probs[:, t] = raw[scored]
        p = np.clip(bundle.calibrate(probs)[:, t], 1e-6, 1 - 1e-6)
        y = (frame[task].to_numpy(np.float64)[scored] > 0).astype(np.float64)
        error = ece(y, p)
        predicted, observed = float(p.mean()), float(y.mean())
        ratio = observed / predicted
        ref = known.get(task) or {}
        ref_ratio = ref["rate"] / ref["predicted"] if ref.get("rate") and ref.get("predicted") else 1.0
        requests = frame["request_id"].to_numpy()[scored]
        z = _z(y, p, requests)
        # against the reference's ratio: expected positives ref_ratio * p, not clipped to 1 (a head
        # that predicts a tenth of what is clicked expects more than one click of some impressions;
        # clipping them would lower the expectation and bias z up). The reference's ratio is an
        # estimate too: its standard error (relative, ``ratio_rse``) widens the difference's
        z_ref = _z(y, p * ref_ratio, requests)
        se_here = ratio_rse(y, p, requests) * ratio
        se_ref = float(ref.get("ratio_rse") or 0.0) * ref_ratio
        if math.isfinite(se_here) and se_here > 0:
            z_ref /= math.sqrt(1.0 + (se_ref / se_here) ** 2)
        # a rate estimated from a handful of positives says nothing: both tests need min_positives
        # observed or expected (under the reference's ratio)
        enough = max(y.sum(), (p * ref_ratio).sum()) >= cfg.min_positives
        slid = (
            enough and abs(ratio / ref_ratio - 1) > cfg.calibration_ratio and abs(z_ref) > cfg.calibration_z
        )
        miscalibrated = (
            max(y.sum(), p.sum()) >= cfg.min_positives and error > cfg.ece and abs(z) > cfg.calibration_z
        )
        order = np.argsort(p, kind="stable")
        bins = np.array_split(order, min(10, len(order)))  # equal-count bins: the reliability curve
        values = {
            "curve_predicted": [float(p[b].mean()) for b in bins],
            "curve_observed": [float(y[b].mean()) for b in bins],
            "ece": error,
            "observed": observed,
            "predicted": predicted,
            "ratio": ratio,
            "reference_ratio": ref_ratio,
            "z": z,
            "z_reference": z_ref,
            "slid": slid,
            "miscalibrated": miscalibrated,
            "n": len(y),
        }
        detail = (
            f"observed/predicted {ratio:.3f} against the reference's {ref_ratio:.3f} (off by > "
            f"{cfg.calibration_ratio:.0%}, z {z_ref:.1f}); ECE {error:.4f} (> {cfg.ece}, z {z:.1f}); "
            f"|z| > {cfg.calibration_z} needed"
        )
        status = BREACH if slid or miscalibrated else OK
        out.append(Finding("calibration", task, status, error, cfg.ece, values, detail))
    return out


def _z(y: np.ndarray, expected: np.ndarray, groups: np.ndarray) -> float:
    """(observed - expected) positives over their standard error (``residual_sd``: the request the
    unit); 0 with fewer than two requests."""
    sd, n = residual_sd(y, expected, groups)
    return float((y - expected).sum() / sd) if n >= 2 else 0.0


def skew(
    window: Window, bundle: ServingBundle, log: EventLog, settings: Settings, seed: int = 0
) -> list[Finding]:
    """The logged feature values of up to ``skew_sample`` impressions against the offline path at
    the same moments (the retrieval score is request-time and not recomputed)."""
    cfg = settings.monitoring
    frame = window.impressions
    frame = frame[[bool(d) for d in frame["logged"]]]
    if cfg.skew_sample == 0:
        return []
    if len(frame) == 0:
        return [Finding("skew", "*", TOO_SMALL, detail="no impression in the window logged feature values")]
    rng = np.random.default_rng(seed)
    rows = frame.iloc[np.sort(rng.choice(len(frame), size=min(cfg.skew_sample, len(frame)), replace=False))]
    features = [f for f in bundle.features if not isinstance(f, RetrievalScore | TextEmbedding)]
    table = pa.table(
        {
            "timestamp": pa.array(rows["timestamp"]),
            "user_id": rows["user_id"].astype(str).tolist(),
            "item_id": rows["item_id"].astype(str).tolist(),
            "surface": rows["surface"].tolist(),
            "context": rows["context"].tolist(),
        }
    )
    offline = materialize(log.table(end=window.end), table, features)
    index = bundle.retriever.item_index
    out = []
    for f in features:
        logged = np.array([d.get(f.name, np.nan) for d in rows["logged"]], dtype=np.float64)
        if isinstance(f, LastN):
            sequences = offline.column(f.name).to_pylist()
            expected = np.zeros(len(rows))
            for n, (item, seq) in enumerate(zip(rows["item_id"], sequences, strict=True)):
                at = [index[i] for i in seq if i in index]
                if item in index and at:
                    expected[n] = history_similarity(bundle.vectors[[index[item]]], bundle.vectors[at])[0]
            tolerance = np.maximum(1e-5, 1e-6 * np.abs(expected))  # float32 sums in another order
        else:
            expected = offline.column(f.name).to_numpy(zero_copy_only=False).astype(np.float64)
            tolerance = cfg.skew_tolerance * np.maximum(np.abs(expected), 1.0)
        both_nan = np.isnan(logged) & np.isnan(expected)
        differ = ~both_nan & ~(np.abs(logged - expected) <= tolerance)
        share = float(differ.mean())
        status = BREACH if share > cfg.skew_share else OK
        examples = [
            {
                "item_id": str(rows["item_id"].iloc[i]),
                "logged": _clean(logged[i]),
                "offline": _clean(expected[i]),
            }
            for i in np.flatnonzero(differ)[:3]
        ]
        out.append(
            Finding(
                "skew",
                f.name,
                status,
                share,
                cfg.skew_share,
                {"share": share, "n": len(rows), "examples": examples},
                f"{int(differ.sum())} of {len(rows)} logged values differ from the offline path",
            )
        )
    return out


def _quantile(values: Sequence[float], q: float) -> float | None:
    return float(np.quantile(values, q)) if len(values) else None


def online(
    window: Window, bundle: ServingBundle, reference: dict[str, Any], settings: Settings, catalog: int
) -> list[Finding]:
    cfg = settings.monitoring
    frame, settled = window.impressions, window.settled
    requests = frame.drop_duplicates("request_id")
    n_req = len(requests)
    out: list[Finding] = []
    ref = reference.get("online", {}) if reference.get("served") else {}

    def add(
        name: str,
        value: float | None,
        threshold: float | None = None,
        breached: bool = False,
        detail: str = "",
        **values: Any,
    ) -> None:
        status = BREACH if breached else OK
        out.append(
            Finding(
                "online", name, status, _clean(value), threshold, {"value": _clean(value), **values}, detail
            )
        )

    if n_req == 0:
        return [Finding("online", "requests", TOO_SMALL, 0.0, None, {}, "no impression in the window")]
    add("requests", float(n_req))
    add("impressions", float(len(frame)))
    small = len(settled) < cfg.min_rows
    if len(settled):
        ctr = float((settled["click"] > 0).mean())
        ref_ctr = ref.get("ctr")
        request_ids = settled["request_id"].to_numpy()
        clicked = (settled["click"].to_numpy(np.float64) > 0).astype(np.float64)
        expected = (ref_ctr or 0.0) * len(settled)
        # a fall beyond ctr_drop that the request-clustered t statistic says is not noise
        t = _z(clicked, np.full(len(settled), ref_ctr or 0.0), request_ids)
        low = (
            ref_ctr is not None
            and not small
            and expected >= cfg.min_positives
            and ctr < (1 - cfg.ctr_drop) * ref_ctr
            and t < -cfg.calibration_z
        )
        add(
            "ctr",
            ctr,
            None if ref_ctr is None else (1 - cfg.ctr_drop) * ref_ctr,
            low,
            f"reference {ref_ctr}" if ref_ctr is not None else "no served reference",
            reference=ref_ctr,
        )
        weights = settings.serving.value_weights
        value = sum(w * (settled[t].to_numpy(np.float64) > 0) for t, w in weights.items() if t in settled)
        add("engagement_value", float(np.mean(value)) if len(settled) else None)
        actions = sum(
            (settled[k].to_numpy(np.float64) > 0).sum()
            for k in ("click", "like", "share", "comment")
            if k in settled
        )
        add("actions_per_user", float(actions / max(settled["user_id"].nunique(), 1)))
        hidden = np.zeros(len(settled))  # hides and reports of each impression
        for k in ("hide", "report"):
            if k in settled:
                hidden += settled[k].to_numpy(np.float64).clip(0, 1)
        negative = float(hidden.sum())
        per_request = float(negative / max(settled["request_id"].nunique(), 1))
        ref_hides = ref.get("hides_per_request")
        per_impression = (ref_hides or 0.0) / max(float(ref.get("impressions_per_request") or 1.0), 1e-9)
        t_hides = _z(hidden, np.full(len(settled), per_impression), request_ids)
        high = (
            ref_hides is not None
            and not small
            and negative >= cfg.min_positives  # a rate from a handful of hides says nothing
            and per_request > (1 + cfg.hides_rise) * max(ref_hides, 1e-3)
            and t_hides > cfg.calibration_z
        )
        add(
            "hides_reports_per_request",
            per_request,
            None if ref_hides is None else (1 + cfg.hides_rise) * max(ref_hides, 1e-3),
            high,
            reference=ref_hides,
        )
        dwell = settled["dwell_seconds"].to_numpy(np.float64)
        add("dwell_per_impression_s", float(dwell.mean()))
        p_click = _predictions(settled, "click")
        scored = np.isfinite(p_click)
        labels = (settled["click"].to_numpy(np.float64) > 0)[scored]
        if scored.sum() >= 2 and 0 < labels.sum() < len(labels):
            add("auc_click", auc(labels.astype(np.float64), p_click[scored]))
    add("coverage", frame["item_id"].nunique() / max(catalog, 1), catalog=catalog)
    info = frame["serving_info"]
    add("explore_share", float(np.mean([bool(d.get("explore")) for d in info])))
    sources = pd.Series([str(d.get("source", "")) for d in info]).value_counts(normalize=True)
    for source, share in sources.items():
        if source:
            add(f"served_share:{source}", float(share))
    first = [d for d in requests["serving_info"] if any(k.startswith("ms:") for k in d)]
    if first:
        stages = sorted({k[3:] for d in first for k in d if k.startswith("ms:")})
        totals = [sum(float(v) for k, v in d.items() if k.startswith("ms:")) for d in first]
        p99 = _quantile(totals, 0.99)
        add(
            "latency_p99_ms",
            p99,
            cfg.latency_p99_ms,
            p99 is not None and p99 > cfg.latency_p99_ms,
            p50=_quantile(totals, 0.5),
        )
        for stage in stages:
            ms = [float(d[f"ms:{stage}"]) for d in first if f"ms:{stage}" in d]
            add(f"latency_ms:{stage}", _quantile(ms, 0.5), p99=_quantile(ms, 0.99))
            sizes = [float(d[f"n:{stage}"]) for d in first if f"n:{stage}" in d]
            if sizes:
                add(f"candidates:{stage}", float(np.mean(sizes)))
        degraded = float(np.mean([bool(d.get("degraded")) for d in first]))
        add("degraded_share", degraded, cfg.degraded_share, degraded > cfg.degraded_share)
    return out


def findings_json(findings: Sequence[Finding]) -> str:
    return json.dumps([f.__dict__ for f in findings], default=str)
