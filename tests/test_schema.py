from datetime import UTC, datetime

import pyarrow as pa
import pytest

from recstack.errors import EventValidationError
from recstack.schema import (
    EVENT_SCHEMA,
    Engagement,
    FeatureKind,
    FeatureSpec,
    Impression,
    event_to_row,
    events_to_table,
    parse_event,
    row_to_event,
)

IMP = {
    "event_id": "e1",
    "kind": "impression",
    "timestamp": "2026-11-23T10:00:00+01:00",
    "request_id": "r1",
    "user_id": "u1",
    "item_id": "i1",
    "position": 2,
    "model_versions": {"ranker": "v3"},
    "experiment_arm": "B",
    "features": {"ctr_7d": 0.12},
}


def test_parse_normalizes_time_to_utc() -> None:
    event = parse_event(IMP)
    assert isinstance(event, Impression)
    assert event.timestamp == datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def test_epoch_seconds_accepted() -> None:
    event = parse_event({**IMP, "timestamp": 1_700_000_000})
    assert event.timestamp == datetime.fromtimestamp(1_700_000_000, tz=UTC)


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"timestamp": "2026-11-23T10:00:00"}, "timestamp", "timezone"),
        ({"timestamp": True}, "timestamp", "epoch"),
        ({"position": -1}, "position", "greater than or equal"),
        ({"position": "first"}, "position", "integer"),
        ({"event_id": ""}, "event_id", "at least 1"),
        ({"kind": "purchase"}, "kind", "must be one of"),
        ({"colour": "red"}, "colour", "Extra inputs"),
        ({"user_id": None}, "user_id", "string"),
    ],
)
def test_invalid_events_name_field_and_value(change: dict[str, object], field: str, reason: str) -> None:
    raw = {**IMP, **change}
    with pytest.raises(EventValidationError, match=reason) as info:
        parse_event(raw, index=4)
    assert info.value.field == field
    assert info.value.index == 4
    assert str(info.value).startswith("event 4: field")


def test_dwell_needs_seconds() -> None:
    raw = {"event_id": "d", "kind": "dwell", "timestamp": 0, "user_id": "u", "item_id": "i"}
    with pytest.raises(EventValidationError, match="dwell_seconds"):
        parse_event(raw)
    event = parse_event({**raw, "dwell_seconds": 12.5})
    assert isinstance(event, Engagement) and event.dwell_seconds == 12.5


def test_not_an_object() -> None:
    with pytest.raises(EventValidationError, match="JSON object"):
        parse_event(["a"])


def test_row_round_trip_through_arrow() -> None:
    events = [
        parse_event(IMP),
        parse_event(
            {
                "event_id": "x",
                "kind": "item",
                "timestamp": 5,
                "item_id": "i1",
                "text": "a cat",
                "creator_id": "c1",
                "created_at": "2026-01-01T00:00:00Z",
                "attributes": {"tags": ["a", "b"], "price": 3.5},
            }
        ),
        parse_event({"event_id": "q", "kind": "query", "timestamp": 6, "query": "cats"}),
    ]
    table = events_to_table(events)
    assert table.schema == EVENT_SCHEMA
    assert [row_to_event(r) for r in table.to_pylist()] == events
    assert event_to_row(events[0])["model_versions"] == '{"ranker": "v3"}'
    assert isinstance(table, pa.Table)


def test_feature_spec_validates_and_round_trips() -> None:
    spec = FeatureSpec("user_id", FeatureKind.categorical, vocab_size=10, source="users")
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="vocab_size"):
        FeatureSpec("item", FeatureKind.categorical)
    with pytest.raises(ValueError, match="dim"):
        FeatureSpec("x", FeatureKind.dense, dim=0)
