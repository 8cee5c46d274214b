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
