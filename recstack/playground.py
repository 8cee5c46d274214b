"""``recstack demo``: the whole system in one process, in a closed loop with simulated users.

1. A simulator world (or one fitted to MovieLens-100k with ``--data``): users, items with creators,
   topics, quality and an unsafe flag; part of the catalog is held back to arrive later.
2. History: a random feed served to the users, logged as events (the embedded Parquet log).
3. Offline: train the bundle (two-tower + ANN, MMoE heavy ranker, distilled light ranker,
   calibration), print its holdout metrics, register it in MLflow and promote it.
4. Online: the API runs in process (uvicorn on a loopback port, worker in process); each round the
   simulated users ask ``/v1/recommend`` over HTTP, their clicks, likes, shares and hides go back
   through ``/v1/events`` (joined to the served request ids), new items arrive through
   ``/v1/items``; then ``recstack train --incremental`` runs, the gate decides, the API hot-reloads.
5. A table per round (online CTR, the true expected click rate of what was served, holdout AUC,
   the model version) and an HTML report with plots (funnel sizes, latency per stage, metrics per
   round) under the state dir.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from recstack.config import Settings
from recstack.data.simulator import FunctionPolicy, RandomPolicy, Simulator, World
from recstack.events.parquet import ParquetEventLog
from recstack.serving.api import Runtime, create_app, registry_source
from recstack.serving.state import FeedState
from recstack.train.rounds import train_and_register

ENGAGEMENTS = ("click", "like", "share", "hide", "dwell")


@dataclass
class PlaygroundConfig:
    users: int = 600
    items: int = 1_500
    held_back: int = 180  # items that arrive during the rounds
    history_requests: int = 8_000
    rounds: int = 3
    requests_per_round: int = 400
    history_searches: int = 6_000  # known-item searches in the history (each a query and a click)
    searches_per_round: int = 150  # users who also search in each round
    slate: int = 10
    seed: int = 7


@dataclass
class RoundResult:
    round: int
    version: str
    requests: int
    ctr: float
    true_ctr: float
    hides_per_request: float
    explore_share: float
    auc_click: float | None
    promoted: bool
    gate: str
    history_ctr: float = 0.0  # the random feed's CTR in the history: the reference
    true_value: float = 0.0  # the simulator's expected value per request of what was served
    funnel: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    # searches: the mean reciprocal rank of the name each user went on to search among the
    # suggestions for its first 1-5 characters (0 when not suggested), and without the topic boost
    searches: int = 0
    search_mrr: float = 0.0
    search_mrr_plain: float = 0.0


def playground_settings(settings: Settings) -> Settings:
    """Small, fast models for the playground (a few minutes on 2 cores), in its own state dir."""
    state_dir = settings.paths.state_dir / "playground"
    return settings.model_copy(
        update={
            "paths": settings.paths.model_copy(update={"state_dir": state_dir}),
            "train": settings.train.model_copy(update={"epochs": 4, "batch_size": 1024, "patience": 2}),
            "two_tower": settings.two_tower.model_copy(update={"dim": 32, "hidden": [64], "history": 20}),
            "tracking": settings.tracking.model_copy(update={"enabled": False}),
            "serving": settings.serving.model_copy(update={"reload_s": 0.5, "state_sync_s": 0.5}),
            "retrieval": settings.retrieval.model_copy(update={"fresh_window_s": 86_400.0}),
        }
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    """Event dicts as a client would send them (nulls dropped, JSON columns parsed)."""
    out = []
    for row in table.to_pylist():
        event = {k: v for k, v in row.items() if v is not None}
        for key in ("attributes", "context", "features", "model_versions"):
            if isinstance(event.get(key), str):
                event[key] = json.loads(event[key])
        for key in ("timestamp", "created_at"):
            if isinstance(event.get(key), datetime):
                event[key] = event[key].isoformat()
        out.append(event)
    return out


class ApiPolicy(FunctionPolicy):
    """Asks the API for each simulated request and remembers the request ids it answered with."""

    def __init__(self, world: World, client: httpx.Client) -> None:
        self.request_ids: list[str] = []
        self.explored = 0
        self.served = 0
        self.filled = 0
        fill_rng = np.random.default_rng(0)

        def call(user_id: str, k: int) -> list[str]:
            response = client.get("/v1/recommend", params={"user_id": user_id, "n": k})
            response.raise_for_status()
            body = response.json()
            self.request_ids.append(body["request_id"])
            self.explored += sum(item["explore"] for item in body["items"])
            self.served += len(body["items"])
            items = [item["item_id"] for item in body["items"]]
            while len(items) < k:  # a short list: the rest of the screen is other content
                filler = world.item_id(int(fill_rng.integers(world.n_items)))
                if filler not in items:
                    items.append(filler)
                    self.filled += 1
            return items

        super().__init__(world, call)


def run_playground(
    settings: Settings,
    console: Console,
    data: Path | None = None,
    config: PlaygroundConfig | None = None,
) -> list[RoundResult]:
    cfg = config or PlaygroundConfig()
    settings = playground_settings(settings)
    root = settings.paths.state_dir
    if root.exists():
        import shutil

        shutil.rmtree(root)
    root.mkdir(parents=True)
    started = time.perf_counter()

    if data is not None:
        from recstack.data.readers import read_movielens_100k

        world = World.from_ratings(read_movielens_100k(data).ratings, seed=cfg.seed)
        console.print(f"world fitted to MovieLens-100k: {world.n_users} users, {world.n_items} items")
    else:
        world = World.generate(n_users=cfg.users, n_items=cfg.items, seed=cfg.seed)
        console.print(f"simulated world: {world.n_users} users, {world.n_items} items")
    live = world.n_items - min(cfg.held_back, world.n_items // 5)
    # the history ends just before the live rounds start, as a real log does: windowed features
    # (an item's clicks in the last hour, day, week) then describe the catalog the rounds serve
    per_day = 4_000
    start = datetime.now(UTC) - timedelta(days=cfg.history_requests / per_day, minutes=10)
    sim = Simulator(world, seed=cfg.seed, start=start, requests_per_day=per_day, slate=cfg.slate)
    log = ParquetEventLog(settings.event_log_path())
    catalog = sim.catalog_events()
    item_rows = [r for r in _rows(catalog) if r["kind"] == "user" or int(r["item_id"][1:]) < live]
    log.append(item_rows)
    for table in tqdm(
        sim.run(RandomPolicy(live, seed=cfg.seed), cfg.history_requests, 2_000),
        desc="history",
        total=-(-cfg.history_requests // 2_000),
    ):
        log.append_table(table)
    kinds = log.table(kinds=["impression", "click"])["kind"].to_numpy(zero_copy_only=False)
    history_ctr = float((kinds == "click").sum() / max((kinds == "impression").sum(), 1))
    # the history's searches: users looked up items they wanted by name and clicked them
    names = item_names(world, data, cfg.seed)
    search_rng = np.random.default_rng(cfg.seed + 1)
    if cfg.history_searches:
        searchers = search_rng.integers(world.n_users, size=cfg.history_searches)
        wanted = known_item_searches(world, searchers, live, search_rng)
        span_s = cfg.history_requests / per_day * 86_400
        times = start.timestamp() + np.sort(search_rng.random(cfg.history_searches)) * span_s
        log.append(search_rows(world, names, searchers, wanted, times, "hs"))
    console.print(f"history: {log.count():,} events in the log; the random feed's CTR {history_ctr:.4f}")

    first = train_and_register(settings, log)
    table = Table("holdout metric (temporal last 10%)", "value", title=f"offline: version {first.version}")
    for key, value in first.metrics.items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)

    runtime = Runtime(
        settings,
        log,
        state=FeedState.for_settings(settings),
        bundle_source=registry_source(settings),
    )
    assert runtime.worker is not None
    runtime.worker.drain()
    runtime.start()
    port = _free_port()
    server, thread = _serve(create_app(runtime), port)
    key = settings.serving.api_keys[0]
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": key}, timeout=30)
    results: list[RoundResult] = []
    rng = np.random.default_rng(cfg.seed)
    arriving = list(range(live, world.n_items))
    revealed = live
    try:
        for round_ in range(1, cfg.rounds + 1):
            new = arriving[: len(arriving) // (cfg.rounds - round_ + 1)]
            arriving = arriving[len(new) :]
            if new:
                now = datetime.now(UTC).isoformat()
                client.post(
                    "/v1/items",
                    json=[
                        {
                            "item_id": world.item_id(i),
                            "creator_id": f"c{world.item_creator[i]}",
                            "attributes": {
                                "topic": f"t{world.item_topic[i]}",
                                "unsafe": bool(world.item_unsafe[i]),
                            },
                            "created_at": now,
                        }
                        for i in new
                    ],
                ).raise_for_status()
            revealed += len(new)
            _wait_for(lambda n=revealed: runtime.state.n_items >= n)
            result = _round(round_, world, sim, client, runtime, cfg, rng)
            if cfg.searches_per_round:
                result.searches, result.search_mrr, result.search_mrr_plain = _search(
                    client, world, names, revealed, cfg, round_, search_rng
                )
            result.history_ctr = history_ctr
            _wait_for(lambda: not runtime.impressions)
            runtime.flush_impressions()
            trained = train_and_register(settings, log, incremental=True)
            runtime.reload()
            result.auc_click = trained.metrics.get("auc_click")
            result.promoted = trained.promoted
            result.gate = trained.gate.reason if trained.gate else ""
            results.append(result)
            console.print(
                f"round {round_}: CTR {result.ctr:.4f}, true expected CTR {result.true_ctr:.4f}, "
                f"{result.searches} searches (autocomplete MRR {result.search_mrr:.3f}, "
                f"{result.search_mrr_plain:.3f} without the topic boost), "
                f"challenger v{trained.version} {'promoted' if trained.promoted else 'kept as challenger'}"
            )
    finally:
        client.close()
        server.should_exit = True
        thread.join(timeout=10)
        runtime.close()

    table = Table(
        "round",
        "served by",
        "CTR",
        "true CTR",
        "hides/request",
        "explore share",
        "holdout AUC",
        "search MRR",
        "promoted",
        title="online, per round",
    )
    for r in results:
        table.add_row(
            str(r.round),
            r.version,
            f"{r.ctr:.4f}",
            f"{r.true_ctr:.4f}",
            f"{r.hides_per_request:.3f}",
            f"{r.explore_share:.3f}",
            f"{r.auc_click:.4f}" if r.auc_click else "",
            f"{r.search_mrr:.3f}" if r.searches else "",
            "yes" if r.promoted else "no",
        )
    table.add_row("history", "random feed", f"{history_ctr:.4f}", "", "", "", "", "", "")
    console.print(table)
    report = write_report(root / "report.html", first.metrics, results, history_ctr)
    console.print(f"report: {report} ({time.perf_counter() - started:.0f} s in all)")
    return results


def _serve(app: Any, port: int) -> tuple[Any, threading.Thread]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait_for(lambda: server.started, timeout_s=30)
    return server, thread


def _wait_for(condition: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the playground waited too long for the API")
        time.sleep(0.05)


SYLLABLES = ["ka", "lo", "mi", "ter", "san", "vo", "ri", "del", "na", "po", "qu", "zen"]
SYLLABLES += ["ba", "tor", "li", "mer", "sha", "fen", "do", "gri", "sol", "ve", "nu", "pa"]


def item_names(world: World, data: Path | None, seed: int) -> list[str]:
    """What users search an item by: its MovieLens title (the year dropped) when the world was fitted
    to MovieLens, else a generated name of two pseudo-words (the simulator's items have none)."""
    if data is not None:
        import re

        from recstack.data.readers import read_movielens_100k

        movielens = read_movielens_100k(data)
        titles = dict(zip(movielens.items["item_id"], movielens.items["title"].astype(str), strict=True))
        rated = np.unique(movielens.ratings["item_id"].to_numpy())  # World.from_ratings's item order
        return [re.sub(r"\s*\(\d{4}\)\s*$", "", titles.get(i, f"item {i}")).strip().lower() for i in rated]
    rng = np.random.default_rng(seed)
    names: dict[str, None] = {}
    while len(names) < world.n_items:
        words = [
            "".join(rng.choice(SYLLABLES, size=int(rng.integers(2, 4))))
            for _ in range(int(rng.integers(1, 3)))
        ]
        names.setdefault(" ".join(words))
    return list(names)


def known_item_searches(world: World, users: np.ndarray, items: int, rng: np.random.Generator) -> np.ndarray:
    """The item each of ``users`` searches for among the first ``items``: drawn with probability
    proportional to the cube of the simulator's P(click) (users look up what they want most)."""
    wanted = np.empty(len(users), dtype=np.int64)
    catalog = np.arange(items)
    for k, user in enumerate(users):
        p = world.probabilities(np.array([user]), catalog[None, :])["click"][0] ** 3
        wanted[k] = rng.choice(items, p=p / p.sum())
    return wanted


def search_rows(
    world: World, names: list[str], users: np.ndarray, wanted: np.ndarray, times: np.ndarray, tag: str
) -> list[dict[str, Any]]:
    """A query for each wanted item by its name, then a click on it among the results (the same
    request id: what the topic boost learns a query's topics from)."""
    rows: list[dict[str, Any]] = []
    for k, (user, item, t) in enumerate(zip(users, wanted, times, strict=True)):
        request = f"{tag}-{k}"
        who = world.user_id(int(user))
        rows.append({"event_id": f"{request}-q", "kind": "query", "timestamp": float(t), "user_id": who,
                     "query": names[int(item)], "request_id": request, "surface": "search"})  # fmt: skip
        rows.append({"event_id": f"{request}-c", "kind": "click", "timestamp": float(t) + 5.0,
                     "user_id": who, "item_id": world.item_id(int(item)), "request_id": request,
                     "surface": "search"})  # fmt: skip
    return rows


def _search(
    client: httpx.Client,
    world: World,
    names: list[str],
    live: int,
    cfg: PlaygroundConfig,
    number: int,
    rng: np.random.Generator,
) -> tuple[int, float, float]:
    """``searches_per_round`` users each look up an item they want (:func:`known_item_searches`):
    they type the first 1-5 characters of its name, reading ``GET /v1/autocomplete``'s suggestions
    for their user id, then search it and click it (``POST /v1/events``, now). Returns (searches,
    MRR of the name among the suggestions, the same without the topic boost, asked in process)."""
    from recstack.autocomplete.normalize import normalize

    users = rng.integers(world.n_users, size=cfg.searches_per_round)
    wanted = known_item_searches(world, users, live, rng)
    total = plain = 0.0
    count = 0
    for user, item in zip(users, wanted, strict=True):
        query = normalize(names[int(item)])
        for length in range(1, min(5, len(query)) + 1):
            params: dict[str, str | int] = {"q": query[:length], "user_id": world.user_id(int(user)), "n": 10}
            response = client.get("/v1/autocomplete", params=params)
            response.raise_for_status()
            texts = [s["text"] for s in response.json()["suggestions"]]
            total += 1.0 / (texts.index(query) + 1) if query in texts else 0.0
            unboosted = client.get("/v1/autocomplete", params=params | {"topic_boost": "false"})
            unboosted.raise_for_status()
            texts = [s["text"] for s in unboosted.json()["suggestions"]]
            plain += 1.0 / (texts.index(query) + 1) if query in texts else 0.0
            count += 1
    rows = search_rows(world, names, users, wanted, np.full(len(users), time.time()), f"s{number}")
    for start in range(0, len(rows), 1_000):
        client.post("/v1/events", json=rows[start : start + 1_000]).raise_for_status()
    return len(users), total / max(count, 1), plain / max(count, 1)


def _round(
    number: int,
    world: World,
    sim: Simulator,
    client: httpx.Client,
    runtime: Runtime,
    cfg: PlaygroundConfig,
    rng: np.random.Generator,
) -> RoundResult:
    policy = ApiPolicy(world, client)
    before = _histograms(runtime)
    first_request = sim._requests
    tables = list(
        tqdm(
            sim.run(policy, cfg.requests_per_round, 100),
            desc=f"round {number}",
            total=-(-cfg.requests_per_round // 100),
        )
    )
    events = pa.concat_tables(tables)
    kinds = np.asarray(events["kind"].to_pylist())
    shown = events.filter(pa.array(kinds == "impression"))
    users = np.array([int(u[1:]) for u in shown["user_id"].to_pylist()])
    items = np.array([int(i[1:]) for i in shown["item_id"].to_pylist()])
    positions = np.asarray(shown["position"].to_pylist())
    true_ctr, true_value = true_outcome(
        world, users, items, positions, runtime.settings.serving.value_weights
    )
    true_value *= len(shown) / cfg.requests_per_round  # per request
    engaged = [r for r in _rows(events.filter(pa.array(np.isin(kinds, ENGAGEMENTS)))) if r]
    now = time.time()
    for row in engaged:  # back to the API's own request ids and clock
        row["request_id"] = policy.request_ids[int(row["request_id"][1:]) - first_request]
        row["timestamp"] = now + 1.0
    for start in range(0, len(engaged), 1_000):
        client.post("/v1/events", json=engaged[start : start + 1_000]).raise_for_status()
    after = _histograms(runtime)
    n_req = cfg.requests_per_round
    clicks = int((kinds == "click").sum())
    return RoundResult(
        round=number,
        version=runtime.version or "?",
        requests=n_req,
        ctr=clicks / max(len(shown), 1),
        true_ctr=true_ctr,
        true_value=true_value,
        hides_per_request=int((kinds == "hide").sum()) / n_req,
        explore_share=policy.explored / max(policy.served, 1),
        auc_click=None,
        promoted=False,
        gate="",
        funnel={k: (after["size"][k] - before["size"].get(k, 0)) / n_req for k in after["size"]},
        latency_ms={k: 1e3 * (after["time"][k] - before["time"].get(k, 0)) / n_req for k in after["time"]},
    )


class SimClock:
    """A settable clock (seconds since the epoch, ``.t``) for ``Runtime(clock=...)``: a simulation
    moves the API's time itself."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def serve_simulated(
    client: Any,
    world: World,
    sim: Simulator,
    clock: Any,
    requests: int,
    slate: int = 10,
    seconds: float = 86_400.0,
    key: str = "recstack-local",
    tag: str = "sim",
    after_batch: Any = None,
    batch: int = 20,
) -> tuple[float, float, int]:
    """``requests`` simulated users ask the API (``client``: an httpx or TestClient) for ``slate``
    items, spread over ``seconds`` of the simulated ``clock`` (a settable ``.t`` the API reads), and
    answer each list with the simulator's response model; their engagements go back through
    ``/v1/events`` after each ``batch`` of requests (stamped after the batch, which spans at most 30
    simulated minutes), then ``after_batch()``
    runs (flush the impressions, let the worker apply what arrived). Returns (the true expected click
    rate of what was shown, the observed click rate, impressions)."""
    headers = {"X-API-Key": key}
    step = seconds / requests
    # the engagements of a batch are stamped after it: a batch spans at most half the attribution
    # window (an hour) of simulated time, so that they still join the impressions that caused them
    batch = max(1, min(batch, int(1_800 / step)))
    fill = np.random.default_rng(sim.rng.integers(2**32))
    true_clicks = clicks = shown = 0.0
    for start in range(0, requests, batch):
        n = min(batch, requests - start)
        users = sim.rng.integers(world.n_users, size=n)
        devices = sim.rng.integers(len(sim.devices), size=n)
        lists, ids = [], []
        for u, device in zip(users, devices, strict=True):
            clock.t += step
            body = {"user_id": world.user_id(int(u)), "n": slate, "context": {"device": sim.devices[device]}}
            response = client.post("/v1/recommend", json=body, headers=headers)
            response.raise_for_status()
            payload = response.json()
            items = [int(e["item_id"][1:]) for e in payload["items"]]
            while len(items) < slate:  # a short list: the rest of the screen is other content
                other = int(fill.integers(world.n_items))
                if other not in items:
                    items.append(other)
            lists.append(items)
            ids.append(payload["request_id"])
        matrix = np.array(lists)
        click, like, share, hide, _ = sim.respond(users, matrix)
        positions = np.broadcast_to(np.arange(slate), matrix.shape)
        truth, _ = true_outcome(world, np.repeat(users, slate), matrix.ravel(), positions.ravel(), {})
        true_clicks += truth * matrix.size
        shown += matrix.size
        clicks += float(click.sum())
        events = [
            {
                "event_id": f"{tag}-{ids[r]}-{k}-{kind}",
                "kind": kind,
                "timestamp": clock.t + 1.0,
                "user_id": world.user_id(int(users[r])),
                "item_id": world.item_id(int(matrix[r, k])),
                "request_id": ids[r],
            }
            for kind, mask in (("click", click), ("like", like), ("share", share), ("hide", hide))
            for r, k in zip(*np.nonzero(mask), strict=True)
        ]
        for at in range(0, len(events), 5_000):
            client.post("/v1/events", json=events[at : at + 5_000], headers=headers).raise_for_status()
        if after_batch is not None:
            after_batch()
    return true_clicks / max(shown, 1), clicks / max(shown, 1), int(shown)


def true_outcome(
    world: World, users: np.ndarray, items: np.ndarray, positions: np.ndarray, weights: dict[str, float]
) -> tuple[float, float]:
    """The simulator's truth for impressions (users, items, positions), each (N,): the expected
    click rate, and the expected value per impression, sum over actions of weight x P(action)
    (like and share follow a click, hide an examined item not clicked), as the value model counts it."""
    probs = world.probabilities(users, items[:, None])
    seen = world.response.examination(positions)
    click = probs["click"][:, 0] * seen
    value = (
        click
        * (
            weights.get("click", 0.0)
            + weights.get("like", 0.0) * probs["like"][:, 0]
            + weights.get("share", 0.0) * probs["share"][:, 0]
        )
        + weights.get("hide", 0.0) * seen * (1 - probs["click"][:, 0]) * probs["hide"][:, 0]
    )
    return float(click.mean()), float(value.mean())


def _histograms(runtime: Runtime) -> dict[str, dict[str, float]]:
    """Per-stage sums of latency and candidates so far (from the Prometheus histograms)."""
    out: dict[str, dict[str, float]] = {"time": {}, "size": {}}
    for metric in runtime.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "recstack_stage_seconds_sum":
                out["time"][sample.labels["stage"]] = sample.value
            elif sample.name == "recstack_stage_candidates_sum":
                out["size"][sample.labels["stage"]] = sample.value
    return out


def write_report(
    path: Path, offline: dict[str, float], rounds: list[RoundResult], history_ctr: float | None = None
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures: list[str] = []

    def add(fig: Any) -> None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        figures.append(base64.b64encode(buffer.getvalue()).decode())

    last = rounds[-1] if rounds else None
    if last is not None:
        fig, ax = plt.subplots(figsize=(6, 3))
        stages = list(last.funnel)
        ax.bar(stages, [last.funnel[s] for s in stages], color="#4477aa")
        ax.set_ylabel("candidates per request")
        ax.set_yscale("log")
        ax.set_title("funnel: candidates each stage leaves (last round)")
        ax.tick_params(axis="x", rotation=30)
        add(fig)
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar(stages, [last.latency_ms.get(s, 0.0) for s in stages], color="#ee6677")
        ax.set_ylabel("ms per request (mean)")
        ax.set_title("latency per stage (last round)")
        ax.tick_params(axis="x", rotation=30)
        add(fig)
    fig, ax = plt.subplots(figsize=(6, 3))
    xs = [r.round for r in rounds]
    ax.plot(xs, [r.ctr for r in rounds], marker="o", label="online CTR")
    ax.plot(xs, [r.true_ctr for r in rounds], marker="o", label="true expected CTR")
    ax.plot(xs, [r.auc_click or np.nan for r in rounds], marker="s", label="holdout AUC (click)")
    if history_ctr is not None:
        ax.axhline(history_ctr, color="grey", linestyle="--", label="random feed CTR (history)")
    ax.set_xlabel("round")
    ax.legend()
    ax.set_title("metrics per round")
    add(fig)

    rows = "".join(
        f"<tr><td>{r.round}</td><td>{r.version}</td><td>{r.ctr:.4f}</td><td>{r.true_ctr:.4f}</td>"
        f"<td>{r.hides_per_request:.3f}</td><td>{r.explore_share:.3f}</td>"
        f"<td>{(r.auc_click or float('nan')):.4f}</td><td>{'yes' if r.promoted else 'no'}</td>"
        f"<td>{r.gate}</td></tr>"
        for r in rounds
    )
    offline_rows = "".join(f"<tr><td>{k}</td><td>{v:.4f}</td></tr>" for k, v in offline.items())
    images = "".join(f'<p><img src="data:image/png;base64,{b}"></p>' for b in figures)
    path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>recstack playground</title>"
        "<style>body{font-family:sans-serif;max-width:900px;margin:2em auto}td,th{padding:2px 8px}</style>"
        "</head><body><h1>recstack playground</h1>"
        f"<h2>Offline (first model, temporal holdout)</h2><table>{offline_rows}</table>"
        + (
            f"<p>The random feed of the history had CTR {history_ctr:.4f}.</p>"
            if history_ctr is not None
            else ""
        )
        + "<h2>Online rounds</h2><table><tr><th>round</th><th>served by</th><th>CTR</th><th>true CTR</th>"
        "<th>hides/request</th><th>explore share</th><th>holdout AUC</th><th>promoted</th><th>gate</th></tr>"
        f"{rows}</table><h2>Plots</h2>{images}</body></html>"
    )
    return path
