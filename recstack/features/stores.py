"""Online key-value stores behind one narrow interface: memory, SQLite and Redis.

The online feature path keeps one record per entity (``user:<id>``, ``item:<id>``) as bytes. Every
backend passes the same contract suite (``tests/features/test_stores.py``).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from recstack import redis_client


class KVStore(Protocol):
    """Bytes by string key, read and written many at a time."""

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...
    def put_many(self, items: Mapping[str, bytes]) -> None: ...
    def delete_many(self, keys: Sequence[str]) -> None: ...
    def close(self) -> None: ...


class MemoryStore:
    """A dict in this process (the embedded default).

    ``holds_objects`` tells the online feature path that state may stay as live Python objects in
    its own cache (nothing outlives the process anyway), so it skips serialization and eviction.
    """

    holds_objects = True

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        get = self._data.get
        return [get(k) for k in keys]

    def put_many(self, items: Mapping[str, bytes]) -> None:
        self._data.update(items)

    def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)

    def close(self) -> None:
        pass


class SQLiteStore:
    """One SQLite table (WAL mode): survives restarts with no server."""

    def __init__(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=NORMAL")
        self._con.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        found: dict[str, bytes] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                found.update(self._con.execute(f"SELECT key, value FROM kv WHERE key IN ({marks})", chunk))
        return [found.get(k) for k in keys]

    def put_many(self, items: Mapping[str, bytes]) -> None:
        with self._lock:
            self._con.execute("BEGIN")
            self._con.executemany("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", items.items())
            self._con.execute("COMMIT")

    def delete_many(self, keys: Sequence[str]) -> None:
        with self._lock:
            self._con.executemany("DELETE FROM kv WHERE key = ?", [(k,) for k in keys])

    def close(self) -> None:
        self._con.close()


class RedisStore:
    """Redis strings under ``prefix``; MGET / MSET. A dead Redis raises BackendUnavailableError."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        prefix: str = "recstack:f:",
        socket_timeout_s: float = 5.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.client = redis_client.connect(url, socket_timeout_s)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        values: list[bytes | None] = redis_client.call(
            self.url, "read", self.client.mget, [self.prefix + k for k in keys]
        )
        return values

    def put_many(self, items: Mapping[str, bytes]) -> None:
        if items:
            redis_client.call(
                self.url, "write", self.client.mset, {self.prefix + k: v for k, v in items.items()}
            )

    def delete_many(self, keys: Sequence[str]) -> None:
        if keys:
            redis_client.call(self.url, "delete", self.client.delete, *[self.prefix + k for k in keys])

    def drop(self) -> None:
        """Delete every key under the prefix (tests and resets)."""
        keys = list(self.client.scan_iter(match=self.prefix + "*", count=1000))
        for start in range(0, len(keys), 1000):
            self.client.delete(*keys[start : start + 1000])

    def close(self) -> None:
        self.client.close()
