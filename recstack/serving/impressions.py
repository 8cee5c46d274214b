"""What serving showed, waiting to be written to the log: impression events kept column-wise, so that
a request appends a few lists and a flush builds one Arrow table (no dict per row, no row-wise
conversion).

Bounded: while the bus is down the rows wait here for the next flush; beyond ``limit`` rows the
oldest are dropped (and counted in ``dropped``, logged).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from recstack.schema import EVENT_SCHEMA

log = logging.getLogger(__name__)

COLUMNS = (
    "event_id",
    "timestamp",
    "user_id",
    "item_id",
    "request_id",
    "position",
    "surface",
    "model_versions",
    "context",
    "features",
    "experiment_arm",
    "propensity",
    "serving",
)


class ImpressionBuffer:
    def __init__(self, limit: int = 1_000_000) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        self.columns: dict[str, list[Any]] = {c: [] for c in COLUMNS}
        self.waiting: list[pa.Table] = []  # tables a failed flush gave back, oldest first
        self.dropped = 0

    def __len__(self) -> int:
        with self.lock:
            return len(self.columns["event_id"]) + sum(int(t.num_rows) for t in self.waiting)

    def add(
        self,
        request_id: str,
        user_id: str,
        item_ids: Sequence[str],
        timestamp_us: int,
        surface: str,
        model_versions: str,
        context: str,
        features: Sequence[str],
        experiment_arm: str | Sequence[str | None] | None = None,
        propensity: Sequence[float] | None = None,
        known_propensity: bool = True,
        serving: Sequence[str | None] | None = None,
    ) -> list[str]:
        """Buffer one served list (positions 0..n-1) with the variant that served it (one label, or
        one per item) and each item's propensity (None: deterministic, logged as 1; none at all
        without ``known_propensity``) and what serving knew of each (``serving``, JSON objects);
        returns the impression event ids."""
        n = len(item_ids)
        event_ids = [f"{request_id}:{pos}" for pos in range(n)]
        with self.lock:
            c = self.columns
            c["event_id"].extend(event_ids)
            c["timestamp"].extend([timestamp_us] * n)
            c["user_id"].extend([user_id] * n)
            c["item_id"].extend(item_ids)
            c["request_id"].extend([request_id] * n)
            c["position"].extend(range(n))
            c["surface"].extend([surface] * n)
            c["model_versions"].extend([model_versions] * n)
            c["context"].extend([context] * n)
            c["features"].extend(features)
            arms = (
                [experiment_arm] * n
                if experiment_arm is None or isinstance(experiment_arm, str)
                else experiment_arm
            )
            c["experiment_arm"].extend(arms)
            if not known_propensity:
                c["propensity"].extend([None] * n)
            else:
                c["propensity"].extend(propensity if propensity is not None else [1.0] * n)
            c["serving"].extend(serving if serving is not None else [None] * n)
        return event_ids

    def take(self) -> pa.Table | None:
        """Everything buffered, as one table in the log's schema (and the buffer emptied)."""
        with self.lock:
            columns, self.columns = self.columns, {c: [] for c in COLUMNS}
            waiting, self.waiting = self.waiting, []
        n = len(columns["event_id"])
        if n:
            arrays = {
                name: pa.array(columns[name], type=EVENT_SCHEMA.field(name).type)
                for name in COLUMNS
                if name != "timestamp"
            }
            arrays["timestamp"] = pa.array(columns["timestamp"], type=pa.int64()).cast(
                EVENT_SCHEMA.field("timestamp").type
            )
            arrays["kind"] = pa.array(["impression"] * n, type=pa.string())
            fresh = pa.table(
                {
                    f.name: arrays.get(f.name, pa.nulls(n, f.type))
                    for f in EVENT_SCHEMA  # every column, in the schema's order
                },
                schema=EVENT_SCHEMA,
            )
            waiting.append(fresh)
        if not waiting:
            return None
        return pa.concat_tables(waiting) if len(waiting) > 1 else waiting[0]

    def give_back(self, table: pa.Table) -> None:
        """Keep a table whose write failed, ahead of what arrived since (bounded by ``limit``)."""
        with self.lock:
            self.waiting.insert(0, table)
            total = sum(t.num_rows for t in self.waiting) + len(self.columns["event_id"])
            excess = dropped = total - self.limit
            while excess > 0 and self.waiting:
                cut = min(excess, self.waiting[0].num_rows)
                self.waiting[0] = self.waiting[0].slice(cut)
                if not self.waiting[0].num_rows:
                    self.waiting.pop(0)
                self.dropped += cut
                excess -= cut
        if dropped > 0:
            log.warning("impression buffer full: the oldest %d impressions were dropped", dropped)

    def rows(self) -> list[dict[str, Any]]:
        """The buffered impressions as row dicts, without taking them (for inspection and tests)."""
        table = self.take()
        if table is None:
            return []
        self.give_back(table)
        rows: list[dict[str, Any]] = table.to_pylist()
        return rows
