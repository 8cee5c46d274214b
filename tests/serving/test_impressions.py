from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from recstack.features.feed import logged_values
from recstack.index.sources import US
from recstack.schema import EVENT_SCHEMA, validate_table
from recstack.serving.impressions import ImpressionBuffer


def _add(buffer: ImpressionBuffer, request_id: str, n: int) -> list[str]:
    return buffer.add(
        request_id,
        "u1",
        [f"i{k}" for k in range(n)],
        1_700_000_000 * US,
        "feed",
        '{"feed": "3"}',
        '{"device": "ios"}',
        ['{"age_h": 1.0}'] * n,
    )


def test_buffered_lists_become_one_valid_table_in_the_log_schema() -> None:
    buffer = ImpressionBuffer()
    assert buffer.take() is None
    assert _add(buffer, "r1", 3) == ["r1:0", "r1:1", "r1:2"]
    _add(buffer, "r2", 2)
    assert len(buffer) == 5
    table = buffer.take()
    assert table is not None and table.schema == EVENT_SCHEMA and len(buffer) == 0
    valid, problems = validate_table(table)
    assert valid.all() and not problems
    rows = table.to_pylist()
    assert [(r["request_id"], r["position"], r["item_id"]) for r in rows] == [
        ("r1", 0, "i0"),
        ("r1", 1, "i1"),
        ("r1", 2, "i2"),
        ("r2", 0, "i0"),
        ("r2", 1, "i1"),
    ]
    assert {r["kind"] for r in rows} == {"impression"}
    assert rows[0]["timestamp"].timestamp() == pytest.approx(1_700_000_000)
    assert json.loads(rows[0]["model_versions"]) == {"feed": "3"}


def test_a_failed_write_is_kept_ahead_of_newer_rows_and_bounded() -> None:
    buffer = ImpressionBuffer(limit=6)
    _add(buffer, "old", 4)
    failed = buffer.take()
    assert failed is not None
    _add(buffer, "new", 3)
    buffer.give_back(failed)  # 7 rows for a limit of 6: the oldest one goes
    assert len(buffer) == 6 and buffer.dropped == 1
    table = buffer.take()
    assert table is not None
    assert table.column("event_id").to_pylist() == ["old:1", "old:2", "old:3", "new:0", "new:1", "new:2"]
    assert buffer.rows() == [] and len(buffer) == 0


def test_logged_feature_rows_are_json_objects_of_the_exact_values() -> None:
    rng = np.random.default_rng(0)
    names = ["a", "b", "c"]
    matrix = np.vstack([rng.normal(scale=1e6, size=(50, 3)), [0.0, -0.0, 1e-7], [1 / 3, 2e-300, 7.0]])
    rows = logged_values(names, {n: matrix[:, j] for j, n in enumerate(names)})
    for row, values in zip(rows, matrix.tolist(), strict=True):
        assert json.loads(row) == dict(zip(names, values, strict=True))  # exact: what training reads
    with_nan = logged_values(names, {"a": np.array([np.nan]), "b": np.array([np.inf]), "c": np.array([1.0])})
    decoded = json.loads(with_nan[0])
    assert np.isnan(decoded["a"]) and decoded["b"] == np.inf and decoded["c"] == 1.0


def test_timestamps_keep_microseconds() -> None:
    buffer = ImpressionBuffer()
    buffer.add("r", "u", ["i"], 1_700_000_000_123_456, "feed", "{}", "{}", ["{}"])
    table = buffer.take()
    assert table is not None
    stamp = table.column("timestamp").cast(pa.int64()).to_pylist()[0]
    assert stamp == 1_700_000_000_123_456
