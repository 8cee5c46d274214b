"""Behaviour specific to the Redis Streams bus."""

from __future__ import annotations

import pytest

from recstack.errors import BackendUnavailableError
from recstack.events import RedisStreamLog

from .test_contract import ev


def test_dead_redis_raises_and_records_nothing(redis_url: str, unique: str) -> None:
    dead = RedisStreamLog("redis://127.0.0.1:1/0", stream=f"recstack-test:{unique}", socket_timeout_s=0.5)
    with pytest.raises(BackendUnavailableError, match="unreachable during append"):
        dead.append([ev(0)])
    live = RedisStreamLog(redis_url, stream=f"recstack-test:{unique}")
    try:
        assert live.count() == 0  # nothing half-written; the caller can retry the whole batch
        assert live.append([ev(0)]).accepted == 1
    finally:
        live.drop()


def test_pending_entries_of_a_dead_consumer_are_claimed(redis_url: str, unique: str) -> None:
    log = RedisStreamLog(redis_url, stream=f"recstack-test:{unique}", claim_idle_ms=0)
    try:
        log.append([ev(i) for i in range(3)])
        assert len(log.consume("g", "dead-worker", count=3)) == 3  # never acknowledged
        other = RedisStreamLog(redis_url, stream=f"recstack-test:{unique}", claim_idle_ms=0)
        claimed = other.consume("g", "new-worker", count=10)
        assert sorted(d.event.event_id for d in claimed) == ["e0", "e1", "e2"]
    finally:
        log.drop()


def test_bulk_writes_are_one_entry_per_thousand_events(redis_url: str, unique: str) -> None:
    from recstack.events.redis_stream import _BATCH
    from recstack.schema import events_to_table, parse_event

    log = RedisStreamLog(redis_url, stream=f"recstack-test:{unique}")
    try:
        assert log.append([ev(i) for i in range(5)]).accepted == 5  # one entry each
        table = events_to_table([parse_event(ev(i)) for i in range(2 * _BATCH + 500)])
        result = log.append_table(table)  # e0..e4 are already in the log
        assert (result.accepted, result.duplicates) == (2 * _BATCH + 495, 5)
        assert log.client.xlen(log.stream) == 5 + 3  # 1,000 + 1,000 + 495 new events
        assert log.count() == 2 * _BATCH + 500  # events, not entries
        singles = log.consume("g", "c", count=5)
        assert [d.event.event_id for d in singles] == [f"e{i}" for i in range(5)]
        bulk = log.consume("g", "c", count=1)  # one entry: its events together
        assert len(bulk) == _BATCH and len({d.delivery_id for d in bulk}) == 1
        ids = [d.event_id for d in bulk]  # known before parsing
        assert all(d._event is None for d in bulk)
        assert ids == [f"e{i}" for i in range(5, _BATCH + 5)]
        assert [d.event.event_id for d in bulk] == ids
        assert log.ack("g", [d.delivery_id for d in bulk]) == _BATCH
        assert log.ack("g", [d.delivery_id for d in bulk]) == 0  # no longer pending
        replayed = [e.event_id for e in log.replay()]
        assert replayed == [f"e{i}" for i in range(2 * _BATCH + 500)]
        again = log.append_table(table)
        assert (again.accepted, again.duplicates) == (0, 2 * _BATCH + 500)
        assert log.client.xlen(log.stream) == 8
    finally:
        log.drop()
