"""The training set of the log: every impression in a time range labelled with what it caused
(``events.join``), with every ``[[features]]`` definition's point-in-time value as of the
impression (``features.offline``). ``[compute] engine`` picks where it is built: in this process
with DuckDB, or as Ray Data jobs over the log's files (``scale.data``), row for row the same.

``retrieval_score`` is a request-time value (the two-tower's score, logged by serving): it is NaN
here, and ``train --feed`` fills it from the towers it trains.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa

from recstack.config import Engine, Settings
from recstack.errors import RecstackError
from recstack.events.base import EventLog
from recstack.events.join import join_engagements
from recstack.features.offline import check_attributes, materialize


@dataclass
class TrainingSet:
    table: pa.Table  # the labelled impressions, then one column per definition
    unattributed: int  # engagements that matched no impression
    engine: Engine
    seconds: float


def build_training_set(
    settings: Settings, log: EventLog, start: datetime | None = None, end: datetime | None = None
) -> TrainingSet:
    """The impressions in [start, end) with labels and features, on ``settings.compute.engine``."""
    started = time.perf_counter()
    features = list(settings.features)
    check_attributes(log.table(kinds=["item", "user"]), features)  # before any job starts
    engine = Engine(settings.compute.engine)
    if engine == Engine.ray:
        from recstack.scale.data import join_on_ray, materialize_on_ray

        joined = join_on_ray(settings, start, end)
    else:
        history = log.table(end=end)  # feature windows reach back before start
        events = history if start is None else log.table(start=start, end=end)
        joined = join_engagements(events, settings.event_log.attribution_window_s)
    if joined.table.num_rows == 0:
        raise RecstackError("no impressions in the selected range: nothing to materialize")
    if engine == Engine.ray:
        table = materialize_on_ray(settings, joined.table, features, before=end)
    else:
        table = materialize(history, joined.table, features)
    return TrainingSet(table, joined.unattributed, engine, time.perf_counter() - started)
