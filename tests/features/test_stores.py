"""One contract for every online key-value store: memory, SQLite and Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from recstack.errors import BackendUnavailableError
from recstack.features.stores import KVStore, MemoryStore, RedisStore, SQLiteStore


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Iterator[KVStore]:
    if request.param == "memory":
        made: KVStore = MemoryStore()
    elif request.param == "sqlite":
        made = SQLiteStore(tmp_path / "kv.sqlite")
    else:
        made = RedisStore(request.getfixturevalue("redis_url"), prefix=f"recstack-test:{unique}:")
    yield made
    if isinstance(made, RedisStore):
        made.drop()
    made.close()


def test_put_get_many_in_order(store: KVStore) -> None:
    store.put_many({"a": b"1", "b": b"\x00\xff", "c": b""})
    assert store.get_many(["c", "missing", "a", "b"]) == [b"", None, b"1", b"\x00\xff"]
    assert store.get_many([]) == []


def test_overwrite_and_delete(store: KVStore) -> None:
    store.put_many({"a": b"1"})
    store.put_many({"a": b"2"})
    assert store.get_many(["a"]) == [b"2"]
    store.delete_many(["a", "never"])
    assert store.get_many(["a"]) == [None]


def test_large_batches(store: KVStore) -> None:
    items = {f"k{i}": str(i).encode() for i in range(2_500)}
    store.put_many(items)
    keys = list(items)[::-1]
    assert store.get_many(keys) == [items[k] for k in keys]


def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    first = SQLiteStore(tmp_path / "kv.sqlite")
    first.put_many({"a": b"1"})
    first.close()
    assert SQLiteStore(tmp_path / "kv.sqlite").get_many(["a"]) == [b"1"]


def test_dead_redis_is_a_clear_error() -> None:
    dead = RedisStore("redis://127.0.0.1:1/0", socket_timeout_s=0.5)
    with pytest.raises(BackendUnavailableError, match="unreachable during read"):
        dead.get_many(["a"])
    with pytest.raises(BackendUnavailableError, match="unreachable during write"):
        dead.put_many({"a": b"1"})
