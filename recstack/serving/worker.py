"""``recstack worker``: consumes the live bus into the feed state (catalog, seen-sets, histories,
trending counts, exploration posteriors), at least once, with an effect of exactly once.

Deliveries are applied to the in-memory :class:`FeedState` (which skips event ids it has applied),
then, at most every ``snapshot_s``, the state (applied ids included) is written to the store in one
put and only then are the deliveries acknowledged. A worker killed at any point restarts from the
last snapshot and receives again every delivery it had not acknowledged: events applied after the
snapshot are applied again on a state that has not seen them, events in the snapshot are skipped.

Snapshots form a chain: a whole one (every user, the counters, and the catalog when it changed)
every ``full_s`` and whenever the catalog changed, and in between deltas holding only what changed
since the snapshot before (``FeedState.capture(delta=True)``), so a snapshot a second costs what
changed that second rather than every user. Store keys, under ``key``:

- ``key``: the chain's whole snapshot; ``key:catalog``: the catalog it goes with;
- ``key:delta:<chain>:<i>``, i = 1..n: the chain's deltas, each taken after the one before (its meta
  names the chain and the version it was taken after, ``base``); ``key:deltas``: n;
- ``key:bridge``: written with a whole snapshot on the same catalog, the delta from the previous
  chain's last snapshot to it (its meta: the previous chain, ``base``, ``base_deltas`` and
  ``next_chain``), so a follower of the previous chain moves to the new one without loading the
  whole snapshot (the previous chain's deltas are kept until the chain after);
- ``key:chain``: the chain's id (new with every whole snapshot); ``key:version``: the state version
  of the last snapshot written; ``key:group``: the consumer group;
- ``key:item:<id>``: each item's latest upsert, written with the snapshot after it was applied
  (``GET /v1/items/{id}`` and the attributes a feed request asks for read it).

A separate worker's checkpoint also writes the query counts it publishes for autocomplete, under
their own keys (``FeedWorker.parts``; autocomplete/sync.py).

``sync_state`` reads the chain: the API in another process calls it every ``state_sync_s`` and
applies the deltas it has not applied yet (in place), crosses to a new chain by its bridge, or loads
the whole snapshot when it cannot (a worker restart, a new catalog, a missing delta); a restarted
worker loads the whole snapshot and its deltas and goes on with that chain.

Dead letters: an event that cannot be read, is timed outside the window the log accepts
(``[event_log] earliest``, ``max_ahead_s``) or raises while it is applied is not applied; the
rest of its batch is. It is written with its reason to ``key:dead:<n>`` (the last
``DEAD_LETTERS_KEPT``, ``key:dead:count`` in all) in the same write as the snapshot that
acknowledges it, and ``recstack events dead-letters`` lists them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from recstack.config import EventLogBackend, OnlineBackend, Settings
from recstack.errors import CheckpointError
from recstack.events.base import EventLog
from recstack.features.stores import KVStore, MemoryStore, RedisStore, SQLiteStore
from recstack.schema import Event, ItemUpsert, TimeWindow
from recstack.serving.state import Captured, Changes, FeedState

log = logging.getLogger(__name__)

STATE_KEY = "recstack:feed_state"
DEAD_LETTERS_KEPT = 10_000


def item_key(item_id: str, key: str = STATE_KEY) -> str:
    """The store key of an item's latest upsert (``GET /v1/items/{id}``)."""
    return f"{key}:item:{item_id}"


def dead_letters(store: KVStore, key: str = STATE_KEY, limit: int = 100) -> tuple[int, list[dict[str, Any]]]:
    """(how many events went to dead letters in all, the last ``limit`` of those kept, newest
    last)."""
    (raw,) = store.get_many([key + ":dead:count"])
    count = int(raw) if raw is not None else 0
    first = max(1, count - min(limit, DEAD_LETTERS_KEPT) + 1)
    numbers = range(first, count + 1)
    blobs = store.get_many([f"{key}:dead:{(n - 1) % DEAD_LETTERS_KEPT}" for n in numbers])
    return count, [json.loads(b) for b in blobs if b is not None]


def _here(fn: Callable[[], Captured]) -> Captured:
    return fn()


def state_store(settings: Settings) -> KVStore:
    """Where the worker's snapshots live, as ``[online] backend`` says: ``auto`` is Redis with the
    Redis bus (a separate worker and the API processes share it) and SQLite in the state dir
    otherwise; ``memory`` keeps none (a restart rebuilds the state from the log)."""
    cfg = settings.online
    backend = cfg.backend
    if backend is OnlineBackend.auto:
        redis_bus = settings.event_log.backend is EventLogBackend.redis
        backend = OnlineBackend.redis if redis_bus else OnlineBackend.sqlite
    if backend is OnlineBackend.redis:
        url = cfg.redis_url if "redis_url" in cfg.model_fields_set else settings.event_log.redis_url
        return RedisStore(url, prefix="recstack:serving:")
    if backend is OnlineBackend.memory:
        return MemoryStore()
    return SQLiteStore(cfg.sqlite_path or settings.paths.state_dir / "feed_state.sqlite")


@dataclass(frozen=True)
class Position:
    """Where a state read from the store stands: its chain, how many of the chain's deltas it has
    applied, and the worker's state version it reached."""

    chain: str
    deltas: int
    version: int


def sync_state(
    store: KVStore, state: FeedState | None = None, at: Position | None = None, key: str = STATE_KEY
) -> tuple[FeedState, Position] | None:
    """Bring ``state`` (read up to ``at``) to the last snapshot in the store: the deltas it lacks
    applied in place when the chain is the same or a bridge leads from its chain to the new one,
    else the chain's whole snapshot loaded (sharing ``state``'s catalog when the snapshot's is the
    same) and its deltas applied. Returns the state to use (``state`` itself, or a new one) and its
    position; None when the store holds nothing newer than ``at``, or nothing. A snapshot written
    meanwhile is picked up by the next call."""
    raw_version, raw_chain, raw_count = store.get_many([key + ":version", key + ":chain", key + ":deltas"])
    if raw_version is None:
        return None
    version, chain, count = int(raw_version), (raw_chain or b"").decode(), int(raw_count or 0)
    if state is not None and at is not None:
        if (chain, count, version) == (at.chain, at.deltas, at.version):
            return None
        moved: Position | None = at
        if chain != at.chain:
            try:
                moved = _cross(store, key, state, at, chain)
            except CheckpointError as exc:  # a damaged delta on the way: the whole snapshot is there
                log.warning("state sync loads the whole snapshot, the bridge failed: %s", exc)
                moved = None
        if moved is not None and moved.chain == chain and count >= moved.deltas:
            moved = _apply_deltas(store, key, state, moved, count)
            if moved.deltas == count:
                return state, moved
    (blob,) = store.get_many([key])
    if blob is None:
        return None
    meta = FeedState.snapshot_meta(blob)
    same = state is not None and meta["catalog_version"] == state.catalog_version
    catalog = None if same else store.get_many([key + ":catalog"])[0]
    fresh = FeedState.from_bytes(blob, catalog, state if same else None)
    start = Position(str(meta.get("chain", "")), 0, int(meta["version"]))
    return fresh, _apply_deltas(store, key, fresh, start, count)


def _apply_deltas(store: KVStore, key: str, state: FeedState, at: Position, count: int) -> Position:
    """Apply ``at.chain``'s deltas after ``at`` up to ``count`` in order; stops at one that is
    missing or does not follow."""
    if count <= at.deltas:
        return at
    blobs = store.get_many([f"{key}:delta:{at.chain}:{i}" for i in range(at.deltas + 1, count + 1)])
    for i, blob in enumerate(blobs, start=at.deltas + 1):
        if blob is None:
            break
        meta, arrays = FeedState.read_snapshot(blob)
        if meta.get("chain") != at.chain or meta.get("base") != at.version:
            break
        state.apply_delta((meta, arrays))
        at = Position(at.chain, i, int(meta["version"]))
    return at


def _cross(store: KVStore, key: str, state: FeedState, at: Position, chain: str) -> Position | None:
    """Move a state on ``at.chain`` to the start of ``chain`` by the bridge between them (after the
    old chain's deltas it lacks); None when there is no such bridge."""
    (blob,) = store.get_many([key + ":bridge"])
    if blob is None:
        return None
    meta, arrays = FeedState.read_snapshot(blob)
    if meta.get("chain") != at.chain or meta.get("next_chain") != chain:
        return None
    at = _apply_deltas(store, key, state, at, int(meta["base_deltas"]))
    if at.version != meta.get("base"):
        return None
    state.apply_delta((meta, arrays))
    return Position(chain, 0, int(meta["version"]))


def load_state(store: KVStore, key: str = STATE_KEY) -> FeedState | None:
    """The state of the last snapshot in the store (None when it holds none)."""
    loaded = sync_state(store, key=key)
    return loaded[0] if loaded is not None else None


def keeps_features(state: FeedState, settings: Settings) -> bool:
    """Whether ``state`` keeps the ``[[features]]`` of ``settings``: a snapshot taken with other
    definitions is not resumed (its worker rebuilds the state from the log, logged as a warning)."""
    wanted = [f.model_dump(mode="json") for f in settings.features]
    if state.features.definitions == wanted:
        return True
    log.warning(
        "the stored feed state keeps other [[features]] than the configuration: it is rebuilt from the "
        "event log"
    )
    return False


def state_version(store: KVStore, key: str = STATE_KEY) -> int | None:
    (raw,) = store.get_many([key + ":version"])
    return int(raw) if raw is not None else None


class CheckpointPart(Protocol):
    """More for a checkpoint to write: ``writes()`` gives the keys, then ``written()`` or
    ``failed()`` says how that store write went."""

    def writes(self) -> dict[str, bytes]: ...
    def written(self) -> None: ...
    def failed(self) -> None: ...


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
        full_s: float = 60.0,
        resume: Position | None = None,
        window: TimeWindow | None = None,
    ) -> None:
        self.log = log_
        self.window = window or TimeWindow()
        self.caught_up = threading.Event()  # set once a poll found the end of the log
        self.dead: list[dict[str, Any]] = []  # dead letters not written yet
        self.items: dict[str, ItemUpsert] = {}  # item records not written yet
        # told every batch applied (autocomplete counts its queries); a listener that raises is logged
        self.listeners: list[Callable[[list[Event]], Any]] = []
        # what else each checkpoint writes, in the same store write (autocomplete's published counts)
        self.parts: list[CheckpointPart] = []
        (raw_dead,) = store.get_many([key + ":dead:count"])
        self.dead_count = int(raw_dead) if raw_dead is not None else 0
        self.state = state
        self.store = store
        # the consumer group belongs to the snapshot: with no snapshot (a new or wiped store) the
        # worker starts a new group, which reads the log from its beginning
        (stored,) = store.get_many([key + ":group"])
        # a fresh state (nothing applied: the store held no snapshot, or one of other [[features]])
        # reads the log from its beginning, in a new group
        has_state = state_version(store, key) is not None and state.version > 0
        # whether it goes on with the stored group (else it reads the log from its beginning)
        self.resumed_group = stored is not None and has_state
        self.group = stored.decode() if self.resumed_group and stored else f"{group}-{uuid.uuid4().hex[:12]}"
        self.consumer = consumer
        self.snapshot_s = snapshot_s
        self.key = key
        self.pending: list[str] = []
        self.pending_ids: list[str] = []
        self.last_snapshot = time.monotonic()
        self.applied = 0
        self.delivered = 0
        self.catalog_written = state.catalog_version if has_state else -1
        self.full_s = full_s
        self.chain: str | None = None  # the chain written to; a new worker starts a new one
        self.deltas = 0  # deltas written after the chain's whole snapshot
        self.previous = ("", 0)  # the chain before (its deltas are kept while its bridge is)
        self.lost = False  # a write failed: what it held is in no snapshot, the next is whole
        self.written_version = -1  # the state version of the last snapshot written
        self.last_full = time.monotonic()
        if resume is not None and has_state and resume.version == state.version == state_version(store, key):
            # the state is the store's last snapshot: its chain goes on with deltas, instead of a
            # whole snapshot at the first checkpoint (a copy of the whole state, which at 1M items
            # holds the serving thread for a few hundred milliseconds)
            self.chain, self.deltas = resume.chain or None, resume.deltas
            self.written_version = resume.version
        state.changes = Changes()  # what a delta holds
        # where the state is copied for a snapshot: here, or (in the API's process) on the serving
        # thread between requests, where the copy does not fight serving for the GIL and the lock
        self.capture_on: Callable[[Callable[[], Captured]], Captured] = _here

    def poll(self, count: int = 1000, block_ms: int = 0) -> int:
        """Read and apply one batch; snapshot and acknowledge when due. Returns deliveries read."""
        deliveries = self.log.consume(self.group, self.consumer, count=count, block_ms=block_ms)
        at_end = len(deliveries) < count
        if deliveries:
            state = self.state
            with state.lock:  # skipped by id, unparsed: impressions of lists this state served
                todo = [
                    d
                    for d in deliveries
                    if not state.was_served(d.event_id) and d.event_id not in state.applied
                ]
            events: list[Event] = []
            bounds = self.window.bounds()
            for delivery in todo:
                try:
                    event = delivery.event
                except Exception as exc:  # a row no writer validated (damaged, or another producer's)
                    self._dead(delivery.event_id, f"unreadable: {exc}", None)
                    continue
                outside = self.window.problem(event, bounds)
                if outside is not None:
                    field, value = outside
                    self._dead(
                        event.event_id, f"field '{field}' = {value.isoformat()} {self.window.reason()}", event
                    )
                    continue
                events.append(event)
            failed: list[tuple[Event, str]] = []
            self.applied += state.apply(events, failed)
            for event in events:  # the latest upsert of each item, for GET /v1/items/{id}
                if isinstance(event, ItemUpsert):
                    known = self.items.get(event.item_id)
                    if known is None or known.timestamp <= event.timestamp:
                        self.items[event.item_id] = event
            for event, reason in failed:
                self._dead(event.event_id, reason, event)
            for listener in self.listeners:
                try:
                    listener(events)
                except Exception as exc:  # the feed state is applied: a listener's failure is its own
                    log.error("worker listener %s failed: %s", getattr(listener, "__name__", listener), exc)
            self.pending.extend(d.delivery_id for d in deliveries)
            self.pending_ids.extend(d.event_id for d in deliveries)
            self.delivered += len(deliveries)
        if self.pending and time.monotonic() - self.last_snapshot >= self.snapshot_s:
            self.checkpoint()
        if at_end:
            self.caught_up.set()
        return len(deliveries)

    def _dead(self, event_id: str, reason: str, event: Event | None) -> None:
        log.warning("event %s goes to the dead letters: %s", event_id, reason)
        self.dead.append(
            {
                "event_id": event_id,
                "reason": reason,
                "at": datetime.now(UTC).isoformat(),
                "event": json.loads(event.model_dump_json()) if event is not None else None,
            }
        )

    def checkpoint(self) -> None:
        """Write the state (a delta, or whole with the catalog when it changed), then acknowledge
        what it includes. Acknowledged deliveries never come back, so their ids are then forgotten:
        the next snapshot holds only ids applied and not yet acknowledged (memory and size stay
        bounded)."""
        state = self.state
        catalog_moved = state.catalog_version != self.catalog_written
        whole = (
            self.chain is None
            or self.lost
            or catalog_moved
            or time.monotonic() - self.last_full >= self.full_s
        )
        # from the last snapshot written to this one, when that is all that changed in between
        bridge = whole and self.chain is not None and not self.lost and not catalog_moved
        captured = self.capture_on(lambda: state.capture(catalog_moved, delta=not whole, bridge=bridge))
        if captured.catalog_version != self.catalog_written and captured.catalog is None:
            captured = self.capture_on(lambda: state.capture(True))  # the catalog moved meanwhile
            whole = True
        chain = uuid.uuid4().hex[:12] if whole else str(self.chain)
        captured.state[0].update(chain=chain, base=self.written_version)
        if captured.bridge is not None:  # from the previous chain's last snapshot to this one
            captured.bridge[0].update(
                chain=self.chain, base=self.written_version, base_deltas=self.deltas, next_chain=chain
            )
        snapshot = captured.encode()
        writes = {
            self.key + ":version": str(snapshot.version).encode(),
            self.key + ":group": self.group.encode(),
        }
        if whole:
            writes |= {
                self.key: snapshot.state,
                self.key + ":chain": chain.encode(),
                self.key + ":deltas": b"0",
            }
            if snapshot.bridge is not None:
                writes[self.key + ":bridge"] = snapshot.bridge
        else:
            writes[f"{self.key}:delta:{chain}:{self.deltas + 1}"] = snapshot.state
            writes[self.key + ":deltas"] = str(self.deltas + 1).encode()
        if snapshot.catalog is not None:
            writes[self.key + ":catalog"] = snapshot.catalog
        dead = self.dead
        items = self.items
        self.items = {}
        for item_id, upsert in items.items():
            writes[item_key(item_id, self.key)] = upsert.model_dump_json().encode()
        for n, record in enumerate(dead, start=self.dead_count + 1):  # with the acks that drop them
            writes[f"{self.key}:dead:{(n - 1) % DEAD_LETTERS_KEPT}"] = json.dumps(record).encode()
        if dead:
            writes[self.key + ":dead:count"] = str(self.dead_count + len(dead)).encode()
        for part in self.parts:
            writes |= part.writes()
        try:
            self.store.put_many(writes)  # one transaction (SQLite) / one MSET (Redis)
        except Exception:
            self.lost = True  # the changes captured are lost with this write: next, a whole one
            self.items = items | self.items  # written with the next one
            for part in self.parts:
                part.failed()
            raise
        for part in self.parts:
            part.written()
        old: list[str] = []  # the chain before the previous one: no bridge leads from it any more
        if whole:
            old = [f"{self.key}:delta:{self.previous[0]}:{i}" for i in range(1, self.previous[1] + 1)]
            if self.chain is not None:
                self.previous = (self.chain, self.deltas)
            self.chain, self.deltas, self.last_full, self.lost = chain, 0, time.monotonic(), False
        else:
            self.deltas += 1
        self.written_version = snapshot.version
        self.catalog_written = snapshot.catalog_version
        self.dead_count += len(dead)
        self.dead = self.dead[len(dead) :]
        if self.pending:
            self.log.ack(self.group, self.pending)
            self.pending = []
            with self.state.lock:  # what others applied (the API's impressions) stays until acked
                self.state.applied.difference_update(self.pending_ids)
            self.state.forget_served(self.pending_ids)
            self.pending_ids = []
        self.last_snapshot = time.monotonic()
        if old:
            try:
                self.store.delete_many(old)
            except Exception as exc:  # left behind, they are never read again
                log.warning("old snapshot deltas not deleted: %s", exc)

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
