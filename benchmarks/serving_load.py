"""Load test of the feed API with the full funnel at catalog scale.

Set-up: a feed bundle is trained on a simulator world (2,000 users, 2,000 items), then scaled to
``--items`` by adding synthetic items (vectors drawn around the trained item vectors, 100,000
creators, 20 topics, creation times spread over 30 days so a tenth is fresh); the catalog index is
IVF. The API runs in its own process (uvicorn; embedded: the worker thread in process; separate:
Redis bus and state, the worker in its own process, and ``--processes`` API processes forked after
loading as ``recstack serve --processes`` runs them) with that catalog in its state. A bounded
open-loop generator on loopback sends ``GET /v1/recommend`` at ``--rps`` for ``--duration`` seconds
(at most ``--concurrency`` keep-alive connections in flight, used in turn; 10% of requests from users
the model never saw), then reads latency percentiles on the client, the per-stage means and the
API's resident memory (/proc: one process's RSS; several processes' proportional set sizes summed,
pages they share counted once, with their plain RSS sum recorded beside it as ``rss_sum_mb``), and
in the separate topology the CPU the worker and the Redis server spent a request during the load.

Ends with ``RESULT items=<n> rps=<n> p50_ms=<x> p99_ms=<x> rss_mb=<n>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _results import bench_settings, record, wait_until_up  # noqa: E402

US = 1_000_000
KEY = "recstack-local"


def serving_overrides() -> dict[str, str]:
    """``--serving KEY=VALUE`` settings, passed to the API and worker processes in the environment."""
    given = json.loads(os.environ.get("RECSTACK_BENCH_SERVING", "{}"))
    return {f"RECSTACK_SERVING__{k.upper()}": str(v) for k, v in given.items()}


def settings_for(folder: Path) -> object:
    settings = bench_settings(
        {
            "RECSTACK_TRAIN__EPOCHS": "3",
            "RECSTACK_TRAIN__BATCH_SIZE": "2048",
            "RECSTACK_TWO_TOWER__DIM": "32",
            "RECSTACK_TWO_TOWER__HIDDEN": "[64]",
            "RECSTACK_TWO_TOWER__HISTORY": "20",
            "RECSTACK_RETRIEVAL__INDEX": "ivf",
            "RECSTACK_SERVING__RELOAD_S": "3600",
        }
        | serving_overrides()
    )
    return settings.model_copy(  # type: ignore[attr-defined]
        update={"paths": settings.paths.model_copy(update={"state_dir": folder / "state"})}  # type: ignore[attr-defined]
    )


def build(folder: Path, n_items: int) -> None:
    """Train a small bundle, scale it to n_items, and snapshot the serving state."""
    from recstack.config import IndexKind
    from recstack.data.simulator import PopularityPolicy, Simulator, World
    from recstack.events.parquet import ParquetEventLog
    from recstack.features.stores import SQLiteStore
    from recstack.index.faiss_index import IndexParams, ItemIndex
    from recstack.serving.state import FeedState
    from recstack.serving.worker import FeedWorker
    from recstack.train.feed import train_bundle

    settings = settings_for(folder)
    world = World.generate(n_users=2_000, n_items=2_000, seed=11)
    sim = Simulator(world, seed=11, requests_per_day=20_000)
    log = ParquetEventLog(folder / "events")
    log.append_table(sim.catalog_events())
    for table in sim.run(PopularityPolicy(world.n_items, seed=11), 20_000, 5_000):
        log.append_table(table)
    small = folder / "small"
    started = time.perf_counter()
    train_bundle(settings, log, small)  # type: ignore[arg-type]
    print(f"trained the small bundle in {time.perf_counter() - started:.0f} s")

    big = folder / "bundle"
    shutil.copytree(small, big)
    ids = json.loads((small / "retriever" / "ids.json").read_text())
    trained = np.load(small / "item_vectors.npy")
    rng = np.random.default_rng(0)
    extra = n_items - len(trained)
    noise = rng.normal(scale=0.3 * trained.std(), size=(extra, trained.shape[1])).astype(np.float32)
    vectors = np.concatenate([trained, trained[rng.integers(len(trained), size=extra)] + noise])
    started = time.perf_counter()
    index = ItemIndex(vectors.shape[1], IndexKind.ivf, IndexParams(nprobe=16))
    index.build(vectors, check_queries=200)
    print(
        f"IVF over {n_items:,} items in {time.perf_counter() - started:.0f} s, "
        f"recall@100 {index.build_recall:.3f}"
    )
    shutil.rmtree(big / "retriever" / "index")
    index.save(big / "retriever" / "index")
    synthetic = [f"x{n}" for n in range(extra)]
    ids["id_items"] = len(ids["items"])
    ids["items"] = ids["items"] + synthetic
    (big / "retriever" / "ids.json").write_text(json.dumps(ids))
    np.save(big / "item_vectors.npy", vectors)

    state = FeedState.for_settings(settings)  # type: ignore[arg-type]
    store = SQLiteStore(folder / "state" / "feed_state.sqlite")
    worker = FeedWorker(log, state, store)
    worker.drain()
    now_us = int(time.time() * US)
    state.load_items(
        synthetic,
        [f"k{n % 100_000}" for n in range(extra)],
        now_us - rng.integers(0, 30 * 86_400 * US, size=extra),
        {"topic": [f"t{n % 20}" for n in range(extra)]},
    )
    worker.checkpoint()
    print(f"serving state: {state.n_items:,} items, {len(state.users):,} users")


def _redis_parts(namespace: str) -> tuple[object, object]:
    from recstack.events.redis_stream import RedisStreamLog
    from recstack.features.stores import RedisStore

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    return RedisStreamLog(url, stream=f"{namespace}:events"), RedisStore(url, prefix=f"{namespace}:state:")


def serve(folder: Path, port: int, namespace: str, processes: int) -> None:
    """The API process: embedded (namespace '-': Parquet log, worker in process) or, the production
    topology, over Redis with the worker in its own process (and ``processes`` API processes forked
    after loading, as ``recstack serve --processes`` runs them)."""
    from recstack.serving import prefork

    metrics = None
    if processes > 1:
        prefork.check_processes(processes, namespace != "-")
        metrics = prefork.multiprocess_metrics()  # before prometheus_client is imported
        prefork.prepare_parent()
    try:
        _serve(folder, port, namespace, processes)
    finally:
        prefork.remove_metrics_folder(metrics)


def _serve(folder: Path, port: int, namespace: str, processes: int) -> None:
    import uvicorn

    from recstack.events.parquet import ParquetEventLog
    from recstack.features.stores import SQLiteStore
    from recstack.serving import prefork
    from recstack.serving.api import Runtime, create_app

    settings = settings_for(folder)
    if namespace == "-":
        bus, store, in_process = (
            ParquetEventLog(folder / "served-events"),
            SQLiteStore(folder / "run-state" / "feed_state.sqlite"),
            True,
        )
    else:
        (bus, store), in_process = _redis_parts(namespace), False
    runtime = Runtime(
        settings,  # type: ignore[arg-type]
        bus,  # type: ignore[arg-type]
        store=store,  # type: ignore[arg-type]
        bundle_source=lambda: ("1", folder / "bundle"),
        in_process_worker=in_process,
    )
    if processes > 1:
        sock = prefork.listen("127.0.0.1", port)
        runtime.reload()
        sys.exit(prefork.serve_processes(runtime, create_app, sock, processes))
    runtime.start()
    uvicorn.run(create_app(runtime), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def work(namespace: str) -> None:
    """The worker process of the separate topology."""
    import signal
    import threading

    from recstack.serving.worker import FeedWorker, load_state

    cfg = bench_settings(serving_overrides()).serving
    bus, store = _redis_parts(namespace)
    state = load_state(store)  # type: ignore[arg-type]
    assert state is not None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker = FeedWorker(bus, state, store, snapshot_s=cfg.state_sync_s, full_s=cfg.state_full_s)  # type: ignore[arg-type]
    worker.run(stop)


def rss(pid: int) -> tuple[float, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def family(pid: int) -> list[int]:
    """The process and its children (the API's processes when it forks them)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(c) for c in children)]


def pss_mb(pids: list[int]) -> float:
    """Proportional set size summed over processes: pages they share counted once in all."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    return total / 1024


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu_s() -> float:
    """The Redis server's CPU seconds so far (INFO cpu: its main thread and children)."""
    import redis

    info = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")).info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def stage_means(metrics: str) -> dict[str, tuple[float, float]]:
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in metrics.splitlines():
        for suffix, into in (("_sum", sums), ("_count", counts)):
            if line.startswith(f"recstack_stage_seconds{suffix}"):
                stage = line.split('stage="')[1].split('"')[0]
                into[stage] = float(line.split()[-1])
    return {s: (sums[s], counts.get(s, 0.0)) for s in sums}


class _Connection:
    """One keep-alive HTTP/1.1 connection on asyncio streams: a load generator this small spends
    a fraction of a millisecond per request, leaving the cores to the API under test."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def get(self, target: str) -> int:
        self.writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {KEY}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await self.reader.readexactly(length)
        return status


async def drive(
    port: int, rps: float, duration: float, concurrency: int, users: int
) -> tuple[list[float], int]:
    """Feed requests of random users (a tenth of them new), open loop (``open_loop``)."""
    rng = np.random.default_rng(1)

    def target(_: int) -> str:
        u = int(rng.integers(users))
        user = f"u{u}" if rng.random() > 0.1 else f"new{u}"
        return f"/v1/recommend?user_id={user}&n=20"

    latencies, errors, achieved = await open_loop(port, rps, duration, concurrency, target)
    print(f"sent {len(latencies)} requests, achieved {achieved:.0f} requests/s")
    return latencies, errors


async def open_loop(
    port: int, rps: float, duration: float, concurrency: int, target: Callable[[int], str]
) -> tuple[list[float], int, float]:
    """Open loop: request i (``target(i)``) is sent at t0 + i / rps on an idle connection (at most
    ``concurrency`` in flight; a request waiting for a connection counts its wait in its latency).
    Returns (latencies in ms, non-200 answers, requests/s achieved)."""
    idle: asyncio.Queue[_Connection] = asyncio.Queue()
    for _ in range(concurrency):
        idle.put_nowait(_Connection(*await asyncio.open_connection("127.0.0.1", port)))
    latencies: list[float] = []
    errors = 0

    async def one(target: str, due: float) -> None:
        nonlocal errors
        connection = await idle.get()
        try:
            status = await connection.get(target)
        finally:
            idle.put_nowait(connection)
        latencies.append((time.perf_counter() - due) * 1e3)
        errors += status != 200

    tasks = []
    total = int(rps * duration)
    t0 = time.perf_counter()
    for i in range(total):
        due = t0 + i / rps
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(target(i), due)))
    await asyncio.gather(*tasks)
    achieved = total / (time.perf_counter() - t0)
    while not idle.empty():
        idle.get_nowait().writer.close()
    return latencies, errors, achieved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100k items, 8 s of load")
    parser.add_argument("--items", type=int, default=None)
    parser.add_argument("--rps", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--topology",
        choices=("embedded", "separate"),
        default="embedded",
        help="embedded: Parquet log, worker in the API process; separate: Redis bus and state, "
        "the worker in its own process (production)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="API processes forked after loading (more than one needs --topology separate)",
    )
    parser.add_argument(
        "--serving",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [serving] setting for the API and the worker, e.g. state_sync_s=0.5 (repeatable)",
    )
    parser.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, default=HERE.parent / ".bench" / "serving_load")
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), int(args.serve[1]), args.serve[2], int(args.serve[3]))
        return
    if args.work:
        work(args.work)
        return
    if args.processes > 1 and args.topology != "separate":
        parser.error("--processes > 1 needs --topology separate (the worker owns the state)")
    from recstack.config import ServingConfig

    overrides = dict(item.split("=", 1) for item in args.serving if "=" in item)
    unknown = set(overrides) - set(ServingConfig.model_fields)
    if unknown or len(overrides) != len(args.serving):
        parser.error(f"--serving takes KEY=VALUE with a [serving] key; not understood: {args.serving}")
    os.environ["RECSTACK_BENCH_SERVING"] = json.dumps(overrides)  # read by the processes started
    items = args.items or (100_000 if args.quick else 1_000_000)
    duration = args.duration or (8.0 if args.quick else 30.0)
    folder = args.folder / str(items)
    if not (folder / "bundle" / "bundle.json").exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        build(folder, items)
    shutil.rmtree(folder / "served-events", ignore_errors=True)
    # every run starts from the state as built (a run's own snapshots refer to its own log)
    shutil.rmtree(folder / "run-state", ignore_errors=True)
    shutil.copytree(folder / "state", folder / "run-state")

    import httpx

    port = 18_000 + os.getpid() % 1000
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    namespace = "-"
    worker = None
    if args.topology == "separate":  # the built snapshot, copied into Redis for both processes
        from recstack.features.stores import SQLiteStore
        from recstack.serving.worker import STATE_KEY

        namespace = f"recstack:bench:{os.getpid()}"
        _, store = _redis_parts(namespace)
        keys = [STATE_KEY + suffix for suffix in ("", ":catalog", ":version", ":group", ":chain", ":deltas")]
        blobs = SQLiteStore(folder / "state" / "feed_state.sqlite").get_many(keys)
        store.put_many({k: v for k, v in zip(keys, blobs, strict=True) if v is not None})  # type: ignore[attr-defined]
        worker = subprocess.Popen([sys.executable, __file__, "--work", namespace], env=env)
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(folder), str(port), namespace, str(args.processes)],
        env=env,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health/ready", server, 300)
        startup_rss = rss(server.pid)[0]
        asyncio.run(drive(port, 50, 4, 8, 2_000))  # warm-up
        before = stage_means(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
        pids = family(server.pid)
        cpu_before, client_cpu = [cpu_s(pid) for pid in pids], time.process_time()
        worker_before = cpu_s(worker.pid) if worker is not None else 0.0
        redis_before = redis_cpu_s() if worker is not None else 0.0
        latencies, errors = asyncio.run(drive(port, args.rps, duration, args.concurrency, 2_000))
        cpu_each = [cpu_s(pid) - before for pid, before in zip(pids, cpu_before, strict=True)]
        worker_run = cpu_s(worker.pid) - worker_before if worker is not None else 0.0
        redis_run = redis_cpu_s() - redis_before if worker is not None else 0.0
        server_cpu, client_cpu = sum(cpu_each), time.process_time() - client_cpu
        after = stage_means(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
        if family(server.pid) != pids:
            raise SystemExit(f"the API's processes changed during the run: {pids} -> {family(server.pid)}")
        sizes = [rss(pid) for pid in pids]
        rss_sum = sum(now for now, _ in sizes)
        # one process: its RSS; several: their proportional set sizes summed (shared pages once)
        rss_now = sizes[0][0] if len(pids) == 1 else pss_mb(pids)
        rss_peak = max(peak for _, peak in sizes)
        worker_cpu = cpu_s(worker.pid) if worker is not None else 0.0
    finally:
        server.terminate()
        server.wait(timeout=30)
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
            bus, store = _redis_parts(namespace)
            bus.drop()  # type: ignore[attr-defined]
            store.drop()  # type: ignore[attr-defined]
    lat = np.asarray(latencies)
    p50, p95, p99 = (float(np.percentile(lat, q)) for q in (50, 95, 99))
    print(
        f"\n/v1/recommend at {args.rps:.0f} requests/s, {items:,} items: p50 {p50:.1f} ms, "
        f"p95 {p95:.1f} ms, p99 {p99:.1f} ms, errors {errors}; API resident {rss_now:.0f} MB "
        f"(peak of one process {rss_peak:.0f} MB, after start-up {startup_rss:.0f} MB)"
    )
    if len(pids) > 1:
        print("CPU seconds of each API process (the loader first):", [round(c, 1) for c in cpu_each])
        print(
            f"{len(pids) - 1} API processes forked from a loader: proportional set sizes summed "
            f"{rss_now:.0f} MB (their RSS summed, shared pages counted in each: {rss_sum:.0f} MB)"
        )
    sent = len(latencies)
    print(
        f"CPU per request: API {1e3 * server_cpu / sent:.2f} ms, "
        f"load generator {1e3 * client_cpu / sent:.2f} ms"
    )
    print("per stage, mean ms per request:")
    stages = {}
    for stage, (total, count) in after.items():
        b_total, b_count = before.get(stage, (0.0, 0.0))
        stages[stage] = 1e3 * (total - b_total) / max(count - b_count, 1)
        print(f"  {stage:11s} {stages[stage]:6.2f}")
    if worker is not None:
        print(f"worker process: {worker_cpu:.1f} CPU s in all")
        print(
            f"CPU per request during the load: worker {1e3 * worker_run / sent:.2f} ms, "
            f"Redis {1e3 * redis_run / sent:.2f} ms"
        )
    quick = " --quick" if args.quick else ""
    record(
        f"serving_load{quick}",
        {
            "items": items,
            "rps": round(args.rps),
            "topology": args.topology,
            "processes": args.processes,
            "p50_ms": round(p50, 1),
            "p95_ms": round(p95, 1),
            "p99_ms": round(p99, 1),
            "errors": errors,
            "rss_mb": round(rss_now),
            "rss_peak_mb": round(rss_peak),
            "rss_sum_mb": round(rss_sum),
            "api_cpu_ms_per_request": round(1e3 * server_cpu / len(latencies), 2),
            # the busiest API process's share of their CPU (1 / processes when evenly spread)
            "busiest_share": round(max(cpu_each) / max(server_cpu, 1e-9), 3),
        }
        | (
            {  # the separate topology's other processes on the same cores
                "worker_cpu_ms_per_request": round(1e3 * worker_run / len(latencies), 2),
                "redis_cpu_ms_per_request": round(1e3 * redis_run / len(latencies), 2),
            }
            if worker is not None
            else {}
        )
        | {f"{s}_ms": round(v, 2) for s, v in stages.items()},
        f"{duration:.0f} s open loop on loopback, n=20, 10% unknown users, IVF nprobe 16; "
        "server and load generator share the 2 cores",
    )


if __name__ == "__main__":
    main()
