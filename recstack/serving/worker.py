"""``recstack worker``: consumes the live bus into the feed state (catalog, seen-sets, histories,
trending counts, exploration posteriors), at least once, with an effect of exactly once.

Deliveries are applied to the in-memory :class:`FeedState` (which skips event ids it has applied),
then, at most every ``snapshot_s``, the state (applied ids included) is written to the store in one
put and only then are the deliveries acknowledged. A worker killed at any point restarts from the
last snapshot and receives again every delivery it had not acknowledged: events applied after the
snapshot are applied again on a state that has not seen them, events in the snapshot are skipped.
The API in another process loads the snapshot whenever its version key changes.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

from recstack.config import EventLogBackend, Settings
from recstack.events.base import EventLog
from recstack.features.stores import KVStore, RedisStore, SQLiteStore
from recstack.serving.state import Captured, FeedState

log = logging.getLogger(__name__)

STATE_KEY = "recstack:feed_state"


def _here(fn: Callable[[], Captured]) -> Captured:
    return fn()


def state_store(settings: Settings) -> KVStore:
    """Where snapshots live: Redis with the Redis bus (a separate worker and API share it), else
    SQLite in the state dir."""
    if settings.event_log.backend is EventLogBackend.redis:
        return RedisStore(settings.event_log.redis_url, prefix="recstack:serving:")
    return SQLiteStore(settings.paths.state_dir / "feed_state.sqlite")


def load_state(store: KVStore, key: str = STATE_KEY) -> FeedState | None:
    blob, catalog = store.get_many([key, key + ":catalog"])
    return FeedState.from_bytes(blob, catalog) if blob is not None else None


def state_version(store: KVStore, key: str = STATE_KEY) -> int | None:
    (raw,) = store.get_many([key + ":version"])
    return int(raw) if raw is not None else None


class FeedWorker:
    def __init__(
        self,
        log_: EventLog,
        state: FeedState,
        store: KVStore,
        group: str = "feed",
        consumer: str = "worker-1",
        snapshot_s: float = 1.0,
        key: str = STATE_KEY,
    ) -> None:
        self.log = log_
        self.state = state
        self.store = store
        # the consumer group belongs to the snapshot: with no snapshot (a new or wiped store) the
        # worker starts a new group, which reads the log from its beginning
        (stored,) = store.get_many([key + ":group"])
        has_state = state_version(store, key) is not None
        self.group = (
            stored.decode() if stored is not None and has_state else f"{group}-{uuid.uuid4().hex[:12]}"
        )
        self.consumer = consumer
        self.snapshot_s = snapshot_s
        self.key = key
        self.pending: list[str] = []
        self.pending_ids: list[str] = []
        self.last_snapshot = time.monotonic()
        self.applied = 0
        self.delivered = 0
        self.catalog_written = state.catalog_version if has_state else -1
        # where the state is copied for a snapshot: here, or (in the API's process) on the serving
        # thread between requests, where the copy does not fight serving for the GIL and the lock
        self.capture_on: Callable[[Callable[[], Captured]], Captured] = _here

    def poll(self, count: int = 1000, block_ms: int = 0) -> int:
        """Read and apply one batch; snapshot and acknowledge when due. Returns deliveries read."""
        deliveries = self.log.consume(self.group, self.consumer, count=count, block_ms=block_ms)
        if deliveries:
            state = self.state
            with state.lock:  # skipped by id, unparsed: impressions of lists this state served
                todo = [d for d in deliveries if not state.was_served(d.event_id)]
            self.applied += state.apply(d.event for d in todo if d.event_id not in state.applied)
            self.pending.extend(d.delivery_id for d in deliveries)
            self.pending_ids.extend(d.event_id for d in deliveries)
            self.delivered += len(deliveries)
        if self.pending and time.monotonic() - self.last_snapshot >= self.snapshot_s:
            self.checkpoint()
        return len(deliveries)

    def checkpoint(self) -> None:
        """Write the state (the catalog only when it changed), then acknowledge what it includes.
        Acknowledged deliveries never come back, so their ids are then forgotten: the next
        snapshot holds only ids applied and not yet acknowledged (memory and size stay bounded)."""
        state = self.state
        captured = self.capture_on(lambda: state.capture(state.catalog_version != self.catalog_written))
        if captured.catalog is None and captured.catalog_version != self.catalog_written:
            captured = self.capture_on(lambda: state.capture(True))  # the catalog moved meanwhile
        snapshot = captured.encode()
        writes = {
            self.key: snapshot.state,
            self.key + ":version": str(snapshot.version).encode(),
            self.key + ":group": self.group.encode(),
        }
        if snapshot.catalog is not None:
            writes[self.key + ":catalog"] = snapshot.catalog
        self.store.put_many(writes)  # one transaction (SQLite) / one MSET (Redis)
        self.catalog_written = snapshot.catalog_version
        if self.pending:
            self.log.ack(self.group, self.pending)
            self.pending = []
            with self.state.lock:  # what others applied (the API's impressions) stays until acked
                self.state.applied.difference_update(self.pending_ids)
            self.state.forget_served(self.pending_ids)
            self.pending_ids = []
        self.last_snapshot = time.monotonic()

    def drain(self, count: int = 1000) -> int:
        total = 0
        while n := self.poll(count):
            total += n
        self.checkpoint()
        return total

    def run(self, stop: threading.Event, idle_s: float = 0.05, batch: int = 1000) -> None:
        """Poll until ``stop``; ``batch`` deliveries at a time (in the API's process a small batch
        keeps each GIL-holding step short, so requests are not held up behind it)."""
        while not stop.is_set():
            try:
                if not self.poll(count=batch, block_ms=0):
                    stop.wait(idle_s)
                else:
                    time.sleep(0)  # let the serving thread in between batches
            except Exception as exc:  # keep consuming: a dead bus comes back, a bad batch is logged
                log.error("worker poll failed: %s", exc)
                stop.wait(1.0)
        self.checkpoint()
