"""The batch data jobs on Ray Data: the training-set join and feature materialization.

Both read the Parquet event log's files from the workers (``engine.check_visible`` first asks every
node whether it sees them) and run the local path's code on each partition, so the rows are the
local path's rows:

- **join** (impressions labelled with what they caused, ``events.join.join_engagements``): read
  tasks each read a share of the log's files (filtered by time and kind), Ray Data shuffles the
  events by a hash of the user id (``groupby``) and each user partition is joined. An engagement
  joins an impression of the same request or the same (user, item), so every match lies inside
  one user's partition.
- **materialize** (``features.offline.materialize``): each definition belongs to the entity whose
  events it reads (item counters, rates, recencies, attributes, age and text to the item; user
  ones, last-N sequences and request context to the user). The rows are cut by a hash of that
  entity's id, then by time, and each block reads only its entities' events before its latest
  row. Point-in-time values of a row depend on exactly those events, so the columns equal the
  local path's, which the tests check value for value.
"""

from __future__ import annotations

import glob
import socket
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds

from recstack.config import EventLogBackend, Settings
from recstack.events.join import JoinResult, join_engagements
from recstack.features.definitions import (
    Attribute,
    AttributeRate,
    Counter,
    ItemAge,
    Rate,
    Recency,
    TextEmbedding,
    check_unique,
)
from recstack.features.offline import materialize
from recstack.features.online import AnyFeature
from recstack.scale.engine import EngineError, check_visible, connect, job, partitions, worker_cannot_see
from recstack.schema import ENGAGEMENT_KINDS, EVENT_SCHEMA

ROW_COLUMNS = ("timestamp", "user_id", "item_id", "surface", "context")
JOIN_ORDER = [("timestamp", "ascending"), ("request_id", "ascending"), ("position", "ascending")]


def event_files(settings: Settings) -> list[str]:
    """The event log's Parquet files (absolute paths), which the workers read themselves."""
    if settings.event_log.backend is not EventLogBackend.parquet:
        raise EngineError(
            "[compute] engine = 'ray' reads the Parquet event log's files from its workers; with "
            "[event_log] backend = redis, archive the stream to a Parquet log first (recstack events "
            "replay) or run the job with engine = 'local'"
        )
    root = settings.event_log_path().resolve()
    files = sorted(glob.glob(str(root / "day=*" / "part-*.parquet")))
    if not files:
        raise EngineError(f"the event log at {root} holds no Parquet files: ingest or import events first")
    return files


def read_events(files: Sequence[str], where: pds.Expression | None = None) -> pa.Table:
    """The events of ``files`` as EVENT_SCHEMA (files written before a column existed read it as
    nulls), filtered by ``where``; on a worker that cannot see a file, the EngineError that says so."""
    try:
        return pds.dataset(list(files), schema=EVENT_SCHEMA, format="parquet").to_table(filter=where)
    except FileNotFoundError as exc:
        raise worker_cannot_see("the event log", socket.gethostname(), [str(exc.filename or exc)]) from exc


def shard_of(values: pa.Array | pa.ChunkedArray, n: int) -> np.ndarray:
    """(N,) partition 0..n-1 of each id: a hash that is the same in every process (pandas' SipHash
    with its fixed key), so a worker and the driver agree."""
    ids = np.asarray(values.to_pylist(), dtype=object)
    hashed: np.ndarray = pd.util.hash_array(ids, categorize=True) % np.uint64(n)
    return hashed.astype(np.int64)


def _window(start: datetime | None, end: datetime | None) -> pds.Expression:
    kinds = pc.field("kind").isin(pa.array(["impression", *ENGAGEMENT_KINDS]))
    if start is not None:
        kinds = kinds & (pc.field("timestamp") >= pa.scalar(start, EVENT_SCHEMA.field("timestamp").type))
    if end is not None:
        kinds = kinds & (pc.field("timestamp") < pa.scalar(end, EVENT_SCHEMA.field("timestamp").type))
    return kinds


# ---------------------------------------------------------------------- join
def _read_window(batch: pa.Table, n: int, start: datetime | None, end: datetime | None) -> pa.Table:
    """The impressions and engagements in [start, end) of a batch's log files, with their user
    partition (``_shard``)."""
    files = [f for group in batch.column("files").to_pylist() for f in group]
    events = read_events(files, _window(start, end))
    return events.append_column("_shard", pa.array(shard_of(events.column("user_id"), n), pa.int64()))


def _join_group(group: pa.Table, window_s: float) -> pa.Table:
    """One user partition joined; its count of unattributed engagements rides in ``_unattributed``
    (a partition without impressions returns one row of nulls to carry it)."""
    shard = group.column("_shard")[0].as_py()
    events = group.drop_columns(["_shard"]).cast(EVENT_SCHEMA)
    joined = join_engagements(events, window_s)
    table = joined.table
    if table.num_rows == 0:
        table = pa.table({f.name: pa.nulls(1, f.type) for f in table.schema})
    n = table.num_rows
    table = table.append_column("_shard", pa.array(np.full(n, shard, dtype=np.int64)))
    return table.append_column("_unattributed", pa.array(np.full(n, joined.unattributed, dtype=np.int64)))


def join_on_ray(settings: Settings, start: datetime | None = None, end: datetime | None = None) -> JoinResult:
    """``join_engagements`` of the log's events in [start, end) as a Ray Data job: the same rows, in
    the same order (time, request, position)."""
    ray = connect(settings.compute)
    files = event_files(settings)
    check_visible(files)
    n = partitions(settings.compute)
    empty = join_engagements(EVENT_SCHEMA.empty_table(), settings.event_log.attribution_window_s)
    with job("the training-set join", settings.compute):
        # the driver lists the files (Ray's own listing stats every file, slow over many small
        # ones); each read task reads a share of them with the window's filter pushed down
        shares = [{"files": files[k::n]} for k in range(min(n, len(files)))]
        window = {"n": n, "start": start, "end": end}
        joined = (
            ray.data.from_items(shares)
            .map_batches(
                _read_window,
                fn_kwargs=window,
                batch_size=1,
                batch_format="pyarrow",
                max_retries=settings.compute.task_retries,
            )
            .groupby("_shard", num_partitions=n)
            .map_groups(
                _join_group,
                fn_kwargs={"window_s": settings.event_log.attribution_window_s},
                batch_format="pyarrow",
                max_retries=settings.compute.task_retries,
            )
        )
        parts = [t for t in ray.get(joined.to_arrow_refs()) if t.num_rows]
    if not parts:
        return empty
    table = pa.concat_tables(parts)
    counts = (
        table.select(["_shard", "_unattributed"]).group_by("_shard").aggregate([("_unattributed", "max")])
    )
    unattributed = int(pc.sum(counts.column("_unattributed_max")).as_py() or 0)
    table = table.filter(pc.is_valid(table.column("impression_id"))).drop_columns(["_shard", "_unattributed"])
    table = table.cast(empty.table.schema).sort_by(JOIN_ORDER)
    return JoinResult(table=table, unattributed=unattributed)


# ---------------------------------------------------------------------- materialize
def entity_of(feature: AnyFeature) -> str:
    """Whose events (and upserts) a definition reads: 'item' or 'user' (request context and the
    request-time retrieval score read none; they go with the user's)."""
    if isinstance(feature, Counter | Rate | Recency | Attribute):
        return feature.entity
    if isinstance(feature, AttributeRate):
        return "user"  # the user's events, keyed by the item upserts the block reads too
    return "item" if isinstance(feature, ItemAge | TextEmbedding) else "user"  # last-N: the user's


def _blocks(rows: pa.Table, entity: str, n: int) -> list[pa.Table]:
    """The rows cut by a hash of ``entity``'s id into n partitions, each sorted by time and cut
    into pieces of at most ceil(rows / n) rows (a hot entity's rows spread over several blocks)."""
    shards = shard_of(rows.column(f"{entity}_id"), n)
    times = rows.column("timestamp").cast(pa.int64()).to_numpy()
    order = np.lexsort((times, shards))
    size = max(1, -(-rows.num_rows // n))
    blocks = []
    bounds = np.flatnonzero(np.diff(shards[order])) + 1
    for part in np.split(order, bounds):
        for start in range(0, len(part), size):
            blocks.append(rows.take(pa.array(part[start : start + size])))
    return blocks


def _materialize_block(
    block: pa.Table, files: list[str], entity: str, features: list[AnyFeature], before: datetime | None
) -> pa.Table:
    ids = pc.unique(block.column(f"{entity}_id").drop_null())
    latest = pc.max(block.column("timestamp"))
    mine = pc.field(f"{entity}_id").isin(ids)
    if any(isinstance(f, AttributeRate) for f in features):  # events are keyed by their item's value
        mine = mine | (pc.field("kind") == "item")
    where = mine & (pc.field("timestamp") < latest)
    if before is not None:
        where = where & (pc.field("timestamp") < pa.scalar(before, EVENT_SCHEMA.field("timestamp").type))
    events = read_events(files, where)
    rows = block.select([c for c in ROW_COLUMNS if c in block.column_names])
    out = materialize(events, rows, features, check=False)
    return out.select([f.name for f in features]).append_column("_rid", block.column("_rid"))


def materialize_on_ray(
    settings: Settings,
    rows: pa.Table,
    features: Sequence[AnyFeature],
    before: datetime | None = None,
) -> pa.Table:
    """``features.offline.materialize(log events before `before`, rows, features)`` as Ray Data
    jobs, one per entity: ``rows`` with one column per definition, value for value the local path's.
    Attributes must have been checked against the whole log first (``check_attributes``)."""
    features = check_unique(list(features))
    if rows.num_rows == 0:
        raise EngineError("no rows to materialize")
    ray = connect(settings.compute)
    files = event_files(settings)
    check_visible(files)
    n = partitions(settings.compute)
    keyed = rows.select([c for c in ROW_COLUMNS if c in rows.column_names])
    keyed = keyed.append_column("_rid", pa.array(np.arange(rows.num_rows, dtype=np.int64)))
    columns: dict[str, Any] = {}
    for entity in ("user", "item"):
        mine = [f for f in features if entity_of(f) == entity]
        if not mine:
            continue
        with job(f"the {entity} features", settings.compute):
            data = ray.data.from_arrow(_blocks(keyed, entity, n))
            out = data.map_batches(
                _materialize_block,
                batch_size=None,
                batch_format="pyarrow",
                fn_kwargs={"files": files, "entity": entity, "features": mine, "before": before},
                max_retries=settings.compute.task_retries,
            )
            table = pa.concat_tables(ray.get(out.to_arrow_refs())).sort_by("_rid")
        for f in mine:
            columns[f.name] = table.column(f.name)
    out_table = rows
    for f in features:
        out_table = out_table.append_column(f.name, columns[f.name])
    return out_table
