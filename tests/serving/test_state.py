from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from recstack.errors import CheckpointError
from recstack.serving.state import Changes, Exclusions, FeedState


def test_exclusions_are_a_view_of_seen_and_hidden_items() -> None:
    seen: OrderedDict[int, None] = OrderedDict.fromkeys([3, 1, 4])
    blocked = {4, 9}  # 4 is also seen; 9 fell out of the bounded seen list
    view = Exclusions(seen, blocked)
    assert len(view) == 4 and sorted(view) == [1, 3, 4, 9] and 9 in view and 2 not in view
    assert view.mask(np.array([1, 2, 9, 5])).tolist() == [True, False, True, False]
    seen[7] = None  # a view, not a copy: later changes show
    assert 7 in view and len(view) == 5


def test_exclusion_masks_agree_on_both_paths() -> None:
    rng = np.random.default_rng(0)
    for n_seen in (0, 3, 50, 2_000):
        seen: OrderedDict[int, None] = OrderedDict.fromkeys(rng.integers(0, 5_000, n_seen).tolist())
        blocked = set(rng.integers(0, 5_000, 5).tolist())
        items = rng.integers(0, 5_000, 300)
        expected = [i in seen or i in blocked for i in items.tolist()]
        assert Exclusions(seen, blocked).mask(items).tolist() == expected  # sorted copy when few
        assert Exclusions(seen, blocked).mask(items[:3]).tolist() == expected[:3]  # lookups when many


# ---------------------------------------------------------------- delta snapshots
def _mixed(rng: np.random.Generator, start: int, n: int, n_items: int, users: int) -> list[object]:
    """Impressions, clicks, likes, hides and user upserts of random users on items i0..i{n_items-1},
    timestamps increasing from ``start`` (seconds)."""
    from recstack.schema import parse_event

    kinds = ["impression"] * 5 + ["click", "click", "like", "hide", "user"]
    out = []
    for k in range(n):
        kind = kinds[int(rng.integers(len(kinds)))]
        event: dict[str, object] = {
            "event_id": f"e{start}-{k}",
            "kind": kind,
            "timestamp": start + k,
            "user_id": f"u{int(rng.integers(users))}",
        }
        if kind != "user":
            event["item_id"] = f"i{int(rng.integers(n_items))}"
        if kind == "impression":
            event["request_id"], event["position"] = f"r{start}-{k}", 0
        out.append(parse_event(event))
    return out


def _items(n: int) -> list[object]:
    from recstack.schema import parse_event

    return [
        parse_event({"event_id": f"it{i}", "kind": "item", "timestamp": 0, "item_id": f"i{i}"})
        for i in range(n)
    ]


def _assert_same(a: FeedState, b: FeedState) -> None:
    assert a.item_ids == b.item_ids
    assert {u: (list(s.history), list(s.seen), sorted(s.blocked)) for u, s in a.users.items()} == {
        u: (list(s.history), list(s.seen), sorted(s.blocked)) for u, s in b.users.items()
    }
    assert a.impressions.values.tolist() == b.impressions.values.tolist()
    assert a.clicks.values.tolist() == b.clicks.values.tolist()
    # trending decays by one factor per delta on the follower, by one per batch on the source
    np.testing.assert_allclose(a.trending.scores, b.trending.scores, rtol=1e-12)
    assert a.trending.as_of_us == b.trending.as_of_us
    assert a.applied == b.applied and a.version == b.version and a.unknown_items == b.unknown_items


def test_deltas_applied_in_order_give_the_state_a_whole_snapshot_gives() -> None:
    rng = np.random.default_rng(7)
    source = FeedState(history=5, seen_limit=8)  # small limits: lists get trimmed between deltas
    source.changes = Changes()
    source.apply(_items(30))
    source.apply(_mixed(rng, 1_000, 300, 30, 12))
    whole = source.snapshot()
    follower = FeedState.from_bytes(whole.state, whole.catalog)
    for round_ in range(5):
        batch = _mixed(rng, 10_000 * (round_ + 2), 80, 30, 12)
        source.apply(batch)
        source.record_served("u3", [1, 2, 3], f"served-{round_}", 10**15)  # what the API applies itself
        touched = {e.user_id for e in batch} | {"u3"}  # type: ignore[attr-defined]
        delta = source.capture(with_catalog=False, delta=True).encode().state
        meta = follower.apply_delta(delta)
        assert set(meta["users"]) == touched  # only the users that moved travel
        end = source.snapshot()
        _assert_same(follower, FeedState.from_bytes(end.state, end.catalog))


def test_a_delta_that_does_not_fit_changes_nothing() -> None:
    rng = np.random.default_rng(3)
    source = FeedState()
    source.changes = Changes()
    source.apply(_items(10))
    source.apply(_mixed(rng, 1_000, 50, 10, 4))
    whole = source.snapshot()
    follower = FeedState.from_bytes(whole.state, whole.catalog)
    source.apply(_mixed(rng, 5_000, 50, 10, 4))
    delta = source.capture(with_catalog=False, delta=True).encode().state
    before = FeedState.from_bytes(whole.state, whole.catalog)
    with pytest.raises(CheckpointError, match="corrupt"):
        follower.apply_delta(delta[: len(delta) // 2])
    with pytest.raises(CheckpointError, match="a whole snapshot, not a delta"):
        follower.apply_delta(whole.state)
    with pytest.raises(CheckpointError, match="a delta, not a whole snapshot"):
        FeedState.from_bytes(delta, whole.catalog)
    other_catalog = FeedState.from_bytes(whole.state, whole.catalog)
    other_catalog.catalog_version += 1
    with pytest.raises(CheckpointError, match="catalog version"):
        other_catalog.apply_delta(delta)
    _assert_same(follower, before)
    with pytest.raises(ValueError, match="track its changes"):
        FeedState().capture(delta=True)
