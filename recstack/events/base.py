"""The event-log interface: append (idempotent by event id), replay, and consumer groups.

Two implementations share one contract suite (``tests/events/test_contract.py``):
:class:`~recstack.events.parquet.ParquetEventLog` (the embedded default; append-only Parquet
partitioned by day, read through DuckDB) and :class:`~recstack.events.redis_stream.RedisStreamLog`
(the live bus on Redis Streams).

Consumer groups give at-least-once delivery: a delivery that is not acknowledged is delivered again
to the next reader of the group that starts after a restart. Consumers make their effects idempotent
with :class:`IdempotentConsumer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import pyarrow as pa

from recstack.errors import EventValidationError
from recstack.schema import Event, TimeWindow, parse_event


@dataclass(frozen=True)
class Rejected:
    """An event that failed validation: its index in the submitted batch and why."""

    index: int
    error: str


@dataclass
class AppendResult:
    """What happened to each event of a batch: accepted, duplicate (already in the log) or rejected."""

    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    # what was accepted, for whoever applies it next (online features); not part of the summary
    accepted_events: list[Event] = field(default_factory=list, repr=False, compare=False)
    accepted_table: pa.Table | None = field(default=None, repr=False, compare=False)

    def merge(self, other: AppendResult) -> None:
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.rejected.extend(other.rejected)


class Delivery:
    """One event handed to a consumer of a group; acknowledge it by ``delivery_id``.

    ``event_id`` is known at once; ``event`` is parsed (and validated) on first access, so a consumer
    that skips the events it has already applied, by id, does not pay for parsing them.
    """

    __slots__ = ("_event", "_load", "delivery_id", "event_id")

    def __init__(self, delivery_id: str, event_id: str, load: Callable[[], Event]) -> None:
        self.delivery_id = delivery_id
        self.event_id = event_id
        self._load: Callable[[], Event] | None = load
        self._event: Event | None = None

    @classmethod
    def of(cls, delivery_id: str, event: Event) -> Delivery:
        """A delivery of an event already parsed."""
        delivery = cls(delivery_id, event.event_id, lambda: event)
        delivery._event, delivery._load = event, None
        return delivery

    @property
    def event(self) -> Event:
        if self._event is None:
            assert self._load is not None
            self._event, self._load = self._load(), None
        return self._event

    def __repr__(self) -> str:
        return f"Delivery({self.delivery_id!r}, event_id={self.event_id!r})"


class EventLog(Protocol):
    """Append-only log of events; see the module docstring for the guarantees."""

    def append(self, events: Sequence[Any]) -> AppendResult:
        """Validate and append; a bad event is rejected with its index, the good ones are kept."""
        ...

    def replay(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        kinds: Sequence[str] | None = None,
    ) -> Iterator[Event]:
        """Events with ``start <= timestamp < end`` of the given kinds, in append order."""
        ...

    def append_table(self, table: pa.Table) -> AppendResult:
        """Bulk path: validate and append an Arrow table of events column-wise; same guarantees."""
        ...

    def table(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        kinds: Sequence[str] | None = None,
    ) -> pa.Table:
        """The same selection as :meth:`replay`, column-wise in :data:`recstack.schema.EVENT_SCHEMA`."""
        ...

    def count(self) -> int:
        """Number of events in the log."""
        ...

    def consume(self, group: str, consumer: str, count: int = 100, block_ms: int = 0) -> list[Delivery]:
        """Up to ``count`` undelivered events for ``group`` (unacknowledged ones first after a
        restart). On Redis ``count`` counts stream entries: a bulk write's entry brings all its
        events at once, as deliveries sharing one delivery id."""
        ...

    def ack(self, group: str, delivery_ids: Sequence[str]) -> int:
        """Acknowledge deliveries; returns how many were pending."""
        ...

    def close(self) -> None: ...


def validate_batch(
    raw_events: Sequence[Any], window: TimeWindow | None = None
) -> tuple[list[tuple[int, Event]], AppendResult]:
    """Parse each raw event; returns the valid ones with their index, and a result holding rejections
    (an event timed outside ``window``, the default window when None, is rejected).

    An id repeated within the batch counts as a duplicate of its first occurrence.
    """
    window = window or TimeWindow()
    bounds = window.bounds()
    result = AppendResult()
    valid: list[tuple[int, Event]] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_events):
        try:
            event = parse_event(raw, index)
        except EventValidationError as exc:
            result.rejected.append(Rejected(index, str(exc)))
            continue
        outside = window.problem(event, bounds)
        if outside is not None:
            error = EventValidationError(index, outside[0], outside[1].isoformat(), window.reason())
            result.rejected.append(Rejected(index, str(error)))
            continue
        if event.event_id in seen:
            result.duplicates += 1
            continue
        seen.add(event.event_id)
        valid.append((index, event))
    return valid, result


def in_selection(
    event_time: datetime, kind: str, start: datetime | None, end: datetime | None, kinds: Sequence[str] | None
) -> bool:
    """True when an event falls in ``[start, end)`` and among ``kinds`` (None means all)."""
    if start is not None and event_time < start:
        return False
    if end is not None and event_time >= end:
        return False
    return kinds is None or kind in kinds


class IdempotentConsumer:
    """Applies a handler at most once per event id, so at-least-once delivery counts each event once.

    ``seen`` is any set-like store of processed ids; pass a persistent one (the online store's) to
    survive restarts. Acknowledges after the handler returns, so a crash in between redelivers.
    """

    def __init__(
        self,
        log: EventLog,
        group: str,
        consumer: str,
        handler: Callable[[Event], None],
        seen: set[str] | None = None,
    ) -> None:
        self.log = log
        self.group = group
        self.consumer = consumer
        self.handler = handler
        self.seen: set[str] = seen if seen is not None else set()
        self.applied = 0
        self.skipped = 0

    def apply(self, events: list[Event]) -> None:
        """Apply events not seen before (in delivery order); subclasses may apply them as a batch."""
        for event in events:
            self.handler(event)

    def poll(self, count: int = 500, block_ms: int = 0) -> int:
        """Process one batch; returns the number of deliveries read."""
        deliveries = self.log.consume(self.group, self.consumer, count=count, block_ms=block_ms)
        fresh = [d.event for d in deliveries if d.event_id not in self.seen]
        self.skipped += len(deliveries) - len(fresh)
        if fresh:
            self.apply(fresh)
            self.seen.update(e.event_id for e in fresh)
            self.applied += len(fresh)
        if deliveries:
            self.log.ack(self.group, [d.delivery_id for d in deliveries])
        return len(deliveries)

    def drain(self, count: int = 500) -> int:
        """Poll until nothing is left; returns the total number of deliveries read."""
        total = 0
        while n := self.poll(count):
            total += n
        return total


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Split an iterable into lists of at most ``size`` items."""
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
