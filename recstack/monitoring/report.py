"""``recstack report``: one HTML page (plots inline) of what monitoring saw over a time range.

Sections: the breaches; drift per feature and per prediction head over time (PSI per window);
calibration curves per window (predicted against observed rate, in ten equal-count bins) and ECE over
time; online metrics over time (CTR, engagement value, hides and reports per request, coverage,
exploration share, online AUC); latency per stage; the registry's history (each version with its
data range and gate metric, each promotion and rollback with its time and reason).

The findings come from the monitoring table (the runs ``recstack monitor`` and the worker recorded),
or, with ``from_log``, from checks run now on consecutive windows of the event log over the range
(nothing is recorded, nothing acts): a report of any time range of the log.
"""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from recstack.config import Settings
from recstack.errors import RecstackError
from recstack.events.base import EventLog
from recstack.monitoring.monitor import Monitor, MonitorRun, MonitorTable

ONLINE = ("ctr", "engagement_value", "hides_reports_per_request", "coverage", "explore_share", "auc_click")


def runs_frame(runs: list[MonitorRun]) -> pd.DataFrame:
    """Findings of ``runs`` in the monitoring table's columns."""
    rows = [
        {
            "run_id": r.run_id,
            "at": r.at.isoformat(),
            "window_start": r.start.isoformat(),
            "window_end": r.end.isoformat(),
            "version": version,
            "check_name": f.check,
            "subject": f.subject,
            "status": f.status,
            "breached": int(f.breached),
            "value": f.value,
            "threshold": f.threshold,
            "stats": json.dumps(f.values, default=str),
            "detail": f.detail,
        }
        for r in runs
        for version, f in r.findings
    ]
    return pd.DataFrame(rows, columns=[
        "run_id", "at", "window_start", "window_end", "version", "check_name", "subject", "status",
        "breached", "value", "threshold", "stats", "detail",
    ])  # fmt: skip


def findings_from_log(
    settings: Settings, log: EventLog, since: datetime, until: datetime, monitor: Monitor | None = None
) -> pd.DataFrame:
    """Checks on consecutive windows of ``[monitoring] window_s`` over [since, until) of the log."""
    if since >= until:
        raise RecstackError(f"--since {since.isoformat()} is not before --until {until.isoformat()}")
    monitor = monitor or Monitor(settings, log)
    step = timedelta(seconds=settings.monitoring.window_s)
    runs, start = [], since
    while start < until:
        end = min(start + step, until)
        runs.append(monitor.check(start, end))
        start = end
    return runs_frame(runs)


def _figure(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<p><img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}"></p>'


def _series(frame: pd.DataFrame, check: str) -> pd.DataFrame:
    part = frame[(frame["check_name"] == check) & frame["value"].notna()].copy()
    part["t"] = pd.to_datetime(part["window_end"], utc=True, format="ISO8601")
    return part


def _table(rows: list[list[Any]], head: list[str]) -> str:
    cells = "".join("<th>" + html.escape(str(h)) + "</th>" for h in head)
    body = "".join(
        "<tr>" + "".join("<td>" + html.escape(str(c)) + "</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{cells}</tr>{body}</table>"


def write_report(
    frame: pd.DataFrame,
    path: Path,
    registry: dict[str, Any] | None = None,
    title: str = "recstack monitoring",
) -> Path:
    """The HTML page of the findings ``frame`` (the monitoring table's columns) and the registry's
    history (``versions``, ``alias_log``) into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts: list[str] = [f"<h1>{html.escape(title)}</h1>"]
    if frame.empty:
        parts.append("<p>No monitoring runs in this range.</p>")
    else:
        first, last = frame["window_start"].min(), frame["window_end"].max()
        runs = frame["run_id"].nunique()
        parts.append(f"<p>{runs} runs over windows from {html.escape(first)} to {html.escape(last)}.</p>")
        breached = frame[frame["breached"] == 1]
        parts.append(f"<h2>Breaches ({len(breached)})</h2>")
        parts.append(
            _table(
                [
                    [r.window_end, r.version, r.check_name, r.subject, r.status, r.value, r.detail]
                    for r in breached.itertuples()
                ][-200:],
                ["window end", "version", "check", "subject", "status", "value", "detail"],
            )
            if len(breached)
            else "<p>None.</p>"
        )
        for check, label in (("feature_drift", "feature"), ("prediction_drift", "prediction head")):
            part = _series(frame, check)
            if part.empty:
                continue
            fig, ax = plt.subplots(figsize=(8, 3.5))
            for subject, rows in part.groupby("subject"):
                ax.plot(rows["t"], rows["value"], marker=".", label=str(subject))
            threshold = part["threshold"].dropna()
            if len(threshold):
                ax.axhline(float(threshold.iloc[0]), color="red", linestyle="--", label="threshold")
            ax.set_yscale("symlog", linthresh=0.1)
            ax.set_ylabel("PSI")
            ax.set_title(f"{check.replace('_', ' ')}: PSI per {label} per window")
            ax.legend(fontsize=6, ncol=3)
            fig.autofmt_xdate()
            parts.append(f"<h2>{check.replace('_', ' ').capitalize()}</h2>" + _figure(fig))
        calibration = frame[frame["check_name"] == "calibration"]
        curves = [(r, json.loads(r.stats)) for r in calibration.itertuples()]
        curves = [(r, s) for r, s in curves if s.get("curve_predicted")]
        if curves:
            parts.append("<h2>Calibration</h2>")
            tasks = sorted({r.subject for r, _ in curves})
            fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.2), squeeze=False)
            for ax, task in zip(axes[0], tasks, strict=True):
                mine = [(r, s) for r, s in curves if r.subject == task][-8:]
                for r, s in mine:
                    ax.plot(s["curve_predicted"], s["curve_observed"], marker=".", label=r.window_end[:16])
                top = max(max(s["curve_predicted"] + s["curve_observed"]) for _, s in mine)
                ax.plot([0, top], [0, top], color="grey", linestyle=":")
                ax.set_title(task)
                ax.set_xlabel("predicted")
                ax.set_ylabel("observed")
                ax.legend(fontsize=5)
            parts.append(_figure(fig))
            part = _series(frame, "calibration")
            fig, ax = plt.subplots(figsize=(8, 3))
            for subject, rows in part.groupby("subject"):
                ax.plot(rows["t"], rows["value"], marker=".", label=str(subject))
            ax.set_ylabel("ECE")
            ax.set_title("ECE per task per window")
            ax.legend(fontsize=7)
            fig.autofmt_xdate()
            parts.append(_figure(fig))
        online = _series(frame, "online")
        shown = [m for m in ONLINE if m in set(online["subject"])]
        if shown:
            fig, axes = plt.subplots(len(shown), 1, figsize=(8, 1.8 * len(shown)), sharex=True, squeeze=False)
            for ax, metric in zip(axes[:, 0], shown, strict=True):
                rows = online[online["subject"] == metric]
                ax.plot(rows["t"], rows["value"], marker=".")
                ax.set_ylabel(metric, fontsize=7)
            fig.autofmt_xdate()
            parts.append("<h2>Online metrics</h2>" + _figure(fig))
        latency = online[online["subject"].str.startswith("latency_ms:")]
        if not latency.empty:
            fig, ax = plt.subplots(figsize=(8, 3))
            for subject, rows in latency.groupby("subject"):
                ax.plot(rows["t"], rows["value"], marker=".", label=str(subject).split(":", 1)[1])
            ax.set_ylabel("ms (median)")
            ax.set_title("latency per stage per window")
            ax.legend(fontsize=7, ncol=4)
            fig.autofmt_xdate()
            parts.append("<h2>Latency per stage</h2>" + _figure(fig))
        skew = frame[frame["check_name"] == "skew"]
        if not skew.empty:
            worst = skew.sort_values("value", ascending=False).drop_duplicates("subject")
            parts.append("<h2>Train/serve skew (share of logged values that differ, worst window)</h2>")
            parts.append(
                _table(
                    [[r.subject, r.value, r.status] for r in worst.itertuples()],
                    ["feature", "share", "status"],
                )
            )
    if registry is not None:
        parts.append("<h2>Registry</h2>")
        versions = registry.get("versions", [])
        parts.append(
            _table(
                [
                    [
                        v["version"],
                        ", ".join(v.get("aliases", [])),
                        v.get("data_start"),
                        v.get("data_end"),
                        json.dumps(
                            {
                                k: round(x, 4)
                                for k, x in v.get("metrics", {}).items()
                                if not k.startswith("baseline")
                            }
                        ),
                    ]
                    for v in versions
                ],
                ["version", "aliases", "data start", "data end", "metrics"],
            )
        )
        events = registry.get("alias_log", [])
        parts.append(
            _table(
                [[e["at"], e["action"], e["version"], e["reason"]] for e in events],
                ["at", "action", "version", "reason"],
            )
            if events
            else "<p>No promotion or rollback recorded.</p>"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>recstack monitoring</title><style>"
        "body{font-family:sans-serif;max-width:1000px;margin:2em auto}td,th{padding:2px 8px;font-size:12px;"
        "text-align:left}table{border-collapse:collapse}tr:nth-child(even){background:#f4f4f4}</style>"
        "</head><body>" + "".join(parts) + "</body></html>"
    )
    return path


def report(
    settings: Settings,
    log: EventLog,
    path: Path,
    since: datetime | None = None,
    until: datetime | None = None,
    from_log: bool = False,
) -> Path:
    """The page for [since, until) (default: everything recorded); ``from_log`` runs the checks
    on the log's windows instead of reading the table (it then needs both bounds)."""
    from recstack.registry import Registry

    if from_log:
        if since is None or until is None:
            raise RecstackError("a report from the log needs --since and --until")
        frame = findings_from_log(settings, log, since, until)
    else:
        frame = MonitorTable(settings.monitoring_table()).findings(since, until)
    registry = Registry(settings)
    history = {"versions": registry.versions(), "alias_log": registry.alias_log()}
    return write_report(frame, path, history)
