"""A semi-synthetic world with known ground truth, for closed-loop tests of recstack.

The world
    Users and items have latent vectors (``dim``): fitted from a real rating matrix (truncated SVD of
    MovieLens-100k, say) or drawn from a normal distribution. Items also have a topic (k-means over the
    item vectors), a creator (Zipf-distributed catalog sizes), a quality (the item's mean rating,
    standardized, or drawn), a creation time (freshness) and an ``unsafe`` flag (a fixed share of the
    catalog). Users' interests drift: each simulated day every user vector takes a Gaussian step of
    scale ``drift``; ``World.shift_interests`` moves them at once (and the items' appeal).

The response model (the ground truth, exposed by :meth:`World.probabilities`)
    affinity(u, i) = <user_u, item_i> / sqrt(dim) + quality_weight * quality_i
    P(examine | position p) = 1 / (1 + p) ** eta                (p = 0 is the top slot)
    P(click | examined)     = sigmoid(click_scale * affinity + click_bias)
    P(like  | click)        = sigmoid(affinity + like_bias)
    P(share | click)        = sigmoid(affinity + share_bias)
    P(hide  | examined, no click) = sigmoid(-affinity + hide_bias + unsafe_hide_boost * unsafe_i)
    dwell seconds | click   ~ Exponential(mean = dwell_mean * (1 + sigmoid(affinity)))

A policy (random, popularity, any function, or an HTTP endpoint) ranks the catalog for a request;
the simulator shows its top ``slate`` items and emits impressions and engagements in the recstack
event schema, column-wise (Arrow tables). Deterministic by seed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from recstack.errors import RecstackError
from recstack.schema import EVENT_SCHEMA

US = 1_000_000


def sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-x))
    return out


@dataclass(frozen=True)
class ResponseModel:
    """Parameters of the ground-truth response model (see the module docstring)."""

    eta: float = 1.0
    quality_weight: float = 0.5
    click_scale: float = 2.0
    click_bias: float = -1.5
    like_bias: float = -1.0
    share_bias: float = -3.0
    hide_bias: float = -4.0
    unsafe_hide_boost: float = 3.0
    dwell_mean: float = 30.0

    def examination(self, positions: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + positions) ** self.eta


@dataclass
class World:
    """Users and items with latent vectors and attributes; the truth every test can consult."""

    user_vecs: np.ndarray  # (U, D)
    item_vecs: np.ndarray  # (I, D)
    item_topic: np.ndarray  # (I,) int
    item_creator: np.ndarray  # (I,) int
    item_quality: np.ndarray  # (I,) float, standardized
    item_created_us: np.ndarray  # (I,) int64
    item_unsafe: np.ndarray  # (I,) bool
    response: ResponseModel = field(default_factory=ResponseModel)
    drift: float = 0.02

    @property
    def n_users(self) -> int:
        return len(self.user_vecs)

    @property
    def n_items(self) -> int:
        return len(self.item_vecs)

    def user_id(self, u: int) -> str:
        return f"u{u}"

    def item_id(self, i: int) -> str:
        return f"i{i}"

    @classmethod
    def generate(
        cls,
        n_users: int = 1000,
        n_items: int = 2000,
        dim: int = 16,
        n_topics: int = 20,
        n_creators: int = 200,
        unsafe_rate: float = 0.02,
        drift: float = 0.02,
        seed: int = 0,
        start: datetime = datetime(2026, 11, 1, tzinfo=UTC),
        response: ResponseModel | None = None,
    ) -> World:
        """A world drawn from scratch: items cluster around topic centres."""
        if n_users < 1 or n_items < 1:
            raise RecstackError("a world needs at least one user and one item")
        rng = np.random.default_rng(seed)
        centres = rng.normal(size=(n_topics, dim))
        topic = rng.integers(n_topics, size=n_items)
        items = centres[topic] + 0.5 * rng.normal(size=(n_items, dim))
        users = centres[rng.integers(n_topics, size=n_users)] * 0.7 + 0.7 * rng.normal(size=(n_users, dim))
        return cls._finish(
            users,
            items,
            topic,
            rng.normal(size=n_items),
            n_creators,
            unsafe_rate,
            drift,
            rng,
            start,
            response,
        )

    @classmethod
    def from_ratings(
        cls,
        ratings: pd.DataFrame,
        dim: int = 16,
        n_topics: int = 20,
        n_creators: int = 200,
        unsafe_rate: float = 0.02,
        drift: float = 0.02,
        seed: int = 0,
        start: datetime = datetime(2026, 11, 1, tzinfo=UTC),
        response: ResponseModel | None = None,
    ) -> World:
        """A world fitted to a rating matrix (columns user_id, item_id, rating): latent vectors from a
        truncated SVD of the mean-centred ratings, quality from the items' mean ratings."""
        import scipy.sparse as sp
        from sklearn.cluster import KMeans
        from sklearn.decomposition import TruncatedSVD

        if ratings.empty:
            raise RecstackError("cannot fit a world to an empty rating set")
        users, u_index = np.unique(ratings["user_id"].to_numpy(), return_inverse=True)
        items, i_index = np.unique(ratings["item_id"].to_numpy(), return_inverse=True)
        values = ratings["rating"].to_numpy(dtype=np.float64)
        centred = values - values.mean()
        matrix = sp.csr_matrix((centred, (u_index, i_index)), shape=(len(users), len(items)))
        svd = TruncatedSVD(n_components=min(dim, min(matrix.shape) - 1), random_state=seed)
        user_f = svd.fit_transform(matrix)
        item_f = svd.components_.T * svd.singular_values_
        # unit spread per coordinate, whatever the data's scale, so the response model's constants hold
        user_f, item_f = user_f / (np.std(user_f) or 1.0), item_f / (np.std(item_f) or 1.0)
        sums = np.bincount(i_index, weights=values, minlength=len(items))
        counts = np.bincount(i_index, minlength=len(items))
        mean = (sums + 3 * values.mean()) / (counts + 3)  # shrunk towards the global mean
        quality = (mean - mean.mean()) / (mean.std() or 1.0)
        rng = np.random.default_rng(seed)
        topic = KMeans(n_clusters=min(n_topics, len(items)), n_init=3, random_state=seed).fit_predict(item_f)
        return cls._finish(
            user_f, item_f, topic, quality, n_creators, unsafe_rate, drift, rng, start, response
        )

    @classmethod
    def _finish(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        topic: np.ndarray,
        quality: np.ndarray,
        n_creators: int,
        unsafe_rate: float,
        drift: float,
        rng: np.random.Generator,
        start: datetime,
        response: ResponseModel | None,
    ) -> World:
        n_items = len(items)
        weights = 1.0 / np.arange(1, n_creators + 1)
        creator = rng.choice(n_creators, size=n_items, p=weights / weights.sum())
        start_us = int(start.timestamp() * US)
        created = start_us - rng.integers(0, 60 * 86_400 * US, size=n_items)
        unsafe = rng.random(n_items) < unsafe_rate
        return cls(
            users.astype(np.float64),
            items.astype(np.float64),
            topic.astype(np.int64),
            creator.astype(np.int64),
            quality.astype(np.float64),
            created.astype(np.int64),
            unsafe,
            response or ResponseModel(),
            drift,
        )

    def affinity(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """users: (R,), items: (R, K) -> (R, K) affinities."""
        dim = self.user_vecs.shape[1]
        dots = np.einsum("rd,rkd->rk", self.user_vecs[users], self.item_vecs[items]) / np.sqrt(dim)
        out: np.ndarray = dots + self.response.quality_weight * self.item_quality[items]
        return out

    def probabilities(self, users: np.ndarray, items: np.ndarray) -> dict[str, np.ndarray]:
        """Ground truth: P(click | examined), P(like | click), P(share | click), P(hide | examined, no
        click) for (R,) users and (R, K) items; each (R, K)."""
        r = self.response
        aff = self.affinity(users, items)
        return {
            "click": sigmoid(r.click_scale * aff + r.click_bias),
            "like": sigmoid(aff + r.like_bias),
            "share": sigmoid(aff + r.share_bias),
            "hide": sigmoid(-aff + r.hide_bias + r.unsafe_hide_boost * self.item_unsafe[items]),
        }

    def shift_interests(self, share: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A sudden shift in what people like, of size ``share`` in [0, 1]: the taste vectors of a
        random ``share`` of the users turn by one common random rotation (what that crowd likes
        moves together), and the appeal (quality) of a random ``share`` of the items is reshuffled
        among them (yesterday's favourites become ordinary, others take their place). Returns (the
        users moved, the items whose appeal moved)."""
        users = rng.choice(self.n_users, size=round(share * self.n_users), replace=False)
        q, r = np.linalg.qr(rng.normal(size=(self.user_vecs.shape[1],) * 2))
        self.user_vecs[users] = self.user_vecs[users] @ (q * np.sign(np.diag(r)))
        items = rng.choice(self.n_items, size=round(share * self.n_items), replace=False)
        self.item_quality[items] = self.item_quality[rng.permutation(items)]
        return np.sort(users), np.sort(items)

    def step_days(self, days: float, rng: np.random.Generator) -> None:
        """Interest drift: every user vector takes a Gaussian step of scale drift * sqrt(days)."""
        if days > 0 and self.drift > 0:
            self.user_vecs += rng.normal(scale=self.drift * np.sqrt(days), size=self.user_vecs.shape)


class Policy(Protocol):
    """Ranks items for a batch of requests: users (R,) -> (R, k) item indices, best first."""

    def rank(self, users: np.ndarray, k: int, now_us: int) -> np.ndarray: ...


class RandomPolicy:
    """k distinct items uniformly at random per request (the unconfounded logging policy)."""

    def __init__(self, n_items: int, seed: int = 0) -> None:
        self.n_items = n_items
        self.rng = np.random.default_rng(seed)

    def rank(self, users: np.ndarray, k: int, now_us: int) -> np.ndarray:
        if k > self.n_items:
            raise RecstackError(f"cannot show {k} distinct items from a catalog of {self.n_items}")
        if self.n_items <= 4 * k:  # small catalog: a random permutation prefix per row
            keys = self.rng.random((len(users), self.n_items))
            return np.argpartition(keys, k - 1, axis=1)[:, :k]
        items = self.rng.integers(self.n_items, size=(len(users), k))
        while True:  # redraw the rows that picked an item twice (rare when k << catalog)
            ordered = np.sort(items, axis=1)
            clash = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
            if not len(clash):
                return items
            items[clash] = self.rng.integers(self.n_items, size=(len(clash), k))


class PopularityPolicy:
    """The k items with the most clicks so far (``observe`` feeds it), ties broken at random."""

    def __init__(self, n_items: int, seed: int = 0) -> None:
        self.clicks = np.zeros(n_items)
        self.rng = np.random.default_rng(seed)

    def observe(self, items: np.ndarray, clicked: np.ndarray) -> None:
        np.add.at(self.clicks, items[clicked], 1.0)

    def rank(self, users: np.ndarray, k: int, now_us: int) -> np.ndarray:
        noisy = self.clicks + self.rng.random(len(self.clicks)) * 1e-3
        top = np.argsort(-noisy)[:k]
        return np.tile(top, (len(users), 1))


class FunctionPolicy:
    """Wraps ``fn(user_id: str, k: int) -> list[str]`` (item ids), e.g. a call to a model in process."""

    def __init__(self, world: World, fn: Callable[[str, int], list[str]]) -> None:
        self.world = world
        self.fn = fn
        self.index = {world.item_id(i): i for i in range(world.n_items)}

    def rank(self, users: np.ndarray, k: int, now_us: int) -> np.ndarray:
        out = np.empty((len(users), k), dtype=np.int64)
        for row, u in enumerate(users):
            ids = self.fn(self.world.user_id(int(u)), k)
            picked = [self.index[i] for i in ids if i in self.index][:k]
            if len(picked) < k:
                raise RecstackError(f"policy returned {len(picked)} known items for {k} slots")
            out[row] = picked
        return out


class HttpPolicy(FunctionPolicy):
    """Asks a recommendation endpoint: GET ``{url}?user_id=..&n=..`` returning
    ``{"items": [{"item_id": ...}, ...]}`` (recstack's /v1/recommend shape)."""

    def __init__(
        self, world: World, url: str, headers: dict[str, str] | None = None, timeout_s: float = 5.0
    ) -> None:
        import httpx

        client = httpx.Client(headers=headers or {}, timeout=timeout_s)

        def call(user_id: str, k: int) -> list[str]:
            response = client.get(url, params={"user_id": user_id, "n": k})
            response.raise_for_status()
            return [str(entry["item_id"]) for entry in response.json()["items"]]

        super().__init__(world, call)


class Simulator:
    """Drives a policy against a world and emits the event log of what happened."""

    def __init__(
        self,
        world: World,
        seed: int = 0,
        start: datetime = datetime(2026, 11, 1, tzinfo=UTC),
        requests_per_day: int = 50_000,
        slate: int = 10,
        surfaces: tuple[str, ...] = ("feed",),
        devices: tuple[str, ...] = ("ios", "android", "web"),
    ) -> None:
        self.world = world
        self.rng = np.random.default_rng(seed)
        self.now_us = int(start.timestamp() * US)
        self.step_us = max(int(86_400 * US / requests_per_day), 1)
        self.slate = slate
        self.surfaces = surfaces
        self.devices = devices
        self._requests = 0
        self._events = 0
        self._day_us = 86_400 * US
        self._last_drift_us = self.now_us

    def catalog_events(self) -> pa.Table:
        """Item and user upserts for the whole world, at the simulator's start time."""
        w = self.world
        n_i, n_u = w.n_items, w.n_users
        ts = np.full(n_i + n_u, self.now_us - 1, dtype=np.int64)
        columns = {
            "event_id": [f"item-{i}" for i in range(n_i)] + [f"user-{u}" for u in range(n_u)],
            "kind": ["item"] * n_i + ["user"] * n_u,
            "timestamp": ts,
            "user_id": [None] * n_i + [w.user_id(u) for u in range(n_u)],
            "item_id": [w.item_id(i) for i in range(n_i)] + [None] * n_u,
            "creator_id": [f"c{c}" for c in w.item_creator] + [None] * n_u,
            "created_at": w.item_created_us.tolist() + [None] * n_u,
            "attributes": [
                json.dumps({"topic": f"t{t}", "unsafe": bool(s)})
                for t, s in zip(w.item_topic, w.item_unsafe, strict=True)
            ]
            + [None] * n_u,
        }
        return _table(columns, n_i + n_u)

    def run(self, policy: Policy, requests: int, batch_requests: int = 5_000) -> Iterator[pa.Table]:
        """Serve ``requests`` requests with ``policy``; yields event tables (EVENT_SCHEMA), one per batch."""
        done = 0
        while done < requests:
            n = min(batch_requests, requests - done)
            yield self._batch(policy, n)
            done += n

    def respond(
        self, users: np.ndarray, items: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The users' responses to the lists ``items`` (n, k) shown to ``users`` (n,): (click, like,
        share, hide) (n, k) bool and dwell seconds (n, k), drawn from the response model."""
        w, rng = self.world, self.rng
        n, k = items.shape
        probs = w.probabilities(users, items)
        positions = np.broadcast_to(np.arange(k), (n, k))
        examined = rng.random((n, k)) < w.response.examination(positions)
        click = examined & (rng.random((n, k)) < probs["click"])
        like = click & (rng.random((n, k)) < probs["like"])
        share = click & (rng.random((n, k)) < probs["share"])
        hide = examined & ~click & (rng.random((n, k)) < probs["hide"])
        dwell = rng.exponential(w.response.dwell_mean * (1 + sigmoid(w.affinity(users, items))))
        return click, like, share, hide, dwell

    def _batch(self, policy: Policy, n: int) -> pa.Table:
        w, rng, k = self.world, self.rng, self.slate
        times = self.now_us + self.step_us * np.arange(n, dtype=np.int64)
        self.now_us = int(times[-1] + self.step_us)
        while self.now_us - self._last_drift_us >= self._day_us:
            w.step_days(1.0, rng)
            self._last_drift_us += self._day_us
        users = rng.integers(w.n_users, size=n)
        items = policy.rank(users, k, int(times[0]))  # (n, k)
        click, like, share, hide, dwell = self.respond(users, items)
        if isinstance(policy, PopularityPolicy):
            policy.observe(items.ravel(), click.ravel())

        req = self._requests + np.arange(n)
        self._requests += n
        surface = np.asarray(self.surfaces)[rng.integers(len(self.surfaces), size=n)]
        device = np.asarray(self.devices)[rng.integers(len(self.devices), size=n)]
        parts: list[tuple[str, np.ndarray, np.ndarray]] = [
            ("impression", np.ones((n, k), bool), np.zeros((n, k)))
        ]
        parts += [
            ("click", click, np.full((n, k), 2 * US)),
            ("like", like, np.full((n, k), 20 * US)),
            ("share", share, np.full((n, k), 25 * US)),
            ("hide", hide, np.full((n, k), 3 * US)),
            ("dwell", click, np.full((n, k), 4 * US) + (dwell * US).astype(np.int64)),
        ]
        cols: dict[str, list[object]] = {
            name: []
            for name in ("event_id", "kind", "user_id", "item_id", "request_id", "surface", "context")
        }
        ts_parts, pos_parts, dwell_parts = [], [], []
        for kind, mask, delay in parts:
            r_idx, s_idx = np.nonzero(mask)
            count = len(r_idx)
            if not count:
                continue
            base = self._events
            self._events += count
            cols["event_id"] += [f"{kind[0]}{x}" for x in range(base, base + count)]
            cols["kind"] += [kind] * count
            cols["user_id"] += [f"u{u}" for u in users[r_idx]]
            cols["item_id"] += [f"i{i}" for i in items[r_idx, s_idx]]
            cols["request_id"] += [f"r{x}" for x in req[r_idx]]
            cols["surface"] += surface[r_idx].tolist()
            if kind == "impression":
                cols["context"] += [f'{{"device": "{d}"}}' for d in device[r_idx]]
                pos_parts.append(s_idx.astype(np.int32))
            else:
                cols["context"] += [None] * count
                pos_parts.append(np.full(count, -1, dtype=np.int32))
            ts_parts.append(times[r_idx] + delay[r_idx, s_idx].astype(np.int64))
            dwell_parts.append(dwell[r_idx, s_idx] if kind == "dwell" else np.full(count, np.nan))
        total = len(cols["event_id"])
        positions_all = np.concatenate(pos_parts)
        dwell_all = np.concatenate(dwell_parts)
        table = _table(cols | {"timestamp": np.concatenate(ts_parts)}, total)
        table = table.set_column(
            EVENT_SCHEMA.get_field_index("position"),
            "position",
            pa.array(positions_all, mask=positions_all < 0, type=pa.int32()),
        )
        return table.set_column(
            EVENT_SCHEMA.get_field_index("dwell_seconds"),
            "dwell_seconds",
            pa.array(dwell_all, mask=np.isnan(dwell_all), type=pa.float64()),
        )


def _table(columns: dict[str, object], n: int) -> pa.Table:
    """An EVENT_SCHEMA table from columns; times are given as integer microseconds."""
    arrays = []
    for f in EVENT_SCHEMA:
        if f.name not in columns:
            arrays.append(pa.nulls(n, f.type))
        elif pa.types.is_timestamp(f.type):
            arrays.append(pa.array(columns[f.name], type=pa.int64()).cast(f.type))
        else:
            arrays.append(pa.array(columns[f.name], type=f.type))
    return pa.Table.from_arrays(arrays, schema=EVENT_SCHEMA)
