"""Join engagements back to the impressions that caused them.

An engagement that carries a ``request_id`` joins the impression with the same (request_id, item_id)
shown at most ``window_s`` seconds before it. One without a request id (a like from another
surface, say) joins the latest impression of the same (user_id, item_id) at or before it within
the window (DuckDB ASOF JOIN). The result has one row per impression with a 0/1 label per
engagement kind, the summed dwell time, the position, and the list of items shown in the same
request ordered by position: every training row knows where it was shown and beside what.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import pyarrow as pa

from recstack.schema import ENGAGEMENT_KINDS

LABEL_KINDS: tuple[str, ...] = tuple(k for k in ENGAGEMENT_KINDS if k != "dwell")


@dataclass
class JoinResult:
    """Impressions with labels (``table``) and the number of engagements that matched none."""

    table: pa.Table
    unattributed: int


def join_engagements(events: pa.Table, window_s: float = 3600.0) -> JoinResult:
    """Label each impression in ``events`` (EVENT_SCHEMA) with the engagements it caused."""
    kinds_sql = ", ".join(f"'{k}'" for k in ENGAGEMENT_KINDS)
    labels_sql = ",\n".join(
        f"max(CASE WHEN kind = '{k}' THEN 1 ELSE 0 END)::INTEGER AS {k}" for k in LABEL_KINDS
    )
    coalesce_sql = ", ".join(f"coalesce(l.{k}, 0)::INTEGER AS {k}" for k in LABEL_KINDS)
    window = f"INTERVAL '{float(window_s)} seconds'"
    con = duckdb.connect()
    try:
        con.register("events", events)
        con.execute(f"""
            CREATE TEMP TABLE imp AS SELECT * FROM events WHERE kind = 'impression';
            CREATE TEMP TABLE eng AS
              SELECT event_id, kind, timestamp, user_id, item_id, request_id, dwell_seconds
              FROM events WHERE kind IN ({kinds_sql});
            CREATE TEMP TABLE matched AS
              SELECT e.event_id, e.kind, e.dwell_seconds, i.event_id AS imp_id
              FROM eng e JOIN imp i ON e.request_id = i.request_id AND e.item_id = i.item_id
              WHERE e.request_id IS NOT NULL
                AND e.timestamp >= i.timestamp AND e.timestamp <= i.timestamp + {window}
              QUALIFY row_number() OVER (PARTITION BY e.event_id ORDER BY i.timestamp DESC) = 1
            UNION ALL
              SELECT e.event_id, e.kind, e.dwell_seconds, i.event_id AS imp_id
              FROM (SELECT * FROM eng WHERE request_id IS NULL) e
              ASOF JOIN imp i
                ON e.user_id = i.user_id AND e.item_id = i.item_id AND e.timestamp >= i.timestamp
              WHERE e.timestamp <= i.timestamp + {window};
        """)
        unattributed = con.sql(
            "SELECT count(*) FROM eng WHERE event_id NOT IN (SELECT event_id FROM matched)"
        ).fetchall()
        table = con.sql(f"""
            WITH labels AS (
              SELECT imp_id, {labels_sql}, sum(dwell_seconds) AS dwell_seconds
              FROM matched GROUP BY imp_id
            ),
            slates AS (
              SELECT request_id, list(item_id ORDER BY position) AS shown_items FROM imp GROUP BY request_id
            )
            SELECT i.event_id AS impression_id, i.request_id, i.timestamp, i.user_id, i.item_id,
                   i.position, i.surface, i.experiment_arm, i.model_versions, i.context, i.features,
                   i.propensity, i.serving, {coalesce_sql}, coalesce(l.dwell_seconds, 0.0) AS dwell_seconds,
                   s.shown_items
            FROM imp i
            LEFT JOIN labels l ON l.imp_id = i.event_id
            LEFT JOIN slates s ON s.request_id = i.request_id
            ORDER BY i.timestamp, i.request_id, i.position
        """).to_arrow_table()
    finally:
        con.close()
    return JoinResult(table=table, unattributed=int(unattributed[0][0]))
