from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from recstack.data.simulator import World
from recstack.events.parquet import ParquetEventLog
from recstack.servables.bundle import ServingBundle
from recstack.serving.graph import StageFailed, build_pipeline
from recstack.serving.ops.base import Candidates, RecRequest
from recstack.serving.ops.filter import FilterOp
from recstack.serving.ops.rerank import dpp, mmr
from recstack.serving.state import FeedState
from tests.serving.conftest import FEATURES, feed_settings


def test_mmr_with_lambda_one_is_value_order_and_spacing_holds() -> None:
    values = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    vectors = np.eye(6)
    creators = np.array([0, 0, 1, 2, 1, 3])
    assert mmr(values, vectors, np.arange(6), 6, 1.0, 0) == [0, 1, 2, 3, 4, 5]
    picked = mmr(values, vectors, creators, 6, 1.0, 3)
    # creator 0 at slot 0 may return only from slot 3 on; creator 1 likewise
    positions = {c: [n for n, j in enumerate(picked) if creators[j] == c] for c in set(creators)}
    for slots in positions.values():
        assert all(b - a >= 3 for a, b in itertools.pairwise(slots))
    assert picked[:3] == [0, 2, 3]


def test_mmr_and_dpp_prefer_a_dissimilar_item_over_a_near_duplicate() -> None:
    # items 0 and 1 point the same way, item 2 elsewhere; values 1.0, 0.95, 0.8
    vectors = np.array([[1.0, 0.0], [0.99, 0.01], [0.0, 1.0]])
    values = np.array([1.0, 0.95, 0.8])
    creators = np.arange(3)
    assert mmr(values, vectors, creators, 2, 0.5, 0) == [0, 2]
    assert dpp(values, vectors, creators, 2, 0.5, 0) == [0, 2]
    # with diversity off (lambda = 1) value order wins
    assert mmr(values, vectors, creators, 2, 1.0, 0) == [0, 1]


def test_spacing_ends_the_list_rather_than_break_the_rule() -> None:
    values = np.array([0.9, 0.8, 0.7])
    assert mmr(values, np.eye(3), np.array([5, 5, 5]), 3, 1.0, 2) == [0]


def test_dpp_fills_the_list_when_the_kernel_runs_out() -> None:
    values = np.array([0.9, 0.8, 0.7, 0.6])
    # four copies of one vector: after the first pick no item adds volume; the rest go by value
    copies = np.tile([[1.0, 0.0]], (4, 1))
    assert dpp(values, copies, np.arange(4), 4, 0.5, 0) == [0, 1, 2, 3]
    # lambda -> 1: q = exp((v - 1) / 1e-3) underflows for all but the best; no overflow, no NaN,
    # and the order is value order (what lambda = 1 means)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        assert dpp(values, np.eye(4), np.arange(4), 4, 1.0, 0) == [0, 1, 2, 3]


def _state_from(log: ParquetEventLog) -> FeedState:
    state = FeedState(features=FEATURES)
    state.apply(log.replay())
    return state


def test_pipeline_serves_distinct_unseen_safe_items_with_stage_timings(
    feed_world: tuple[World, Path, Path], feed_log: ParquetEventLog, tmp_path: Path
) -> None:
    world, _, bundle_dir = feed_world
    settings = feed_settings(tmp_path)
    state = _state_from(feed_log)
    pipeline = build_pipeline(settings, ServingBundle.load(bundle_dir), state)
    user = next(u for u, s in state.users.items() if len(s.seen) > 5)
    request = RecRequest(
        user,
        20,
        state.trending.as_of_us,
        history=tuple(state.users[user].history),
        exclude=state.excluded(user),  # the view the API passes
        rng=np.random.default_rng(0),
    )
    outcome = pipeline.run(request, state)
    items = outcome.candidates.items
    assert len(items) == 20 and len(set(items.tolist())) == 20
    excluded = set(state.users[user].seen) | state.users[user].blocked
    assert excluded and not set(items.tolist()) & excluded
    assert not world.item_unsafe[[int(state.item_ids[i][1:]) for i in items]].any()
    assert set(outcome.timings_ms) == {
        "retrieve",
        "filter",
        "light_rank",
        "heavy_rank",
        "value",
        "rerank",
        "explore",
    }
    assert outcome.sizes["light_rank"] <= settings.serving.light_keep
    assert not outcome.degraded
    creators = state.creator.values[items]
    gap = settings.serving.creator_gap
    for a in range(len(items)):
        assert creators[a] not in creators[a + 1 : a + gap]


def test_a_failing_stage_degrades_but_a_failing_filter_fails_the_request(
    feed_world: tuple[World, Path, Path], feed_log: ParquetEventLog, tmp_path: Path
) -> None:
    state = _state_from(feed_log)
    pipeline = build_pipeline(feed_settings(tmp_path), ServingBundle.load(feed_world[2]), state)

    pipeline.stages = [_Broken("heavy_rank", False) if s.name == "heavy_rank" else s for s in pipeline.stages]
    outcome = pipeline.run(RecRequest("u1", 10, state.trending.as_of_us), state)
    assert outcome.degraded == ["heavy_rank"] and len(outcome.candidates) == 10
    pipeline.stages = [_Broken("filter", True) if s.name == "filter" else s for s in pipeline.stages]
    with pytest.raises(StageFailed, match="filter"):
        pipeline.run(RecRequest("u1", 10, state.trending.as_of_us), state)


class _Broken:
    def __init__(self, name: str, critical: bool) -> None:
        self.name, self.critical = name, critical

    def __call__(self, *_: object) -> Candidates:
        raise RuntimeError(f"{self.name} exploded")


def test_filter_drops_unsafe_removed_and_excluded_items() -> None:
    from recstack.schema import parse_event

    scored = {"unsafe_model": "recstack-safety/1", "unsafe_label": "offensive"}
    upserts: list[dict[str, object]] = [
        {},  # 0: kept
        {"attributes": {"unsafe_score": 0.9}},  # 1: the client's score reaches [serving] unsafe_threshold
        {"attributes": {"removed": True}},  # 2
        {},  # 3: excluded by the request
        {"attributes": {"unsafe": True}},  # 4: the client's flag
        {"text": "a post no model scored"},  # 5: held back while a model is registered
        {"text": "x", "attributes": scored | {"unsafe_score": 0.7, "unsafe_decision": "review"}},  # 6
        {"text": "x", "attributes": scored | {"unsafe_score": 0.99, "unsafe_decision": "block"}},  # 7
        {"attributes": {"unsafe_decision": "block"}},  # 8: a decision no model made is not one
    ]
    state = FeedState()
    state.apply(
        parse_event({"event_id": f"e{i}", "kind": "item", "timestamp": 0, "item_id": f"i{i}"} | fields)
        for i, fields in enumerate(upserts)
    )
    assert state.safety_counts() == {"allow": 4, "review": 1, "block": 3, "unscored": 1}
    request = RecRequest("u", 9, 0, exclude=frozenset({3}))
    candidates = Candidates(np.arange(9), np.zeros(9), ["x"] * 9)
    held = FilterOp(lambda: True)(request, candidates, state)
    assert held.items.tolist() == [0, 6, 8]
    served = FilterOp(lambda: False)(request, candidates, state)
    assert served.items.tolist() == [0, 5, 6, 8]


def _fresh_catalog(n: int, now: int) -> FeedState:
    """A state of ``n`` items created at ``now`` (epoch seconds), each by its own creator."""
    from recstack.schema import parse_event

    state = FeedState()
    state.apply(
        parse_event(
            {"event_id": f"e{i}", "kind": "item", "timestamp": now, "item_id": f"n{i}", "creator_id": f"c{i}"}
        )
        for i in range(n)
    )
    return state


def test_thompson_exploration_favours_the_item_with_more_clicks(
    feed_world: tuple[World, Path, Path], feed_log: ParquetEventLog, tmp_path: Path
) -> None:
    from recstack.serving.ops.explore import ExploreOp
    from recstack.serving.ops.retrieve import StateFresh

    now = 1_800_000_000
    state = _fresh_catalog(2, now)
    state.impressions.data[:2] = [100, 100]
    state.clicks.data[:2] = [30, 5]  # posteriors Beta(31, 71) vs Beta(6, 96): means 0.30 vs 0.06
    op = ExploreOp(1, StateFresh(state, 3600), FilterOp(), 0)
    wins = 0
    for seed in range(200):
        request = RecRequest("u", 3, (now + 10) * 1_000_000, rng=np.random.default_rng(seed))
        out = op(request, Candidates(np.zeros(0, dtype=np.int64), np.zeros(0), []), state)
        assert list(out.sources) == ["explore"]
        wins += int(out.items[0] == 0)
    # P(theta_0 > theta_1) for these posteriors is above 0.999
    assert wins >= 195


def test_fresh_source_keeps_the_newest_in_order_with_a_partial_sort() -> None:
    from recstack.index.sources import US
    from recstack.serving.ops.retrieve import StateFresh

    state = FeedState()
    n = 5_000
    created = np.random.default_rng(3).permutation(n) * US  # distinct creation times, shuffled
    state.load_items([f"i{k}" for k in range(n)], [f"c{k}" for k in range(n)], created)
    removed = int(np.flatnonzero(created == (n - 20) * US)[0])  # a fresh item, removed
    state.removed.data[removed] = True
    now = (n - 10) * US  # the 9 items created after now are not fresh yet
    window_s = 3_000
    newest_first = np.argsort(-created)
    alive = newest_first[(created[newest_first] <= now) & (created[newest_first] > now - window_s * US)]
    alive = alive[alive != removed]
    full = StateFresh(state, window_s, depth=n).fresh_items(now)
    assert np.array_equal(full, alive)
    partial = StateFresh(state, window_s, depth=100)
    assert np.array_equal(partial.fresh_items(now), alive[:100])
    assert np.array_equal(partial.fresh_items(now, k=300)[:300], alive[:300])  # deeper on demand


@pytest.mark.parametrize("draws", [0, 64])
def test_exploration_picks_the_best_draws_among_eligible_items_only(draws: int) -> None:
    """Listed, seen, removed and unsafe fresh items are never picked, however good their posterior;
    the picks are the eligible items with the best draws (a wide gap makes the draws' order sure)."""
    from recstack.safety.items import BLOCK
    from recstack.serving.ops.explore import ExploreOp
    from recstack.serving.ops.retrieve import StateFresh

    now = 1_800_000_000
    state = _fresh_catalog(40, now)
    state.impressions.data[:40] = 10_000
    state.clicks.data[:40] = np.linspace(9_900, 100, 40)  # item 0 best, then 1, 2, ... (means 0.99 .. 0.01)
    state.safety.data[1] = BLOCK  # blocked by moderation
    state.removed.data[2] = True  # removed
    listed = Candidates(np.array([0, 4]), np.zeros(2), ["a", "b"])  # already in the list
    op = ExploreOp(3, StateFresh(state, 3600), FilterOp(), 0, draws=draws)
    for seed in range(20):
        request = RecRequest(  # item 3: seen by the user
            "u", 5, (now + 10) * 1_000_000, exclude=frozenset({3}), rng=np.random.default_rng(seed)
        )
        out = op(request, listed, state)
        assert sorted(out.items[out.explore].tolist()) == [5, 6, 7]
        assert set(out.items[~out.explore].tolist()) == {0, 4}
        if draws:  # near-sure picks; the ranked slots are deterministic (propensity 1)
            # item 8 (mean 0.79) beats item 7 (0.81) over 10,000 impressions each with P ~ 3e-5
            assert out.propensity is not None and out.propensity == pytest.approx(1.0, abs=1e-3)
        else:
            assert out.propensity is None


def test_exploration_propensity_is_the_chance_that_the_item_is_picked() -> None:
    """Two fresh items with the same posterior share one slot: each is picked half the time, and
    the logged propensity of the one shown is 1/2 (Rao-Blackwellized over 4,000 draws of the other
    item: each term is P(own draw > the other's), mean 1/2, its noise below a count's sd of 0.008)."""
    from recstack.serving.ops.explore import ExploreOp
    from recstack.serving.ops.retrieve import StateFresh

    now = 1_800_000_000
    state = _fresh_catalog(2, now)
    state.impressions.data[:2] = 1_000
    state.clicks.data[:2] = 100
    op = ExploreOp(1, StateFresh(state, 3600), FilterOp(), 0, draws=4_000)
    request = RecRequest("u", 3, (now + 10) * 1_000_000, rng=np.random.default_rng(0))
    out = op(request, Candidates.empty(), state)
    assert out.propensity is not None and len(out) == 1
    # binomial noise of 4,000 draws: sd 0.008
    assert out.propensity[0] == pytest.approx(0.5, abs=0.04)


class _Identity:
    """A bundle's value-model surface: one click head, calibration the identity."""

    tasks = ("click",)

    def calibrate(self, probs: np.ndarray) -> np.ndarray:
        return probs


def test_value_lowers_items_in_review_and_items_of_unsafe_creators() -> None:
    from recstack.schema import parse_event
    from recstack.serving.ops.value import ValueOp

    scored = {"unsafe_model": "m/1", "unsafe_label": "offensive"}
    upserts = [
        {"creator_id": "good"},  # 0
        {
            "creator_id": "good",
            "attributes": scored | {"unsafe_score": 0.6, "unsafe_decision": "review"},
        },  # 1
        {"creator_id": "bad", "attributes": scored | {"unsafe_score": 0.99, "unsafe_decision": "block"}},  # 2
        {"creator_id": "bad", "attributes": scored | {"unsafe_score": 0.95, "unsafe_decision": "block"}},  # 3
        {"creator_id": "bad"},  # 4: an allowed item of a creator whose other items were blocked
    ]
    state = FeedState()
    state.apply(
        parse_event({"event_id": f"e{i}", "kind": "item", "timestamp": 0, "item_id": f"i{i}"} | fields)
        for i, fields in enumerate(upserts)
    )
    # creator rates: good 1 flagged of 2 -> 1 / (2 + 2) = 0.25; bad 2 of 3 -> 2 / 5 = 0.4
    assert np.allclose(state.creator_unsafe_rate(np.arange(5), 2.0), [0.25, 0.25, 0.4, 0.4, 0.4])
    op = ValueOp(_Identity(), {"click": 1.0}, review_penalty=0.5, creator_penalty=0.5)  # type: ignore[arg-type]
    probs = np.array([[0.5], [0.5], [-0.5], [0.5], [0.5]])  # a negative value must go down, not up
    out = op(RecRequest("u", 5, 0), Candidates(np.arange(5), np.zeros(5), ["x"] * 5, probs=probs), state)
    value = dict(zip(out.items.tolist(), out.scores.tolist(), strict=True))
    # value - |value| x (0.5 x score x [review] + 0.5 x creator rate)
    assert np.isclose(value[0], 0.5 - 0.5 * 0.125)
    assert np.isclose(value[1], 0.5 - 0.5 * (0.3 + 0.125))
    assert np.isclose(value[2], -0.5 - 0.5 * 0.2)
    assert np.isclose(value[4], 0.5 - 0.5 * 0.2)
    assert out.items.tolist() == [0, 3, 4, 1, 2]


def test_explore_membership_equals_numpy_isin() -> None:
    from recstack.serving.ops.explore import is_member

    rng = np.random.default_rng(0)
    for size, among in [(500, 120), (50, 0), (0, 10), (300, 300), (1, 1)]:
        values = rng.integers(0, 400, size)  # repeats on both sides, values beyond ``of``'s range too
        of = rng.integers(0, 300, among)
        assert is_member(values, of).tolist() == np.isin(values, of).tolist()
