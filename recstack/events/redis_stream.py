"""The live bus: an event log on Redis Streams with consumer groups.

Append runs one Lua script per batch, so a batch is recorded atomically: each event id is added to
the id set of its day (``<stream>:ids:<YYYY-MM-DD>``, expiring after ``dedupe_days`` days) and, if it
was new, the event is added to the stream. A dead Redis raises BackendUnavailableError before
anything is recorded, so the caller knows none of the batch was accepted.

``append`` writes one stream entry per event (field ``e``: its JSON). ``append_table`` (bulk: the
served impressions of every request, ingestion) writes one entry per ``_BATCH`` new events, each
event a field named by its id holding its JSON: one entry to add, deliver and acknowledge instead of
a thousand. A consumer gets the events of such an entry together, as deliveries that share the
entry's delivery id (so ``consume(count)`` counts entries) and know their event ids before parsing.
``count`` counts events (``<stream>:n``, kept by the script).

Consumer groups are Redis consumer groups: XREADGROUP, XACK; a consumer that restarts first reads its
own pending (delivered, unacknowledged) entries, and entries left pending by a consumer that died are
claimed after ``claim_idle_ms``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import redis

from recstack import redis_client
from recstack.errors import DataFormatError, EventValidationError
from recstack.events.base import AppendResult, Delivery, Rejected, in_selection, validate_batch
from recstack.schema import (
    EVENT_SCHEMA,
    Event,
    TimeWindow,
    conform_table,
    events_to_table,
    parse_event_json,
    table_json,
    validate_table,
)

_BATCH = 1_000  # events in one stream entry of a bulk append

# KEYS: stream, ttl (seconds), events counter, batch (0: one entry per event; n: n events an entry)
# ARGV: (ids key, event id, JSON) triples. Returns 1 (added) or 0 (a duplicate) per event.
_APPEND = """
local added, fields, expire = {}, {}, {}
local batch = tonumber(KEYS[4])
local total = 0
for i = 1, #ARGV, 3 do
  if redis.call('SADD', ARGV[i], ARGV[i + 1]) == 1 then
    expire[ARGV[i]] = true
    total = total + 1
    added[#added + 1] = 1
    if batch == 0 then
      redis.call('XADD', KEYS[1], '*', 'e', ARGV[i + 2])
    else
      fields[#fields + 1] = ARGV[i + 1]
      fields[#fields + 1] = ARGV[i + 2]
      if #fields >= 2 * batch then
        redis.call('XADD', KEYS[1], '*', unpack(fields))
        fields = {}
      end
    end
  else
    added[#added + 1] = 0
  end
end
if #fields > 0 then
  redis.call('XADD', KEYS[1], '*', unpack(fields))
end
for ids_key in pairs(expire) do
  redis.call('EXPIRE', ids_key, tonumber(KEYS[2]))
end
if total > 0 then
  redis.call('INCRBY', KEYS[3], total)
end
return added
"""


class RedisStreamLog:
    """Event log and live bus on one Redis stream. See the module docstring."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        stream: str = "recstack:events",
        dedupe_days: int = 8,
        claim_idle_ms: int = 60_000,
        socket_timeout_s: float = 5.0,
        window: TimeWindow | None = None,
    ) -> None:
        self.url = url
        self.window = window or TimeWindow()
        self.stream = stream
        self.dedupe_days = dedupe_days
        self.claim_idle_ms = claim_idle_ms
        self.client: redis.Redis = redis_client.connect(url, socket_timeout_s)
        self._append_script = self.client.register_script(_APPEND)
        self._recovered: set[tuple[str, str]] = set()
        self._pending_cursor: dict[tuple[str, str], str] = {}
        self._groups_made: set[str] = set()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return redis_client.call(self.url, what, fn, *args, **kwargs)

    def ping(self) -> bool:
        return bool(self._call("ping", self.client.ping))

    def append(self, events: Sequence[Any]) -> AppendResult:
        valid, result = validate_batch(events, self.window)
        if not valid:
            return result
        argv: list[str] = []
        for _, event in valid:
            day = event.timestamp.strftime("%Y-%m-%d")
            argv += [f"{self.stream}:ids:{day}", event.event_id, event.model_dump_json()]
        flags = self._add(argv, batch=False)
        result.accepted += sum(flags)
        result.duplicates += len(flags) - sum(flags)
        result.accepted_events = [event for (_, event), flag in zip(valid, flags, strict=True) if flag]
        return result

    def append_table(self, table: pa.Table) -> AppendResult:
        """Rows written as their events' JSON, built column-wise from the validated table (no model
        per row: the served impressions of every request come this way)."""
        table = conform_table(table)
        valid, problems = validate_table(table, self.window)
        table = table.filter(pa.array(valid))
        result = AppendResult(rejected=[Rejected(i, msg) for i, msg in problems])
        if not table.num_rows:
            return result
        texts = table_json(table)
        days = pc.strftime(table.column("timestamp"), format="%Y-%m-%d").to_pylist()
        argv: list[str] = []
        for event_id, day, text in zip(table.column("event_id").to_pylist(), days, texts, strict=True):
            argv += [f"{self.stream}:ids:{day}", event_id, text]
        flags = self._add(argv, batch=True)
        result.accepted = sum(flags)
        result.duplicates = len(flags) - result.accepted
        result.accepted_table = table.filter(pa.array(flags, pa.bool_()))
        return result

    def _add(self, argv: list[str], batch: bool) -> list[bool]:
        """Add (ids key, event id, JSON) triples whose ids the log has not seen, atomically, one
        entry each or (``batch``) several to an entry; True for each one added."""
        ttl = str(self.dedupe_days * 86_400)
        keys = [self.stream, ttl, f"{self.stream}:n", str(_BATCH if batch else 0)]
        flags = self._call("append", self._append_script, keys=keys, args=argv)
        return [bool(int(f)) for f in flags]

    def _parse(self, entry_id: bytes, text: bytes) -> Event:
        try:
            return parse_event_json(text)
        except (json.JSONDecodeError, EventValidationError) as exc:
            raise DataFormatError(
                f"redis stream {self.stream}", None, f"entry {entry_id!r} is not a recstack event: {exc}"
            ) from exc

    def _decode(self, entry_id: bytes, fields: dict[bytes, bytes]) -> list[Event]:
        """The events of one entry, parsed (one, or a bulk write's several)."""
        return [delivery.event for delivery in self._deliveries(entry_id, fields)]

    def _deliveries(self, entry_id: bytes, fields: dict[bytes, bytes]) -> list[Delivery]:
        """The events of one entry as deliveries, each parsed on first access. An entry holds one
        event (field ``e``) or several, each a field named by its event id."""
        delivery_id = entry_id.decode()
        text = fields.get(b"e")
        if text is not None and len(fields) == 1:
            event = self._parse(entry_id, text)
            return [Delivery.of(delivery_id, event)]
        return [
            Delivery(delivery_id, event_id.decode(), partial(self._parse, entry_id, text))
            for event_id, text in fields.items()
        ]

    def replay(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        kinds: Sequence[str] | None = None,
    ) -> Iterator[Event]:
        last = "-"
        while True:
            entries = self._call("replay", self.client.xrange, self.stream, min=last, max="+", count=200)
            if last != "-":
                entries = entries[1:]  # XRANGE is inclusive of the last id already seen
            if not entries:
                return
            for entry_id, fields in entries:
                for event in self._decode(entry_id, fields):
                    if in_selection(event.timestamp, event.kind, start, end, kinds):
                        yield event
            last = entries[-1][0].decode()

    def table(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        kinds: Sequence[str] | None = None,
    ) -> pa.Table:
        events = list(self.replay(start, end, kinds))
        return events_to_table(events) if events else EVENT_SCHEMA.empty_table()

    def count(self) -> int:
        """Events in the log (the script's counter; a stream written before it: its entries)."""
        kept = self._call("count", self.client.get, f"{self.stream}:n")
        return int(kept) if kept is not None else int(self._call("count", self.client.xlen, self.stream))

    def _ensure_group(self, group: str) -> None:
        if group in self._groups_made:
            return
        try:
            self._call("create group", self.client.xgroup_create, self.stream, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups_made.add(group)

    def consume(self, group: str, consumer: str, count: int = 100, block_ms: int = 0) -> list[Delivery]:
        self._ensure_group(group)
        key = (group, consumer)
        entries: list[Any] = []
        if key not in self._recovered:
            # First reads after (re)start: page through this consumer's own pending entries, then
            # claim entries that other (dead) consumers left pending for longer than claim_idle_ms.
            cursor = self._pending_cursor.get(key, "0")
            own = self._call(
                "consume", self.client.xreadgroup, group, consumer, {self.stream: cursor}, count=count
            )
            entries = own[0][1] if own else []
            if entries:
                self._pending_cursor[key] = entries[-1][0].decode()
            else:
                claimed = self._call(
                    "claim",
                    self.client.xautoclaim,
                    self.stream,
                    group,
                    consumer,
                    min_idle_time=self.claim_idle_ms,
                    start_id="0-0",
                    count=count,
                )
                entries = claimed[1]
                if entries:
                    self._pending_cursor[key] = entries[-1][0].decode()
                else:
                    self._recovered.add(key)
        if not entries:
            fresh = self._call(
                "consume",
                self.client.xreadgroup,
                group,
                consumer,
                {self.stream: ">"},
                count=count,
                block=block_ms or None,
            )
            entries = fresh[0][1] if fresh else []
        return [d for eid, fields in entries if fields for d in self._deliveries(eid, fields)]

    def ack(self, group: str, delivery_ids: Sequence[str]) -> int:
        """Acknowledge entries; the deliveries of a bulk entry share its id. Returns how many of
        the deliveries given were pending (all of them when every entry was)."""
        if not delivery_ids:
            return 0
        distinct = list(dict.fromkeys(delivery_ids))
        acked = int(self._call("ack", self.client.xack, self.stream, group, *distinct))
        return len(delivery_ids) if acked == len(distinct) else acked

    def drop(self) -> None:
        """Delete the stream and its id sets (tests and resets)."""
        keys = list(self._call("drop", self.client.scan_iter, match=f"{self.stream}:ids:*"))
        self._call("drop", self.client.delete, self.stream, f"{self.stream}:n", *keys)

    def close(self) -> None:
        self.client.close()
