from __future__ import annotations

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from recstack.features.definitions import (
    MISSING_RECENCY,
    US,
    Attribute,
    Counter,
    FeatureDef,
    Rate,
    Recency,
    parse_duration,
    stable_hash,
)

ADAPTER: TypeAdapter[object] = TypeAdapter(FeatureDef)


def test_durations() -> None:
    assert [parse_duration(x) for x in ("30s", "15m", "1h", "7d", "2w")] == [
        30,
        900,
        3600,
        604_800,
        1_209_600,
    ]
    for bad in ("0h", "1y", "h", "-1h", ""):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_window_buckets() -> None:
    counter = Counter(name="c", entity="item", kinds=("click",), window="1d")
    assert (counter.bucket_us, counter.n_buckets) == (3600 * US, 24)
    weekly = Counter(name="c", entity="item", kinds=("click",), window="7d", bucket="1d")
    assert weekly.n_buckets == 7
    with pytest.raises(ValidationError, match="whole number of buckets"):
        Counter(name="c", entity="item", kinds=("click",), window="1h", bucket="7m")
    with pytest.raises(ValidationError, match="longer than zero"):
        Counter(name="c", entity="item", kinds=("click",), window="0d")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"type": "counter", "name": "c", "entity": "item", "kinds": ["clik"], "window": "1h"}, "invalid"),
        ({"type": "counter", "name": "c", "entity": "creator", "kinds": ["click"], "window": "1h"}, "entity"),
        (
            {"type": "counter", "name": "Bad Name", "entity": "item", "kinds": ["click"], "window": "1h"},
            "pattern",
        ),
        (
            {
                "type": "rate",
                "name": "r",
                "entity": "item",
                "numerator": [],
                "denominator": ["impression"],
                "window": "1h",
            },
            "invalid",
        ),
        ({"type": "recency", "name": "r", "entity": "item", "kinds": ["click"], "colour": 1}, "Extra"),
    ],
)
def test_bad_definitions_fail_at_definition_time(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ADAPTER.validate_python(raw)


def test_rate_finish_with_prior() -> None:
    rate = Rate(
        name="r",
        entity="item",
        numerator=("click",),
        denominator=("impression",),
        window="1d",
        prior=0.1,
        prior_weight=10,
    )
    out = rate.finish(np.array([0, 5, 0]), np.array([0, 10, 90]))
    assert out == pytest.approx([0.1, 6 / 20, 1 / 100])
    plain = Rate(name="r", entity="item", numerator=("click",), denominator=("impression",), window="1d")
    assert plain.finish(np.array([0, 1]), np.array([0, 4])) == pytest.approx([0.0, 0.25])


def test_recency_and_attribute_encoding() -> None:
    out = Recency.finish(np.array([10 * US, 10 * US]), np.array([4 * US, -1]))
    assert out.tolist() == [6.0, MISSING_RECENCY]
    attr = Attribute(name="a", entity="item", field="topic", buckets=11)
    assert attr.encode(None) == 0.0 and 1 <= attr.encode("x") <= 10
    assert attr.encode("x") == float(stable_hash("x", 11))  # stable across calls and processes
    dense = Attribute(name="p", entity="item", field="price", kind="dense")
    assert dense.encode("3.5") == 3.5 and np.isnan(dense.encode("n/a"))
