"""Point-in-time correctness offline, and agreement between the offline and online paths."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from recstack.config import Settings
from recstack.data.simulator import RandomPolicy, Simulator, World
from recstack.errors import RecstackError
from recstack.events.parquet import ParquetEventLog
from recstack.features.columnar import ColumnarFeatures, FeatureChanges
from recstack.features.definitions import (
    US,
    Attribute,
    AttributeRate,
    Context,
    Counter,
    LastN,
    Rate,
    Recency,
    TextEmbedding,
)
from recstack.features.offline import load_specs, materialize, save_materialized
from recstack.features.online import OnlineFeatures
from recstack.features.stores import MemoryStore, RedisStore, SQLiteStore
from recstack.features.stream import Ingestor
from recstack.schema import events_to_table, parse_event

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
FEATURES = [
    Counter(name="item_clicks_1d", entity="item", kinds=("click",), window="1d"),
    Rate(name="item_ctr_1d", entity="item", numerator=("click",), denominator=("impression",), window="1d"),
    Recency(name="item_since_click", entity="item", kinds=("click",)),
    LastN(name="user_last", kinds=("click",), n=3),
    Attribute(name="item_topic", entity="item", field="topic", buckets=101),
    Context(name="hour_of_day", field="hour"),
]


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def leaky_log() -> pa.Table:
    """A log where counting anything at or after the row's time would change every value."""
    raw: list[dict[str, Any]] = [
        {
            "event_id": "up-a",
            "kind": "item",
            "timestamp": at(-60),
            "item_id": "i1",
            "attributes": {"topic": "A"},
        },
        {
            "event_id": "up-b",
            "kind": "item",
            "timestamp": at(30),
            "item_id": "i1",
            "attributes": {"topic": "B"},
        },
        # 1d window with 1h buckets: a row at 10:00 counts from 11:00 the day before
        {
            "event_id": "old",
            "kind": "click",
            "timestamp": at(-23 * 60 - 30),
            "user_id": "u2",
            "item_id": "i1",
        },
        {"event_id": "edge", "kind": "click", "timestamp": at(-23 * 60), "user_id": "u2", "item_id": "i1"},
        {"event_id": "c1", "kind": "click", "timestamp": at(-30), "user_id": "u1", "item_id": "i1"},
        {"event_id": "c2", "kind": "click", "timestamp": at(-20), "user_id": "u1", "item_id": "i7"},
        {
            "event_id": "p1",
            "kind": "impression",
            "timestamp": at(-40),
            "request_id": "r0",
            "user_id": "u1",
            "item_id": "i1",
            "position": 1,
        },
        # the row itself, and what happens at and after its time
        {
            "event_id": "row",
            "kind": "impression",
            "timestamp": at(0),
            "request_id": "r1",
            "user_id": "u1",
            "item_id": "i1",
            "position": 0,
            "surface": "feed",
        },
        {"event_id": "same", "kind": "click", "timestamp": at(0), "user_id": "u1", "item_id": "i1"},
        *(
            {
                "event_id": f"late{k}",
                "kind": "click",
                "timestamp": at(10 + k),
                "user_id": "u1",
                "item_id": "i9",
            }
            for k in range(5)
        ),
    ]
    return events_to_table([parse_event(r) for r in raw])


def test_offline_values_see_only_the_past() -> None:
    events = leaky_log()
    rows = events.filter(pc.equal(events.column("event_id"), "row"))
    out = materialize(events, rows, FEATURES).to_pylist()[0]
    assert out["item_clicks_1d"] == 2.0  # 'edge' and c1; not 'old' (outside), not 'same' or later ones
    assert out["item_ctr_1d"] == 2.0  # 2 clicks / 1 earlier impression; the row's own impression excluded
    assert out["item_since_click"] == 30 * 60.0
    assert out["user_last"] == ["i7", "i1"]  # c2 then c1, most recent first; none of the late clicks
    assert out["item_topic"] == Attribute(name="x", entity="item", field="topic", buckets=101).encode("A")
    assert out["hour_of_day"] == 10.0


def test_unknown_entities_get_documented_defaults() -> None:
    events = leaky_log()
    row = {"timestamp": [T0], "user_id": ["nobody"], "item_id": ["nothing"]}
    out = materialize(events, pa.table(row), FEATURES).to_pylist()[0]
    assert out["item_clicks_1d"] == 0.0 and out["item_ctr_1d"] == 0.0 and out["item_since_click"] == -1.0
    assert out["user_last"] == [] and out["item_topic"] == 0.0


def test_materialize_rejects_bad_requests() -> None:
    events = leaky_log()
    with pytest.raises(RecstackError, match="need columns"):
        materialize(events, pa.table({"user_id": ["u"]}), FEATURES)
    with pytest.raises(RecstackError, match="no rows"):
        materialize(events, events.slice(0, 0), FEATURES)
    with pytest.raises(RecstackError, match="collide"):
        materialize(events, events, [Counter(name="position", entity="item", kinds=("click",), window="1h")])


def replay_and_compare(events: pa.Table, rows: pa.Table, features: list[Any], online: OnlineFeatures) -> int:
    """Apply events in time order; before each row, read online; count disagreements with offline."""
    offline = materialize(events, rows, features).to_pydict()
    ordered = events.sort_by([("timestamp", "ascending"), ("event_id", "ascending")])
    event_times = ordered.column("timestamp").cast(pa.int64()).to_numpy()
    row_times = rows.column("timestamp").cast(pa.int64()).to_numpy()
    applied = mismatches = 0
    for r in np.argsort(row_times, kind="stable"):
        t = int(row_times[r])
        upto = int(np.searchsorted(event_times, t, side="left"))
        if upto > applied:
            online.update_table(ordered.slice(applied, upto - applied))
            applied = upto
        context = (
            json.loads(offline["context"][r]) if offline.get("context") and offline["context"][r] else None
        )
        values = online.read(
            offline["user_id"][r], [offline["item_id"][r]], t, offline["surface"][r], context
        )
        for f in features:
            a, b = values[f.name][0], offline[f.name][r]
            same = a == b if isinstance(a, list) else (a == b or (math.isnan(a) and math.isnan(b)))
            mismatches += not same
    return mismatches


@pytest.mark.slow
def test_skew_online_replay_equals_offline_exactly(settings: Settings, tmp_path: Path) -> None:
    world = World.generate(n_users=60, n_items=150, seed=4)
    sim = Simulator(world, seed=5, requests_per_day=2_000)
    events = pa.concat_tables([sim.catalog_events(), *sim.run(RandomPolicy(world.n_items, seed=6), 4_000)])
    rows = events.filter(pc.equal(events.column("kind"), "impression")).slice(0, 8_000)
    # every default feature; state in SQLite with a tiny cache, so records are evicted and re-read
    online = OnlineFeatures(
        settings.features, SQLiteStore(tmp_path / "online.sqlite"), cache_size=50, flush_every=100
    )
    assert replay_and_compare(events, rows, settings.features, online) == 0


@pytest.mark.services
def test_skew_replay_equals_offline_with_the_state_in_redis(
    settings: Settings, redis_url: str, unique: str
) -> None:
    """The binary item rows and JSON user records round-trip through Redis: with a cache of 30
    records every read goes back to the store, and every default feature equals its offline value."""
    world = World.generate(n_users=40, n_items=100, seed=8)
    sim = Simulator(world, seed=9, requests_per_day=2_000)
    events = pa.concat_tables([sim.catalog_events(), *sim.run(RandomPolicy(world.n_items, seed=3), 1_500)])
    rows = events.filter(pc.equal(events.column("kind"), "impression")).slice(0, 3_000)
    store = RedisStore(redis_url, prefix=f"recstack-test:{unique}:")
    try:
        online = OnlineFeatures(settings.features, store, cache_size=30, flush_every=50)
        assert replay_and_compare(events, rows, settings.features, online) == 0
    finally:
        store.drop()
        store.close()


def test_an_item_record_of_another_layout_is_a_clear_error(tmp_path: Path) -> None:
    """A record written under other definitions (or corrupt) is refused, naming the key and the fix."""
    store = SQLiteStore(tmp_path / "s.sqlite")
    OnlineFeatures(FEATURES, store, flush_every=1).update_table(leaky_log())
    store.put_many({"item:i1": b'{"item_clicks_1d": [1, 2]}'})  # a record of the JSON layout
    fresh = OnlineFeatures(FEATURES, SQLiteStore(tmp_path / "s.sqlite"))
    with pytest.raises(RecstackError, match=r"'item:i1' is 26 bytes .* rebuild the state"):
        fresh.read("u1", ["i1", "i2"], int(T0.timestamp() * 1e6))
    assert fresh.read("u1", ["i2"], int(T0.timestamp() * 1e6))  # the other items still read


def test_a_read_of_no_candidates_gives_empty_columns(settings: Settings) -> None:
    online = OnlineFeatures(settings.features, MemoryStore())
    online.update_table(leaky_log())
    values = online.read("u1", [], int(T0.timestamp() * 1e6))
    assert set(values) == {f.name for f in settings.features}
    assert all(len(v) == 0 for v in values.values())


def test_skew_small_in_memory(settings: Settings) -> None:
    events = leaky_log()
    rows = events.filter(pc.equal(events.column("kind"), "impression"))
    assert replay_and_compare(events, rows, FEATURES, OnlineFeatures(FEATURES, MemoryStore())) == 0


def test_online_values_do_not_depend_on_arrival_order() -> None:
    events = leaky_log()
    in_order = OnlineFeatures(FEATURES, MemoryStore())
    in_order.update_table(events)
    shuffled = OnlineFeatures(FEATURES, MemoryStore())
    shuffled.update_table(events.take(np.random.default_rng(0).permutation(events.num_rows)))
    now = int((T0 + timedelta(minutes=30)).timestamp() * 1e6)
    a = in_order.read("u1", ["i1", "i9"], now)
    b = shuffled.read("u1", ["i1", "i9"], now)
    for name in a:
        assert [list(x) if isinstance(x, list) else x for x in a[name]] == [
            list(x) if isinstance(x, list) else x for x in b[name]
        ]
    assert a["item_clicks_1d"].tolist() == [3.0, 5.0]  # edge, c1, same for i1; the five late ones for i9


def test_late_events_beyond_every_window_are_dropped_and_counted() -> None:
    online = OnlineFeatures([Counter(name="c", entity="item", kinds=("click",), window="1h")], MemoryStore())
    click = {"kind": "click", "user_id": "u", "item_id": "i"}
    online.update([parse_event(click | {"event_id": "now", "timestamp": at(0)})])
    online.update([parse_event(click | {"event_id": "ancient", "timestamp": at(-300)})])
    assert online.late_dropped == 1
    assert online.read("u", ["i"], int((T0 + timedelta(minutes=1)).timestamp() * 1e6))["c"].tolist() == [1.0]


def test_state_survives_restart_with_sqlite(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite")
    online = OnlineFeatures(FEATURES, store, cache_size=2, flush_every=1)
    online.update_table(leaky_log())
    online.flush()
    restarted = OnlineFeatures(FEATURES, SQLiteStore(tmp_path / "s.sqlite"))
    now = int((T0 + timedelta(minutes=30)).timestamp() * 1e6)
    assert restarted.read("u1", ["i1"], now)["item_clicks_1d"].tolist() == [3.0]


def test_ingestor_counts_a_retried_batch_once(tmp_path: Path) -> None:
    online = OnlineFeatures(FEATURES, MemoryStore())
    ingestor = Ingestor(ParquetEventLog(tmp_path / "log"), online)
    batch = leaky_log()
    first = ingestor.ingest_table(batch)
    again = ingestor.ingest_table(batch)
    assert (first.accepted, again.accepted, again.duplicates) == (batch.num_rows, 0, batch.num_rows)
    raw = [
        {"event_id": "x1", "kind": "click", "timestamp": at(1), "user_id": "u1", "item_id": "i1"},
        {"event_id": "x1", "kind": "click", "timestamp": at(1), "user_id": "u1", "item_id": "i1"},
        {"event_id": "bad", "kind": "click", "timestamp": at(1), "user_id": "u1"},
    ]
    result = ingestor.ingest(raw)
    assert (result.accepted, result.duplicates, [r.index for r in result.rejected]) == (1, 1, [2])
    now = int((T0 + timedelta(minutes=30)).timestamp() * 1e6)
    assert online.read("u1", ["i1"], now)["item_clicks_1d"].tolist() == [4.0]


def test_specs_are_saved_beside_materialized_rows(tmp_path: Path) -> None:
    events = leaky_log()
    rows = events.filter(pc.equal(events.column("kind"), "impression"))
    save_materialized(materialize(events, rows, FEATURES), FEATURES, tmp_path / "set")
    specs = load_specs(tmp_path / "set")
    assert [s["name"] for s in specs] == [f.name for f in FEATURES]
    assert specs[3] == {
        "name": "user_last",
        "kind": "sequence",
        "vocab_size": 1,
        "dim": 3,
        "source": "user history",
    }
    with pytest.raises(RecstackError, match="not found"):
        load_specs(tmp_path)


def test_attribute_rate_counts_each_event_for_its_items_value_at_the_event() -> None:
    """i1 is topic A until +30, then B; i2 is A throughout; i7 and i9 were never upserted (their
    events count for no topic). With prior 0.5 of weight 2 the known answers are:
    - (u1, i1) at 0: A's events before 0 are the click c1 and the impression p1 -> (1+1)/(1+2);
    - (u1, i1) at +50, now B: B's events are the impressions at +34 and +36 and the click at +35
      -> (1+1)/(2+2), the A events on i1 no longer counting;
    - (u1, i2) at +50, A: c1, the click 'same' at 0 (i1 was A then), p1 and 'row' -> (2+1)/(2+2);
    - (u2, i2) at +50: u2's clicks on i1 came before i1's first upsert (-1h), so they count for no
      topic -> the prior 0.5;
    - (u1, i9) at +50: i9 has no topic -> the prior."""
    extra = [
        {
            "event_id": "up-i2",
            "kind": "item",
            "timestamp": at(-60),
            "item_id": "i2",
            "attributes": {"topic": "A"},
        },
        *(
            {
                "event_id": f"b{k}",
                "kind": "impression",
                "timestamp": at(m),
                "request_id": f"rb{k}",
                "user_id": "u1",
                "item_id": "i1",
                "position": 0,
            }
            for k, m in enumerate((34, 36))
        ),
        {"event_id": "bc", "kind": "click", "timestamp": at(35), "user_id": "u1", "item_id": "i1"},
    ]
    events = pa.concat_tables([leaky_log(), events_to_table([parse_event(r) for r in extra])])
    f = AttributeRate(
        name="user_topic_ctr",
        field="topic",
        numerator=("click",),
        denominator=("impression",),
        window="1d",
        prior=0.5,
        prior_weight=2.0,
    )
    asked = [("u1", "i1", 0), ("u1", "i1", 50), ("u1", "i2", 50), ("u2", "i2", 50), ("u1", "i9", 50)]
    expected = [2 / 3, 2 / 4, 3 / 4, 0.5, 0.5]
    rows = pa.table(
        {
            "timestamp": pa.array(
                [T0 + timedelta(minutes=m) for _, _, m in asked], pa.timestamp("us", "UTC")
            ),
            "user_id": [u for u, _, _ in asked],
            "item_id": [i for _, i, _ in asked],
        }
    )
    offline = materialize(events, rows, [f]).column(f.name).to_pylist()
    np.testing.assert_allclose(offline, expected, rtol=1e-12)
    ordered = events.sort_by([("timestamp", "ascending"), ("event_id", "ascending")])
    standalone = OnlineFeatures([f], MemoryStore())
    standalone.update_table(ordered)
    columnar, index, changes = ColumnarFeatures([f]), {"i1": 0, "i2": 1, "i7": 2, "i9": 3}, FeatureChanges()
    columnar.add_items(len(index))
    times = ordered.column("timestamp").cast(pa.int64()).to_pylist()
    for row, t in zip(ordered.to_pylist(), times, strict=True):
        item = index.get(row["item_id"] or "")
        if row["kind"] == "item" and item is not None:
            attributes = json.loads(row["attributes"]) if row["attributes"] else {}
            columnar.upsert_item(item, t, row["creator_id"], attributes, changes)
        elif item is not None:
            columnar.observe(row["kind"], t, row["user_id"], item, row["event_id"], changes)
    for (user, item, minutes), want in zip(asked[1:], expected[1:], strict=True):  # online: after +36
        now = int((T0 + timedelta(minutes=minutes)).timestamp() * US)
        assert standalone.read(user, [item], now)[f.name].tolist() == pytest.approx([want], rel=1e-12)
        got = columnar.read(user, np.array([index[item]]), now)[f.name].tolist()
        assert got == pytest.approx([want], rel=1e-12)
    typo = f.model_copy(update={"field": "topc"})
    with pytest.raises(RecstackError, match=r"'user_topic_ctr' reads attributes\.topc"):
        materialize(events, rows, [typo])


def test_attribute_that_no_upsert_has_is_an_error() -> None:
    events = leaky_log()
    rows = events.filter(pc.equal(events.column("event_id"), "row"))
    typo = Attribute(name="item_topc", entity="item", field="topc")
    with pytest.raises(
        RecstackError, match=r"reads attributes\.topc, which no item upsert has; attributes seen: topic"
    ):
        materialize(events, rows, [typo])


@pytest.mark.slow
def test_text_embedding_offline_and_online_agree_and_cover_new_items() -> None:
    """The item's text from its latest upsert before t, embedded by all-MiniLM-L6-v2."""
    feature = TextEmbedding(name="item_text")
    raw = [
        {
            "event_id": "a",
            "kind": "item",
            "timestamp": at(-60),
            "item_id": "i1",
            "text": "a tabby cat sleeping",
        },
        {
            "event_id": "b",
            "kind": "item",
            "timestamp": at(30),
            "item_id": "i1",
            "text": "stock market report",
        },
        {
            "event_id": "c",
            "kind": "item",
            "timestamp": at(-10),
            "item_id": "i2",
            "text": "kitten playing with yarn",
        },
        {"event_id": "d", "kind": "item", "timestamp": at(-10), "item_id": "i3"},
    ]
    events = events_to_table([parse_event(r) for r in raw])
    rows = pa.table({"timestamp": [T0] * 3, "user_id": ["u"] * 3, "item_id": ["i1", "i2", "i3"]})
    offline = np.asarray(
        materialize(events, rows, [feature]).column("item_text").to_pylist(), dtype=np.float32
    )
    online = OnlineFeatures([feature], MemoryStore())
    online.update_table(events.slice(0, 1))
    online.update_table(events.slice(2, 2))
    values = online.read("u", ["i1", "i2", "i3"], int(T0.timestamp() * 1e6))["item_text"]
    assert values.shape == (3, 384)
    assert np.allclose(values, offline, atol=1e-6)  # the same text always embeds to the same vector
    assert np.linalg.norm(offline[0]) == pytest.approx(1.0, abs=1e-5)
    assert not offline[2].any()  # no text: zeros, documented
    # a brand-new item is close to a known one about the same thing
    assert float(offline[0] @ offline[1]) > 0.3


@pytest.mark.parametrize("backend", ["parquet", "redis"])
def test_feature_consumer_follows_the_stream_once(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, unique: str
) -> None:
    from recstack.events import RedisStreamLog
    from recstack.features.stream import FeatureConsumer

    def open_log() -> Any:
        if backend == "parquet":
            return ParquetEventLog(tmp_path / "log")
        return RedisStreamLog(request.getfixturevalue("redis_url"), stream=f"recstack-test:{unique}")

    log = open_log()
    try:
        table = leaky_log()
        log.append_table(table.slice(0, 7))  # two bulk writes (on Redis: two entries of events)
        log.append_table(table.slice(7))
        online = OnlineFeatures(FEATURES, MemoryStore())
        seen: set[str] = set()
        # a first worker applies a batch (Parquet: one event; Redis: the first entry), then dies
        # before acknowledging it
        first = log.consume("features", "w", count=1)
        assert len(first) == (1 if backend == "parquet" else 7)
        online.update([d.event for d in first])
        seen.update(d.event.event_id for d in first)
        worker = FeatureConsumer(open_log(), online, group="features", consumer="w", seen=seen)
        worker.drain(count=3)
        assert worker.skipped == len(first) and worker.applied == table.num_rows - len(first)
        now = int((T0 + timedelta(minutes=30)).timestamp() * 1e6)
        assert online.read("u1", ["i1"], now)["item_clicks_1d"].tolist() == [3.0]  # each click once
    finally:
        if backend == "redis":
            log.drop()
