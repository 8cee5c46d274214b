"""``recstack experiment report NAME``: an experiment analysed from the event log.

Users are taken from the impressions logged with the experiment's arm; each user's metrics over the
experiment's period are compared, arm by arm, with the control's (Welch). The primary metric is also
compared after CUPED, with each user's same metric over the ``pre_days`` before the experiment's
first impression as the covariate (0 for users new since). The arms' user counts are checked against
their weights (sample-ratio mismatch), guardrails are checked for non-inferiority, and a ship decision
is made per arm. ``plot`` draws each metric's relative difference with its interval. An
interleaving experiment is analysed by ``analyse_interleaving``: per-request wins, per-user
preference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recstack.config import ExperimentDef, Settings
from recstack.errors import RecstackError
from recstack.events.join import join_engagements
from recstack.experiments.analysis import (
    Comparison,
    Decision,
    GuardrailCheck,
    SampleRatio,
    cuped,
    decide,
    guardrail,
    srm,
    welch,
)
from recstack.experiments.assignment import parse_label
from recstack.experiments.interleaving import Preference, preference
from recstack.experiments.metrics import LOWER_IS_BETTER, METRICS, arms_of, experiment_start, user_metrics


@dataclass
class ArmResult:
    arm: str
    comparisons: dict[str, Comparison]
    cuped: Comparison | None
    variance_reduction: float  # 1 - var(adjusted) / var(raw) of the primary metric, pooled
    guardrails: list[GuardrailCheck]
    decision: Decision


@dataclass
class ExperimentReport:
    name: str
    control: str
    metric: str
    users: dict[str, int]
    ratio: SampleRatio
    switched: int
    arms: list[ArmResult] = field(default_factory=list)
    means: dict[str, dict[str, float]] = field(default_factory=dict)  # arm -> metric -> mean


def find_experiment(settings: Settings, name: str) -> ExperimentDef:
    for test in settings.experiments.tests:
        if test.name == name:
            return test
    known = [t.name for t in settings.experiments.tests]
    raise RecstackError(
        f"no experiment named {name!r} in [experiments] tests (configured: {known or 'none'})"
    )


@dataclass
class InterleaveReport:
    name: str
    arms: tuple[str, str]
    requests: int  # interleaved requests in the log
    decided: int  # of those, requests where one arm got more clicks
    preference: Preference  # per user: share of decided requests the first arm won - 1/2


def analyse_interleaving(settings: Settings, test: ExperimentDef, events: pa.Table) -> InterleaveReport:
    """Per request, the arm whose items got more clicks wins; per user, the share of their decided
    requests the first arm won, tested against 1/2."""
    first, second = (a.name for a in test.arms)
    joined = join_engagements(events, settings.event_log.attribution_window_s).table
    frame = joined.select(["request_id", "user_id", "experiment_arm", "click"]).to_pandas()
    labels = {label: parse_label(label).get(test.name) for label in frame["experiment_arm"].dropna().unique()}
    frame["arm"] = frame["experiment_arm"].map(labels)
    frame = frame[frame["arm"].isin([first, second])]
    if frame.empty:
        raise RecstackError(f"experiment {test.name!r} has no interleaved impressions in the log yet")
    frame["a"] = (frame["arm"] == first) * frame["click"]
    frame["b"] = (frame["arm"] == second) * frame["click"]
    per_request = frame.groupby("request_id").agg(user=("user_id", "first"), a=("a", "sum"), b=("b", "sum"))
    credits = np.sign(per_request["a"] - per_request["b"]).to_numpy()
    pref = preference(per_request["user"].to_numpy(), credits, settings.experiments.alpha)
    return InterleaveReport(test.name, (first, second), len(per_request), int((credits != 0).sum()), pref)


def analyse(settings: Settings, test: ExperimentDef, events: pa.Table) -> ExperimentReport:
    cfg = settings.experiments
    valid = set(METRICS) | {g.metric for g in test.guardrails} | {test.metric}
    if unknown := sorted(valid - set(METRICS)):
        raise RecstackError(f"experiment {test.name}: unknown metrics {unknown}; valid: {list(METRICS)}")
    start = experiment_start(events, test.name)
    if start is None:
        raise RecstackError(f"experiment {test.name!r} has no impressions in the log yet: nothing to analyse")
    times = events["timestamp"]
    during = events.filter(pc.greater_equal(times, pa.scalar(start.to_pydatetime(), times.type)))
    pre_start = start - pd.Timedelta(days=cfg.pre_days)
    before = events.filter(
        pc.and_(
            pc.less(times, pa.scalar(start.to_pydatetime(), times.type)),
            pc.greater_equal(times, pa.scalar(pre_start.to_pydatetime(), times.type)),
        )
    )
    assigned = arms_of(during, test.name)
    weights = settings.serving.value_weights
    metrics = user_metrics(during, weights).join(assigned.of.rename("arm"), how="inner")
    pre = user_metrics(before, weights) if before.num_rows else pd.DataFrame(columns=list(METRICS))
    control = test.control_arm()
    counts = metrics["arm"].value_counts().to_dict()
    shares = {a.name: a.weight for a in test.arms}
    ratio = srm({k: int(v) for k, v in counts.items()}, shares, cfg.srm_alpha)
    report = ExperimentReport(test.name, control, test.metric, ratio.counts, ratio, assigned.switched)
    for arm in [a.name for a in test.arms]:
        group = metrics[metrics["arm"] == arm]
        report.means[arm] = {m: float(group[m].mean()) if len(group) else float("nan") for m in METRICS}
    base = metrics[metrics["arm"] == control]
    if len(base) < 2:
        raise RecstackError(f"experiment {test.name}: the control arm {control!r} has {len(base)} users")
    for arm in [a.name for a in test.arms if a.name != control]:
        group = metrics[metrics["arm"] == arm]
        if len(group) < 2:
            raise RecstackError(
                f"experiment {test.name}: arm {arm!r} has {len(group)} users: nothing to compare"
            )
        comparisons = {
            m: welch(base[m].to_numpy(), group[m].to_numpy(), cfg.alpha, cfg.power, m) for m in METRICS
        }
        adjusted, reduction = _cuped(base, group, pre, test.metric, cfg.alpha, cfg.power)
        primary = adjusted if adjusted is not None else comparisons[test.metric]
        checks = [
            guardrail(comparisons[g.metric], g.max_drop, g.metric not in LOWER_IS_BETTER)
            for g in test.guardrails
        ]
        decision = decide(primary, checks, ratio)
        report.arms.append(ArmResult(arm, comparisons, adjusted, reduction, checks, decision))
    return report


def _cuped(
    base: pd.DataFrame, group: pd.DataFrame, pre: pd.DataFrame, metric: str, alpha: float, power: float
) -> tuple[Comparison | None, float]:
    if metric not in pre.columns or not len(pre):
        return None, 0.0
    x_a = pre[metric].reindex(base.index).fillna(0.0).to_numpy(dtype=np.float64)
    x_b = pre[metric].reindex(group.index).fillna(0.0).to_numpy(dtype=np.float64)
    if np.var(np.concatenate([x_a, x_b])) == 0:
        return None, 0.0
    y_a, y_b = base[metric].to_numpy(dtype=np.float64), group[metric].to_numpy(dtype=np.float64)
    adj_a, adj_b, _ = cuped(y_a, x_a, y_b, x_b)
    raw = np.var(np.concatenate([y_a - y_a.mean(), y_b - y_b.mean()]))
    new = np.var(np.concatenate([adj_a - adj_a.mean(), adj_b - adj_b.mean()]))
    reduction = float(1 - new / raw) if raw > 0 else 0.0
    return welch(adj_a, adj_b, alpha, power, f"{metric} (CUPED)"), reduction


def plot(report: ExperimentReport, path: Path) -> Path:
    """Each metric's relative difference from the control with its interval, one panel per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = report.arms
    fig, axes = plt.subplots(1, max(len(arms), 1), figsize=(6 * max(len(arms), 1), 4), squeeze=False)
    for ax, arm in zip(axes[0], arms, strict=False):
        names = list(arm.comparisons)
        rel = [arm.comparisons[m].rel_diff * 100 for m in names]
        low = [(arm.comparisons[m].rel_diff - arm.comparisons[m].rel_ci_low) * 100 for m in names]
        high = [(arm.comparisons[m].rel_ci_high - arm.comparisons[m].rel_diff) * 100 for m in names]
        y = np.arange(len(names))
        ax.errorbar(rel, y, xerr=[low, high], fmt="o", capsize=4)
        ax.axvline(0, color="grey", lw=1)
        ax.set_yticks(y, names)
        ax.set_xlabel(f"{arm.arm} vs {report.control}: relative difference, %")
        ax.set_title(f"{report.name}: {'ship' if arm.decision.ship else 'no ship'}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
