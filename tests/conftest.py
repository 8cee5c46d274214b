"""Shared fixtures: real data sets (skip with the reason when absent) and real services.

Under RECSTACK_REQUIRE_SERVICES=1 (CI) an unreachable Redis or PostgreSQL fails the test instead
of skipping it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from recstack.config import Settings, load_settings

DATA_DIR = Path(os.environ.get("RECSTACK_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
REQUIRE_SERVICES = os.environ.get("RECSTACK_REQUIRE_SERVICES") == "1"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def data_path(name: str) -> Path:
    """Folder of a real data set, or skip the test saying where it was looked for."""
    folder = DATA_DIR / name
    if not folder.exists():
        pytest.skip(
            f"data set {name} not found at {folder} (set RECSTACK_DATA_DIR or run `recstack data fetch`)"
        )
    return folder


def service_unavailable(what: str, reason: str) -> None:
    message = f"{what} unreachable: {reason}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} (RECSTACK_REQUIRE_SERVICES=1)")
    pytest.skip(message)


@pytest.fixture
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        service_unavailable(f"Redis at {REDIS_URL}", str(exc))
    return REDIS_URL


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded defaults with state under tmp_path, tracking off, quick training."""
    return load_settings(
        None,
        {
            "RECSTACK_PATHS__STATE_DIR": str(tmp_path / "state"),
            "RECSTACK_TRACKING__ENABLED": "false",
            "RECSTACK_TRAIN__PROGRESS": "false",
        },
    )


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    yield
