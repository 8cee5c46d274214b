"""Event log (Parquet + DuckDB), live bus (Redis Streams), and the engagement-to-impression join."""

from __future__ import annotations

from recstack.config import EventLogBackend, Settings
from recstack.events.base import AppendResult, Delivery, EventLog, IdempotentConsumer, Rejected
from recstack.events.parquet import ParquetEventLog
from recstack.events.redis_stream import RedisStreamLog

__all__ = [
    "AppendResult",
    "Delivery",
    "EventLog",
    "IdempotentConsumer",
    "ParquetEventLog",
    "RedisStreamLog",
    "Rejected",
    "open_event_log",
]


def open_event_log(settings: Settings) -> EventLog:
    """The event log the configuration names (``[event_log] backend``)."""
    cfg = settings.event_log
    if cfg.backend is EventLogBackend.redis:
        return RedisStreamLog(
            cfg.redis_url, cfg.stream, dedupe_days=cfg.dedupe_days_cached, window=cfg.window()
        )
    return ParquetEventLog(
        settings.event_log_path(), dedupe_days_cached=cfg.dedupe_days_cached, window=cfg.window()
    )
