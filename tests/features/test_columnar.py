"""The feed's columnar online features equal the offline point-in-time values exactly, and survive
a snapshot (whole and delta) unchanged."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from recstack.config import Settings
from recstack.data.simulator import RandomPolicy, Simulator, World
from recstack.errors import ConfigError
from recstack.features.columnar import ColumnarFeatures, FeatureChanges, feed_features
from recstack.features.definitions import TextEmbedding
from recstack.features.offline import materialize


class Driver:
    """Feeds an event table to ColumnarFeatures the way the feed's state does (items numbered in
    arrival order, events of unknown items skipped)."""

    def __init__(self, features: list[Any]) -> None:
        self.columnar = ColumnarFeatures(features)
        self.index: dict[str, int] = {}
        self.created: list[int] = []
        self.changes = FeatureChanges()

    def apply(self, table: pa.Table) -> None:
        times = table.column("timestamp").cast(pa.int64()).to_pylist()
        created = table.column("created_at").cast(pa.int64()).to_pylist()
        for n, row in enumerate(table.to_pylist()):
            kind, t = row["kind"], times[n]
            attributes = json.loads(row["attributes"]) if row["attributes"] else {}
            if kind == "item":
                item = self.index.setdefault(row["item_id"], len(self.index))
                if item == len(self.created):
                    self.created.append(0)
                self.created[item] = created[n] if created[n] is not None else t
                self.columnar.add_items(len(self.index))
                self.columnar.upsert_item(item, t, row["creator_id"], attributes, self.changes)
            elif kind == "user":
                self.columnar.upsert_user(row["user_id"], t, attributes, self.changes)
            elif row["item_id"] in self.index:
                item = self.index[row["item_id"]]
                self.columnar.observe(kind, t, row["user_id"], item, row["event_id"], self.changes)

    def read(self, user: str, item: str, t: int, surface: str | None, context: Any) -> dict[str, Any]:
        values = self.columnar.read(
            user, np.array([self.index[item]]), t, surface, context, np.array(self.created)
        )
        ids = list(self.index)
        return {k: [ids[i] for i in v[0]] if v.dtype == object else v[0] for k, v in values.items()}


def simulated(seed: int = 4) -> tuple[pa.Table, pa.Table]:
    world = World.generate(n_users=60, n_items=150, seed=seed)
    sim = Simulator(world, seed=seed + 1, requests_per_day=2_000)
    events = pa.concat_tables([sim.catalog_events(), *sim.run(RandomPolicy(world.n_items, seed=6), 3_000)])
    rows = events.filter(pc.equal(events.column("kind"), "impression")).slice(0, 5_000)
    return events, rows


def test_every_default_feature_equals_its_offline_value(settings: Settings) -> None:
    features = [f for f in settings.features if f.type != "retrieval_score"]  # the caller's
    events, rows = simulated()
    offline = materialize(events, rows, features).to_pydict()
    ordered = events.sort_by([("timestamp", "ascending"), ("event_id", "ascending")])
    event_times = ordered.column("timestamp").cast(pa.int64()).to_numpy()
    row_times = rows.column("timestamp").cast(pa.int64()).to_numpy()
    driver = Driver(features)
    applied = mismatches = checked = 0
    for r in np.argsort(row_times, kind="stable"):
        t = int(row_times[r])
        upto = int(np.searchsorted(event_times, t, side="left"))
        if upto > applied:
            driver.apply(ordered.slice(applied, upto - applied))
            applied = upto
        context = json.loads(offline["context"][r]) if offline["context"][r] else None
        values = driver.read(offline["user_id"][r], offline["item_id"][r], t, offline["surface"][r], context)
        for f in features:
            a, b = values[f.name], offline[f.name][r]
            same = a == b if isinstance(a, list) else (a == b or (math.isnan(a) and math.isnan(b)))
            mismatches += not same
            checked += 1
    assert checked == len(rows) * len(features) and mismatches == 0


def test_a_snapshot_whole_and_delta_reads_the_same(settings: Settings) -> None:
    features = list(settings.features)
    events, _ = simulated(seed=7)
    events = events.sort_by([("timestamp", "ascending")])
    half = events.num_rows - 300  # the delta: the last 300 events
    source = Driver(features)
    source.apply(events.slice(0, half))
    meta, arrays = source.columnar.capture(len(source.index))
    copy = ColumnarFeatures(features)
    copy.load(json.loads(json.dumps(meta)), arrays, len(source.index))
    source.changes = FeatureChanges()
    source.apply(events.slice(half))
    delta_meta, delta_arrays = source.columnar.capture(len(source.index), source.changes)
    assert 0 < len(delta_arrays["f_items"]) < len(source.index)  # what moved, not every item
    copy.write_delta(copy.read_delta(json.loads(json.dumps(delta_meta)), delta_arrays, len(source.index)))
    now = int(events.column("timestamp").cast(pa.int64()).to_numpy().max()) + 1
    items = np.arange(len(source.index))
    created = np.array(source.created)
    for user in ["u0", "u5", "u17", "nobody"]:
        a = source.columnar.read(user, items, now, "feed", {"device": "ios"}, created)
        b = copy.read(user, items, now, "feed", {"device": "ios"}, created)
        for name in a:
            if a[name].dtype == object:
                assert a[name].tolist() == b[name].tolist()
            else:
                np.testing.assert_array_equal(a[name], b[name])


def test_a_damaged_delta_changes_nothing_and_text_embeddings_are_refused(settings: Settings) -> None:
    features = list(settings.features)
    events, _ = simulated(seed=9)
    driver = Driver(features)
    driver.apply(events)
    meta, arrays = driver.columnar.capture(len(driver.index), driver.changes)
    before = driver.columnar.items.rows.copy()
    bad = dict(arrays) | {"f_item_rows": arrays["f_item_rows"][:, :-1]}
    with pytest.raises(ValueError, match="item feature rows of shape"):
        driver.columnar.read_delta(meta, bad, len(driver.index))
    np.testing.assert_array_equal(driver.columnar.items.rows, before)
    with pytest.raises(ValueError, match="definitions"):
        ColumnarFeatures(features[:3]).read_delta(meta, arrays, len(driver.index))
    with pytest.raises(ConfigError, match="text_embedding"):
        feed_features([TextEmbedding(name="text")])


def window_sums(rings: np.ndarray, now_us: int, bucket_us: int, n_buckets: int) -> np.ndarray:
    """(R, 1 + n) rings [latest bucket, counts...] -> (R,) events in the window ending at now_us.
    Slot j holds bucket latest - ((latest - j) mod n); it counts when that falls in the window."""
    latest, counts = rings[:, :1], rings[:, 1:]  # (R, 1), (R, n)
    slot_bucket = latest - ((latest - np.arange(n_buckets)) % n_buckets)  # (R, n)
    now_bucket = now_us // bucket_us
    in_window = (slot_bucket > now_bucket - n_buckets) & (slot_bucket <= now_bucket)
    total: np.ndarray = (counts * in_window).sum(axis=1)
    return total


def test_ring_totals_equal_window_sums_for_any_ring_and_time() -> None:
    from recstack.features.definitions import Counter
    from recstack.features.rings import NEVER, RingLayout, ring_totals

    features = [
        Counter(name="a", entity="item", kinds=("click",), window="1h"),  # 24 buckets of 150 s
        Counter(name="b", entity="item", kinds=("click",), window="7d", bucket="1d"),
        Counter(name="c", entity="item", kinds=("click",), window="2h", bucket="1h"),
    ]
    layout = RingLayout(features, "item")
    rng = np.random.default_rng(0)
    now = 1_800_000_000_000_000
    rows = np.tile(layout.empty, (400, 1))
    for offset, n, bucket in layout.rings.values():
        latest = now // bucket - rng.integers(-3, n + 4, size=len(rows))  # ahead of now, inside, stale
        latest[:20] = NEVER
        rows[:, offset] = latest
        rows[:, offset + 1 : offset + 1 + n] = rng.integers(0, 50, size=(len(rows), n))
    for t in (now, now - 3 * 3600 * 10**6, now + 86_400 * 10**6):
        totals = ring_totals(layout, rows, t)
        for key, (offset, n, bucket) in layout.rings.items():
            expected = window_sums(rows[:, offset : offset + 1 + n], t, bucket, n)
            np.testing.assert_array_equal(totals[:, layout.ring_index[key]], expected)


def test_cached_totals_equal_fresh_sums_under_interleaved_writes_reads_and_deltas() -> None:
    """The totals cache: reads between events (in time order, late, ahead of the read's clock),
    deltas and a whole load give exactly the window sums of the rows as they are."""
    from recstack.features.definitions import Counter, Rate
    from recstack.features.rings import ring_totals

    features = [
        Counter(name="a", entity="item", kinds=("click",), window="1h"),
        Rate(
            name="r",
            entity="item",
            numerator=("click",),
            denominator=("impression",),
            window="2h",
            bucket="1h",
        ),
    ]
    rng = np.random.default_rng(3)
    state, replica = ColumnarFeatures(features), ColumnarFeatures(features)
    n_items = 40
    state.add_items(n_items)
    changes = FeatureChanges()
    now = 1_800_000_000_000_000
    hour = 3600 * 10**6
    replica_meta, replica_arrays = state.capture(n_items)
    replica.load(replica_meta, replica_arrays, n_items)
    checked = 0
    for step in range(3_000):
        now += int(rng.integers(0, 120 * 10**6))
        t = now + int(rng.choice([0, -rng.integers(0, 3 * hour), rng.integers(0, hour)], p=[0.7, 0.2, 0.1]))
        kind = "click" if rng.random() < 0.3 else "impression"
        state.observe(kind, t, "u", int(rng.integers(n_items)), f"e{step}", changes)
        if step % 7 == 0:
            read_at = now - int(rng.integers(0, hour)) if rng.random() < 0.2 else now
            for columnar in (state, replica):
                items = rng.integers(n_items, size=15)
                rows = columnar.items.rows[columnar.item_row[items]]
                expected = ring_totals(columnar.item_layout, rows, read_at)
                values = columnar.read("u", items, read_at)
                a = expected[:, columnar.item_layout.ring_index["a"]]
                np.testing.assert_array_equal(values["a"], a)
                active = columnar.item_row[items] > 0
                got = columnar.items.cached_totals(columnar.item_layout, columnar.item_row[items], read_at)
                np.testing.assert_array_equal(got[active], expected[active])
                checked += 1
        if step % 50 == 49:
            meta, arrays = state.capture(n_items, changes)
            replica.apply_delta(meta, arrays, n_items)
            changes = FeatureChanges()
    assert checked > 800
