from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from recstack.data.readers import read_movielens_100k
from recstack.data.simulator import (
    FunctionPolicy,
    HttpPolicy,
    PopularityPolicy,
    RandomPolicy,
    ResponseModel,
    Simulator,
    World,
)
from recstack.errors import RecstackError
from recstack.events.join import join_engagements
from recstack.schema import validate_table

from ..conftest import data_path


def run(seed: int, requests: int = 3_000) -> pa.Table:
    world = World.generate(n_users=200, n_items=300, seed=seed)
    sim = Simulator(world, seed=seed)
    return pa.concat_tables([sim.catalog_events(), *sim.run(RandomPolicy(world.n_items, seed), requests)])


def test_deterministic_by_seed_and_valid_events() -> None:
    a, b, c = run(1), run(1), run(2)
    assert a.equals(b)
    assert not a.equals(c)
    valid, problems = validate_table(a)
    assert valid.all() and problems == []
    assert pc.count_distinct(a.column("event_id")).as_py() == a.num_rows


def test_examination_curve_is_recovered_under_a_random_policy() -> None:
    """Under uniform random slates, CTR(p) / CTR(0) estimates the known curve 1 / (1 + p)."""
    world = World.generate(n_users=500, n_items=400, seed=3)
    sim = Simulator(world, seed=3)
    events = pa.concat_tables(list(sim.run(RandomPolicy(world.n_items, 3), 30_000)))
    rows = join_engagements(events).table.to_pandas()
    ctr = rows.groupby("position")["click"].mean().to_numpy()
    clicks = rows.groupby("position")["click"].sum().to_numpy()
    truth = world.response.examination(np.arange(10))
    ratio = ctr / ctr[0]
    # binomial noise of a ratio of two rates: relative s.e. ~ sqrt(1/clicks_p + 1/clicks_0); allow 4 s.e.
    tolerance = 4 * np.sqrt(1 / clicks + 1 / clicks[0]) * truth
    assert np.all(np.abs(ratio - truth) <= tolerance + 1e-12)


def test_ground_truth_probabilities_match_the_model() -> None:
    world = World.generate(
        n_users=5, n_items=7, seed=0, response=ResponseModel(click_scale=1.0, click_bias=0.0)
    )
    users, items = np.array([0, 4]), np.array([[1, 2], [3, 6]])
    aff = world.affinity(users, items)
    expected = np.einsum("rd,rkd->rk", world.user_vecs[users], world.item_vecs[items]) / np.sqrt(16)
    assert aff == pytest.approx(expected + 0.5 * world.item_quality[items])
    assert world.probabilities(users, items)["click"] == pytest.approx(1 / (1 + np.exp(-aff)))


def test_interests_drift() -> None:
    world = World.generate(n_users=50, n_items=60, seed=0, drift=0.1)
    before = world.user_vecs.copy()
    world.step_days(4.0, np.random.default_rng(0))
    step = world.user_vecs - before
    assert np.std(step) == pytest.approx(0.1 * 2, rel=0.1)


def test_popularity_policy_learns_from_feedback() -> None:
    world = World.generate(n_users=100, n_items=50, seed=1)
    sim = Simulator(world, seed=1)
    policy = PopularityPolicy(world.n_items, seed=1)
    list(sim.run(policy, 2_000))
    top = policy.rank(np.array([0]), 5, 0)[0]
    assert set(top) <= set(np.argsort(-policy.clicks)[:6])
    assert policy.clicks.sum() > 0


def test_fitted_from_movielens_100k() -> None:
    ratings = read_movielens_100k(data_path("movielens-100k")).ratings
    world = World.from_ratings(ratings, dim=16, seed=0)
    assert (world.n_users, world.n_items) == (943, 1682)
    mean_rating = ratings.groupby("item_id")["rating"].mean().sort_index().to_numpy()
    counts = ratings.groupby("item_id").size().sort_index().to_numpy()
    popular = counts >= 50
    # quality follows the items' mean ratings
    assert np.corrcoef(world.item_quality[popular], mean_rating[popular])[0, 1] > 0.9
    # the latent vectors rank each user's high ratings above the low ones more often than not
    u = ratings["user_id"].to_numpy() - 1
    i = ratings["item_id"].to_numpy() - 1
    dots = np.einsum("nd,nd->n", world.user_vecs[u], world.item_vecs[i])
    assert dots[ratings["rating"].to_numpy() >= 4].mean() > dots[ratings["rating"].to_numpy() <= 2].mean()


def test_bad_worlds_and_policies() -> None:
    with pytest.raises(RecstackError, match="at least one"):
        World.generate(n_users=0)
    with pytest.raises(RecstackError, match="empty rating set"):
        World.from_ratings(pd.DataFrame({"user_id": [], "item_id": [], "rating": []}))
    with pytest.raises(RecstackError, match="cannot show 5"):
        RandomPolicy(3).rank(np.array([0]), 5, 0)
    world = World.generate(n_users=3, n_items=10, seed=0)
    with pytest.raises(RecstackError, match="returned 1 known items for 3"):
        FunctionPolicy(world, lambda user, k: ["i1", "unknown"]).rank(np.array([0]), 3, 0)


@pytest.fixture
def endpoint() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = parse_qs(urlparse(self.path).query)
            n = int(query["n"][0])
            body = '{"items": [' + ",".join(f'{{"item_id": "i{k}"}}' for k in range(n)) + "]}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/recommend"
    server.shutdown()


def test_http_policy_drives_the_simulation(endpoint: str) -> None:
    world = World.generate(n_users=20, n_items=30, seed=0)
    sim = Simulator(world, seed=0, slate=4)
    table = next(sim.run(HttpPolicy(world, endpoint), 5))
    shown = table.filter(pc.equal(table.column("kind"), "impression"))
    assert shown.column("item_id").to_pylist()[:4] == ["i0", "i1", "i2", "i3"]
    assert shown.column("position").to_pylist()[:4] == [0, 1, 2, 3]
