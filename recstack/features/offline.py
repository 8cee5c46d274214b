"""The offline path: point-in-time correct training rows with DuckDB ASOF joins.

For each row (a labelled impression, say) at time ``t``, every feature is computed from events with
``timestamp < t`` only: cumulative counts per entity are ASOF-joined on ``ts < t`` (and on ``ts <``
the window start), the latest event or upsert before ``t`` is ASOF-joined likewise, and the last-N
sequence is a window aggregate snapshotted per (user, time). Values pass through the same ``finish``
/ ``encode`` functions as the online path, so the two agree exactly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recstack.errors import RecstackError
from recstack.features.definitions import (
    US,
    Attribute,
    AttributeRate,
    Counter,
    ItemAge,
    LastN,
    Rate,
    Recency,
    RetrievalScore,
    TextEmbedding,
    check_unique,
)
from recstack.features.online import AnyFeature, attribute_raw, context_values
from recstack.features.text import DIM, shared_encoder


def _kinds(kinds: Sequence[str]) -> str:
    return ", ".join(f"'{k}'" for k in kinds)


class _Query:
    """One DuckDB connection holding the events (``ev``) and the rows (``r``) as integer-time tables."""

    def __init__(self, events: pa.Table, rows: pa.Table) -> None:
        self.con = duckdb.connect()
        self.con.register("events_in", events)
        self.con.register("rows_in", rows)
        self.con.execute("""
            CREATE TEMP TABLE ev AS SELECT event_id, kind, epoch_us(timestamp) AS ts, user_id, item_id,
                creator_id, attributes, text, created_at FROM events_in;
            CREATE TEMP TABLE r AS SELECT row_number() OVER () - 1 AS rid, epoch_us(timestamp) AS t,
                user_id, item_id FROM rows_in;
        """)
        self._cum: dict[tuple[str, tuple[str, ...]], str] = {}

    def column(self, sql: str) -> np.ndarray:
        table = self.con.sql(sql).to_arrow_table()
        return np.asarray(table.column(table.column_names[-1]).to_numpy(zero_copy_only=False))

    def cumulative(self, entity: str, kinds: tuple[str, ...]) -> str:
        """Table of (ent, ts, n): events of ``kinds`` per entity with timestamp <= ts."""
        key = (entity, kinds)
        if key not in self._cum:
            name = f"cum{len(self._cum)}"
            self.con.execute(f"""
                CREATE TEMP TABLE {name} AS
                SELECT DISTINCT ent, ts, n FROM (
                  SELECT {entity}_id AS ent, ts,
                         count(*) OVER (PARTITION BY {entity}_id ORDER BY ts
                                        RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS n
                  FROM ev WHERE kind IN ({_kinds(kinds)}) AND {entity}_id IS NOT NULL)
            """)
            self._cum[key] = name
        return self._cum[key]

    def windowed_count(
        self, entity: str, kinds: tuple[str, ...], bucket_us: int, n_buckets: int
    ) -> np.ndarray:
        cum = self.cumulative(entity, kinds)
        return self.column(f"""
            SELECT q.rid, coalesce(a.n, 0) - coalesce(b.n, 0) AS v
            FROM (SELECT rid, {entity}_id AS ent, t, (t // {bucket_us} - {n_buckets - 1}) * {bucket_us} AS s
                  FROM r) q
            ASOF LEFT JOIN {cum} a ON q.ent = a.ent AND q.t > a.ts
            ASOF LEFT JOIN {cum} b ON q.ent = b.ent AND q.s > b.ts
            ORDER BY q.rid
        """).astype(np.int64)


def _check_attribute(con: duckdb.DuckDBPyConnection, events: str, f: Attribute) -> None:
    if f.field == "creator_id":
        return
    seen = con.sql(f"""SELECT DISTINCT unnest(json_keys(attributes)) AS k FROM {events}
                       WHERE kind = '{f.entity}' AND attributes IS NOT NULL""").fetchall()
    keys = sorted(str(k[0]) for k in seen)
    if f.field not in keys:
        raise RecstackError(
            f"feature '{f.name}' reads attributes.{f.field}, which no {f.entity} upsert has; "
            f"attributes seen: {', '.join(keys[:20]) if keys else 'none'} (change or remove its "
            "[[features]] table)"
        )


def check_attributes(events: pa.Table, features: Sequence[AnyFeature]) -> None:
    """RecstackError for an attribute feature whose field no upsert in ``events`` has (naming the
    fields they have): a check that costs one scan of the upserts, done before anything trains."""
    attributes = [f for f in features if isinstance(f, Attribute)] + [
        f.key().model_copy(update={"name": f.name}) for f in features if isinstance(f, AttributeRate)
    ]
    if not attributes:
        return
    con = duckdb.connect()
    try:
        con.register("upserts", events.select(["kind", "attributes"]))
        for f in attributes:
            _check_attribute(con, "upserts", f)
    finally:
        con.close()


def materialize(
    events: pa.Table, rows: pa.Table, features: Sequence[AnyFeature], check: bool = True
) -> pa.Table:
    """Feature columns for ``rows`` (columns ``timestamp``, ``user_id``, ``item_id`` and optionally
    ``surface`` and ``context``) from ``events`` (EVENT_SCHEMA), point-in-time correct.
    ``check``: whether an attribute no upsert of ``events`` has is an error (a partition of the
    events, which ``check_attributes`` already checked whole, passes False).

    Returns ``rows`` with one column per feature appended (float64; last-N as list<string>).
    """
    features = check_unique(list(features))
    missing = [c for c in ("timestamp", "user_id", "item_id") if c not in rows.column_names]
    if missing:
        raise RecstackError(f"rows need columns {missing} to materialize features")
    clash = sorted({f.name for f in features} & set(rows.column_names))
    if clash:
        raise RecstackError(f"feature names {clash} collide with columns of the rows; rename the features")
    if rows.num_rows == 0:
        raise RecstackError("no rows to materialize")
    q = _Query(events, rows)
    t = rows.column("timestamp").cast(pa.int64()).to_numpy()
    out = rows
    try:
        for f in features:
            out = out.append_column(f.name, _column(q, f, rows, t, check))
    finally:
        q.con.close()
    return out


def _column(q: _Query, f: AnyFeature, rows: pa.Table, t: np.ndarray, check: bool = True) -> pa.Array:
    if isinstance(f, Counter):
        return pa.array(q.windowed_count(f.entity, f.kinds, f.bucket_us, f.n_buckets).astype(np.float64))
    if isinstance(f, Rate):
        num = q.windowed_count(f.entity, f.numerator, f.bucket_us, f.n_buckets)
        den = q.windowed_count(f.entity, f.denominator, f.bucket_us, f.n_buckets)
        return pa.array(f.finish(num, den))
    if isinstance(f, AttributeRate):
        return pa.array(_attribute_rate(q, f, check))
    if isinstance(f, Recency):
        last = q.column(f"""
            SELECT q.rid, coalesce(a.ts, -1) AS last
            FROM (SELECT rid, {f.entity}_id AS ent, t FROM r) q
            ASOF LEFT JOIN (SELECT DISTINCT {f.entity}_id AS ent, ts FROM ev
                            WHERE kind IN ({_kinds(f.kinds)}) AND {f.entity}_id IS NOT NULL) a
              ON q.ent = a.ent AND q.t > a.ts
            ORDER BY q.rid
        """).astype(np.int64)
        return pa.array(Recency.finish(t, last))
    if isinstance(f, LastN):
        table = q.con.sql(f"""
            WITH seq AS (
              SELECT user_id AS ent, ts,
                     list(item_id) OVER (PARTITION BY user_id ORDER BY ts, event_id
                                         ROWS BETWEEN {f.n - 1} PRECEDING AND CURRENT ROW) AS items,
                     row_number() OVER (PARTITION BY user_id, ts ORDER BY event_id DESC) AS last_at_ts
              FROM ev WHERE kind IN ({_kinds(f.kinds)}) AND user_id IS NOT NULL AND item_id IS NOT NULL
            )
            SELECT q.rid, coalesce(list_reverse(a.items), []) AS items
            FROM (SELECT rid, user_id AS ent, t FROM r) q
            ASOF LEFT JOIN (SELECT ent, ts, items FROM seq WHERE last_at_ts = 1) a
              ON q.ent = a.ent AND q.t > a.ts
            ORDER BY q.rid
        """).to_arrow_table()
        return table.column("items").combine_chunks().cast(pa.list_(pa.string()))
    if isinstance(f, RetrievalScore):  # serving's value, logged; the caller fills history without one
        return pa.array(np.full(len(t), np.nan))
    if isinstance(f, ItemAge):
        born = q.column("""
            SELECT q.rid, a.born
            FROM (SELECT rid, item_id AS ent, t FROM r) q
            ASOF LEFT JOIN (SELECT item_id AS ent, ts, coalesce(epoch_us(created_at), ts) AS born
                            FROM ev WHERE kind = 'item') a
              ON q.ent = a.ent AND q.t > a.ts
            ORDER BY q.rid
        """)
        born = np.asarray(born, dtype=np.float64)  # NULL (never upserted) -> NaN
        return pa.array((t - born) / US)
    if isinstance(f, TextEmbedding):
        texts = (
            q.con.sql("""
            SELECT q.rid, a.text
            FROM (SELECT rid, item_id AS ent, t FROM r) q
            ASOF LEFT JOIN (SELECT item_id AS ent, ts, text FROM ev WHERE kind = 'item') a
              ON q.ent = a.ent AND q.t > a.ts
            ORDER BY q.rid
        """)
            .to_arrow_table()
            .column("text")
            .to_pylist()
        )
        vectors = shared_encoder().embed(texts)  # (N, 384)
        return pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM)
    if isinstance(f, Attribute):
        if check:
            _check_attribute(q.con, "ev", f)
        table = q.con.sql(f"""
            SELECT q.rid, a.creator_id, a.attributes
            FROM (SELECT rid, {f.entity}_id AS ent, t FROM r) q
            ASOF LEFT JOIN (SELECT {f.entity}_id AS ent, ts, creator_id, attributes FROM ev
                            WHERE kind = '{f.entity}') a
              ON q.ent = a.ent AND q.t > a.ts
            ORDER BY q.rid
        """).to_arrow_table()
        return pa.array(_encoded(f, table))
    surfaces = rows.column("surface").to_pylist() if "surface" in rows.column_names else [None] * len(t)
    contexts = (
        [json.loads(c) if c else None for c in rows.column("context").to_pylist()]
        if "context" in rows.column_names
        else [None] * len(t)
    )
    return pa.array(context_values(f, t, surfaces, contexts))


def _encoded(f: Attribute, table: pa.Table) -> np.ndarray:
    """(N,) ``f.encode`` of each row's (creator_id, attributes JSON), decoded once per distinct pair."""
    cache: dict[tuple[Any, Any], float] = {}
    values = []
    for creator, attrs in zip(
        table.column("creator_id").to_pylist(), table.column("attributes").to_pylist(), strict=True
    ):
        key = (creator, attrs)
        if key not in cache:
            cache[key] = f.encode(attribute_raw(f, creator, json.loads(attrs) if attrs else None))
        values.append(cache[key])
    return np.asarray(values, dtype=np.float64)


def _attribute_rate(q: _Query, f: AttributeRate, check: bool) -> np.ndarray:
    """The user's windowed counts on the rows' items' attribute value: each event of the user is
    keyed by its item's value at the event (the latest upsert at or before it), each row by its
    item's value before the row; then the same ASOF window difference as ``windowed_count`` over
    (user, key)."""
    key = f.key()
    if check:
        _check_attribute(q.con, "ev", key.model_copy(update={"name": f.name}))
    kinds = tuple(dict.fromkeys(f.numerator + f.denominator))
    tagged = q.con.sql(f"""
        SELECT e.user_id, e.kind, e.ts, a.creator_id, a.attributes
        FROM (SELECT user_id, item_id, kind, ts FROM ev
              WHERE kind IN ({_kinds(kinds)}) AND user_id IS NOT NULL AND item_id IS NOT NULL) e
        ASOF JOIN (SELECT item_id, ts, creator_id, attributes FROM ev WHERE kind = 'item') a
          ON e.item_id = a.item_id AND e.ts >= a.ts
    """).to_arrow_table()
    events = pa.table(
        {
            "user_id": tagged.column("user_id"),
            "kind": tagged.column("kind"),
            "ts": tagged.column("ts"),
            "code": pa.array(_encoded(key, tagged).astype(np.int64)),
        }
    )
    rows = q.con.sql("""
        SELECT q.rid, q.user_id, q.t, a.creator_id, a.attributes
        FROM (SELECT rid, user_id, item_id AS ent, t FROM r) q
        ASOF LEFT JOIN (SELECT item_id AS ent, ts, creator_id, attributes FROM ev WHERE kind = 'item') a
          ON q.ent = a.ent AND q.t > a.ts
        ORDER BY q.rid
    """).to_arrow_table()
    keyed = pa.table(
        {
            "rid": rows.column("rid"),
            "user_id": rows.column("user_id"),
            "t": rows.column("t"),
            "code": pa.array(_encoded(key, rows).astype(np.int64)),
        }
    )
    q.con.register("x_events", events)
    q.con.register("x_rows", keyed)
    try:
        counts = []
        for side in (f.numerator, f.denominator):
            q.con.execute(f"""
                CREATE OR REPLACE TEMP TABLE x_cum AS
                SELECT DISTINCT user_id, code, ts, n FROM (
                  SELECT user_id, code, ts,
                         count(*) OVER (PARTITION BY user_id, code ORDER BY ts
                                        RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS n
                  FROM x_events WHERE kind IN ({_kinds(side)}) AND code > 0)
            """)
            counts.append(
                q.column(f"""
                SELECT q.rid, coalesce(a.n, 0) - coalesce(b.n, 0) AS v
                FROM (SELECT rid, user_id, code, t,
                             (t // {f.bucket_us} - {f.n_buckets - 1}) * {f.bucket_us} AS s FROM x_rows) q
                ASOF LEFT JOIN x_cum a ON q.user_id = a.user_id AND q.code = a.code AND q.t > a.ts
                ASOF LEFT JOIN x_cum b ON q.user_id = b.user_id AND q.code = b.code AND q.s > b.ts
                ORDER BY q.rid
            """).astype(np.int64)
            )
    finally:
        q.con.unregister("x_events")
        q.con.unregister("x_rows")
    return f.finish(counts[0], counts[1])


def save_materialized(table: pa.Table, features: Sequence[AnyFeature], folder: Path) -> Path:
    """Write rows to ``folder/rows.parquet`` and the FeatureSpecs beside them (``features.json``)."""
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "rows.parquet")
    specs = [f.spec().to_dict() for f in features]
    (folder / "features.json").write_text(json.dumps({"features": specs, "rows": table.num_rows}, indent=2))
    return folder


def load_specs(folder: Path) -> list[dict[str, Any]]:
    """The FeatureSpecs saved beside a materialized data set."""
    path = folder / "features.json"
    if not path.exists():
        raise RecstackError(f"{path} not found: materialize the data set with its features first")
    specs: list[dict[str, Any]] = json.loads(path.read_text())["features"]
    return specs
