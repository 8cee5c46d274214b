"""Shared fixtures: real data sets (skip with the reason when absent) and real services.

Under RECSTACK_REQUIRE_SERVICES=1 (CI) an unreachable Redis or PostgreSQL fails the test instead
of skipping it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
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


def synthetic_ctr(n: int, seed: int = 0) -> pd.DataFrame:
    """Click data from a known logistic model with a user x app cross, a dense effect and a
    position effect; ``p_click`` is the true probability (the Bayes-optimal score), ``p_top`` the
    probability had the item been shown first (the best a position-free score can rank by)."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 12, n)
    app = rng.integers(0, 16, n)
    price = rng.normal(size=n)
    position = rng.integers(0, 10, n)
    affinity = np.where((user % 4) == (app % 4), 1.5, -0.5)  # the cross a linear model needs
    logit = affinity + 0.8 * price - 0.25 * position - 0.5
    p = 1.0 / (1.0 + np.exp(-logit))
    p_top = 1.0 / (1.0 + np.exp(-(logit + 0.25 * position)))  # the same item shown in slot 0
    like_p = 1.0 / (1.0 + np.exp(-(0.7 * affinity - 1.0)))
    return pd.DataFrame(
        {
            "user": user,
            "app": app,
            "price": price,
            "position": position,
            "p_click": p,
            "p_top": p_top,
            "click": (rng.random(n) < p).astype(float),
            "like": (rng.random(n) < like_p).astype(float),
        }
    )


@pytest.fixture(scope="session")
def ctr_frames() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    frame = synthetic_ctr(24_000)
    return frame[:16_000], frame[16_000:20_000], frame[20_000:]
