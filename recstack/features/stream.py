"""Ingest: events into the log, and the online feature updates they cause, in one step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from recstack.config import OnlineBackend, Settings
from recstack.events.base import AppendResult, EventLog, IdempotentConsumer
from recstack.features.online import OnlineFeatures
from recstack.features.stores import KVStore, MemoryStore, RedisStore, SQLiteStore
from recstack.schema import Event


def open_store(settings: Settings) -> KVStore:
    """The online key-value store the configuration names (``[online] backend``)."""
    cfg = settings.online
    if cfg.backend is OnlineBackend.redis:
        return RedisStore(cfg.redis_url, cfg.prefix)
    if cfg.backend is OnlineBackend.sqlite:
        return SQLiteStore(cfg.sqlite_path or settings.paths.state_dir / "online.sqlite")
    return MemoryStore()  # memory, and auto without a Redis store


def open_online(settings: Settings, store: KVStore | None = None) -> OnlineFeatures:
    return OnlineFeatures(
        settings.features,
        store or open_store(settings),
        settings.online.cache_size,
        settings.online.flush_every,
    )


class Ingestor:
    """Appends to the log, then applies exactly what the log accepted (not duplicates, not rejects)
    to the online features, so a retried batch is never counted twice."""

    def __init__(self, log: EventLog, online: OnlineFeatures) -> None:
        self.log = log
        self.online = online

    def ingest(self, raw_events: Sequence[Any]) -> AppendResult:
        result = self.log.append(raw_events)
        self.online.update(result.accepted_events)
        return result

    def ingest_table(self, table: pa.Table) -> AppendResult:
        result = self.log.append_table(table)
        if result.accepted_table is not None:
            self.online.update_table(result.accepted_table)
        else:
            self.online.update(result.accepted_events)
        return result

    def flush(self) -> None:
        self.online.flush()


class FeatureConsumer(IdempotentConsumer):
    """Keeps the online features current from the event stream: reads a consumer group of the log
    (the Redis live bus, or the embedded log), applies each event once, then acknowledges.

    Delivery is at-least-once; ``seen`` (event ids already applied) makes the effect exactly-once.
    Pass a set that outlives the process to survive restarts; an in-memory set covers redelivery
    within one process.
    """

    def __init__(
        self,
        log: EventLog,
        online: OnlineFeatures,
        group: str = "features",
        consumer: str = "worker-1",
        seen: set[str] | None = None,
    ) -> None:
        super().__init__(log, group, consumer, handler=lambda event: None, seen=seen)
        self.online = online

    def apply(self, events: list[Event]) -> None:
        self.online.update(events)
        self.online.flush()
