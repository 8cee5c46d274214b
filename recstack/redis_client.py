"""The one way recstack talks to Redis: a client with timeouts, and calls whose connection failures
become BackendUnavailableError naming the URL and the operation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from recstack.errors import BackendUnavailableError


def connect(url: str, socket_timeout_s: float = 5.0) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s)


def call(url: str, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; an unreachable Redis raises BackendUnavailableError."""
    try:
        return fn(*args, **kwargs)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BackendUnavailableError(f"Redis at {url} is unreachable during {what}: {exc}") from exc
