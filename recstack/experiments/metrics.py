"""Per-user metrics from the event log, the unit of every A/B analysis.

``user_metrics(events, weights)`` reads an Arrow table in the log's schema and returns one row per
user who saw at least one impression: requests, impressions, the count of each engagement kind,
dwell seconds, and the derived metrics

    ctr                  clicks / impressions
    value                sum over kinds of weight x count, per impression (the value model's weights,
                         so it is the engagement value the feed optimizes, per item shown)
    actions              clicks + likes + shares + comments
    hides_per_request    hides / requests
    reports_per_request  reports / requests
    dwell                dwell seconds in total

``arms_of(events, experiment)``: each user's arm in ``experiment``, read from the impressions'
``experiment_arm`` column; a user logged in two arms (the config changed mid-test) is counted in
``switched`` and kept in the arm of their first impression.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from recstack.experiments.assignment import parse_label

KINDS = ("click", "like", "share", "comment", "hide", "report")
METRICS = ("ctr", "value", "actions", "hides_per_request", "reports_per_request", "dwell", "impressions")
LOWER_IS_BETTER = frozenset({"hides_per_request", "reports_per_request"})


def user_metrics(events: pa.Table, weights: dict[str, float]) -> pd.DataFrame:
    """One row per user with impressions (index: user_id); columns are METRICS plus the counts."""
    con = duckdb.connect()
    try:
        con.register("events", events.select(["kind", "user_id", "request_id", "dwell_seconds"]))
        counts = ", ".join(f"count(*) FILTER (WHERE kind = '{k}') AS {k}s" for k in KINDS)
        frame = con.sql(
            f"""
            SELECT user_id,
                   count(DISTINCT request_id) FILTER (WHERE kind = 'impression') AS requests,
                   count(*) FILTER (WHERE kind = 'impression') AS impressions,
                   {counts},
                   coalesce(sum(dwell_seconds) FILTER (WHERE kind = 'dwell'), 0) AS dwell
            FROM events WHERE user_id IS NOT NULL GROUP BY user_id
            """
        ).df()
    finally:
        con.close()
    frame = frame[frame["impressions"] > 0].set_index("user_id").sort_index()
    shown = frame["impressions"].to_numpy(dtype=np.float64)
    requests = np.maximum(frame["requests"].to_numpy(dtype=np.float64), 1)
    frame["ctr"] = frame["clicks"] / shown
    value = sum(float(weights.get(k, 0.0)) * frame[f"{k}s"].to_numpy(dtype=np.float64) for k in KINDS)
    frame["value"] = np.asarray(value) / shown
    frame["actions"] = frame["clicks"] + frame["likes"] + frame["shares"] + frame["comments"]
    frame["hides_per_request"] = frame["hides"] / requests
    frame["reports_per_request"] = frame["reports"] / requests
    return frame


@dataclass(frozen=True)
class Arms:
    of: pd.Series  # user_id -> arm name
    switched: int  # users logged in more than one arm


def arms_of(events: pa.Table, experiment: str) -> Arms:
    """Each user's arm in ``experiment`` from the impressions' ``experiment_arm`` labels."""
    con = duckdb.connect()
    try:
        con.register("events", events.select(["kind", "user_id", "timestamp", "experiment_arm"]))
        rows = con.sql(
            """
            SELECT user_id, experiment_arm, min(timestamp) AS first
            FROM events
            WHERE kind = 'impression' AND user_id IS NOT NULL AND experiment_arm IS NOT NULL
            GROUP BY user_id, experiment_arm
            """
        ).df()
    finally:
        con.close()
    labels = {label: parse_label(label).get(experiment) for label in rows["experiment_arm"].unique()}
    rows["arm"] = rows["experiment_arm"].map(labels)
    rows = rows.dropna(subset=["arm"]).sort_values(["user_id", "first"])
    per_user = rows.groupby("user_id")["arm"]
    switched = int((per_user.nunique() > 1).sum())
    return Arms(per_user.first(), switched)


def experiment_start(events: pa.Table, experiment: str) -> pd.Timestamp | None:
    """The time of the first impression logged in ``experiment`` (None if there is none)."""
    con = duckdb.connect()
    try:
        con.register("events", events.select(["kind", "timestamp", "experiment_arm"]))
        rows = con.sql(
            "SELECT experiment_arm, min(timestamp) AS first FROM events "
            "WHERE kind = 'impression' AND experiment_arm IS NOT NULL GROUP BY experiment_arm"
        ).df()
    finally:
        con.close()
    firsts = [
        first
        for label, first in zip(rows["experiment_arm"], rows["first"], strict=True)
        if experiment in parse_label(label)
    ]
    return pd.Timestamp(min(firsts)) if firsts else None
