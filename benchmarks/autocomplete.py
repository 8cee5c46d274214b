"""Autocomplete over a generated search log of ``--queries`` distinct queries (1M by default).

The log is generated over a real vocabulary (``recstack.data.queries``: MovieLens-100k titles and
genres, the words of the Davidson tweets; every query searched once, as many events again by Zipf
popularity, users repeating their own queries), spread over a week. Its last 5% of events is held
out.

Measured, each layout in the same run on the same keys:

- build time and bytes per key: the marisa-trie layout (``CompletionIndex``, the default), the
  sorted-array layout (``SortedArrayIndex``), Redis sorted sets (a ZSET of the top completions per
  busy prefix, the keys in one lexicographic ZSET and their scores in another; bytes from Redis's
  ``used_memory``), and ``marisa-trie`` holding the keys alone;
- in-process lookup p50 / p99 of the top 10 for prefixes of 1 to 8 characters of queries drawn from
  the log (Redis: the round trips from this process);
- freshness: from appending a new query's events to the embedded log until the API's autocomplete
  suggests it (the worker thread reading the log as `recstack serve` runs it);
- HTTP p99 of ``GET /v1/autocomplete`` at ``--rps`` requests/s, open loop on loopback, the API in
  its own process over the same log;
- suggestion quality: MRR of the held-out query among the top 10 for its first 1 to 5 characters,
  with and without the personal boost.

    .venv/bin/python benchmarks/autocomplete.py [--quick] [--queries N] [--rps N] [--no-redis]

Ends with ``RESULT queries=<n> p99_us=<x> http_p99_ms=<x> bytes_per_key=<x> marisa_bytes_per_key=<x>
freshness_s=<x>`` (and the other layouts and the MRR figures).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import DATA_DIR, record
from serving_load import open_loop

from recstack.autocomplete.index import SortedArrayIndex
from recstack.autocomplete.normalize import normalize
from recstack.autocomplete.service import Autocomplete
from recstack.config import AutocompleteConfig
from recstack.data.queries import distinct_queries, mean_reciprocal_rank, query_stream, vocabulary

KEY = "recstack-local"
START_S = time.time() - 7 * 86_400


def timed_lookups(complete: Any, prefixes: list[str]) -> tuple[float, float]:
    times = np.empty(len(prefixes))
    for i, prefix in enumerate(prefixes):
        started = time.perf_counter()
        complete(prefix, 10)
        times[i] = time.perf_counter() - started
    return float(np.percentile(times, 50) * 1e6), float(np.percentile(times, 99) * 1e6)


class RedisLayout:
    """Redis sorted sets: ``top:<prefix>`` (the top completions of a busy prefix, by score),
    ``keys`` (every query at score 0, for ZRANGEBYLEX) and ``scores`` (every query by score)."""

    def __init__(self, url: str, scores: dict[str, float], busy: dict[str, list[str]], scan: int) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.prefix = f"bench-ac-{os.getpid()}:"
        self.scan = scan
        self.client.delete(*self.client.keys(self.prefix + "*") or [self.prefix + "none"])
        before = int(self.client.info("memory")["used_memory"])
        started = time.perf_counter()
        pipe = self.client.pipeline(transaction=False)
        items = list(scores.items())
        for at in range(0, len(items), 10_000):
            part = dict(items[at : at + 10_000])
            pipe.zadd(self.prefix + "keys", dict.fromkeys(part, 0))
            pipe.zadd(self.prefix + "scores", part)
            pipe.execute()
        for prefix, top in busy.items():
            pipe.zadd(self.prefix + "top:" + prefix, {q: scores[q] for q in top})
        pipe.execute()
        self.build_s = time.perf_counter() - started
        self.nbytes = int(self.client.info("memory")["used_memory"]) - before

    def complete(self, prefix: str, n: int) -> list[tuple[str, float]]:
        top = self.client.zrevrange(self.prefix + "top:" + prefix, 0, n - 1, withscores=True)
        if top:
            return [(q.decode(), s) for q, s in top]
        found = self.client.zrangebylex(
            self.prefix + "keys", f"[{prefix}", f"[{prefix}\xff", start=0, num=self.scan + 1
        )
        if not found:
            return []
        values = self.client.zmscore(self.prefix + "scores", found)
        ranked = sorted(zip(found, values, strict=True), key=lambda kv: -(kv[1] or 0.0))[:n]
        return [(q.decode(), float(s or 0.0)) for q, s in ranked]

    def close(self) -> None:
        self.client.delete(*self.client.keys(self.prefix + "*") or [self.prefix + "none"])


def until_suggested(autocomplete: Autocomplete, started: float) -> float:
    """Seconds from ``started`` (perf_counter) until "zq fresh trend" is suggested (inf after 60)."""
    while not any(s.text == "zq fresh trend" for s in autocomplete.suggest("zq f")):
        if time.perf_counter() - started > 60:
            return float("inf")
        time.sleep(0.005)
    return time.perf_counter() - started


def freshness(folder: Path) -> float:
    """Seconds from appending a new query's events to the embedded log until the API's
    autocomplete (its in-process worker reading the log) suggests it."""
    from recstack.config import load_settings
    from recstack.events.parquet import ParquetEventLog
    from recstack.features.stores import MemoryStore
    from recstack.serving.api import Runtime

    settings = load_settings(None, {"RECSTACK_PATHS__STATE_DIR": str(folder)})
    log = ParquetEventLog(folder / "fresh-events")
    runtime = Runtime(settings, log, store=MemoryStore())
    runtime.start_background()
    try:
        now = time.time()
        events = [
            {
                "event_id": f"fresh{k}",
                "kind": "query",
                "timestamp": now,
                "query": "zq fresh trend",
                "user_id": "u",
            }
            for k in range(20)
        ]
        started = time.perf_counter()
        log.append(events)
        return until_suggested(runtime.autocomplete, started)
    finally:
        runtime.close()


def freshness_separate(folder: Path, url: str) -> float:
    """The same over the separate topology, the processes' own wiring on a live Redis: the events
    posted to the Redis bus, ``recstack worker``'s loop (``run_worker``, in a thread here) applies
    and publishes them with its checkpoint, and the API's runtime (``make_runtime``) suggests them
    after its next sync; the default ``[serving] state_sync_s`` for both."""
    import threading

    import redis

    from recstack.config import load_settings
    from recstack.serving.service import make_runtime, run_worker

    client = redis.Redis.from_url(url)
    stream = f"bench:{uuid.uuid4().hex[:8]}:events"

    def wipe() -> None:  # the state keys have a fixed prefix: this runs in a database of its own
        client.delete(stream, *(client.keys("recstack:serving:*") or [b"none"]))

    wipe()
    settings = load_settings(
        None,
        {
            "RECSTACK_PATHS__STATE_DIR": str(folder),
            "RECSTACK_EVENT_LOG__BACKEND": "redis",
            "RECSTACK_EVENT_LOG__REDIS_URL": url,
            "RECSTACK_EVENT_LOG__STREAM": stream,
            "RECSTACK_MONITORING__ENABLED": "false",
        },
    )
    stop = threading.Event()
    worker = threading.Thread(target=run_worker, args=(settings, stop), daemon=True)
    worker.start()
    runtime = make_runtime(settings)
    runtime.start_background()
    try:
        time.sleep(2.0)  # the worker's first checkpoint, the API's first sync
        events = [
            {"event_id": f"fresh{k}", "kind": "query", "timestamp": time.time(), "query": "zq fresh trend"}
            for k in range(20)
        ]
        started = time.perf_counter()
        runtime.bus.append(events)
        return until_suggested(runtime.autocomplete, started)
    finally:
        stop.set()
        worker.join(timeout=10)
        runtime.close()
        wipe()


def serve(folder: Path, port: int) -> None:
    """The API over the benchmark's log (the history counted as on a resumed worker state)."""
    import uvicorn

    from recstack.config import load_settings
    from recstack.events.parquet import ParquetEventLog
    from recstack.features.stores import MemoryStore
    from recstack.serving.api import Runtime, create_app

    settings = load_settings(None, {"RECSTACK_PATHS__STATE_DIR": str(folder)})
    runtime = Runtime(
        settings, ParquetEventLog(folder / "events"), store=MemoryStore(), in_process_worker=False
    )
    runtime.load_autocomplete()  # what `recstack serve` does on a resumed worker state
    print("ready", flush=True)
    uvicorn.run(create_app(runtime), host="127.0.0.1", port=port, log_level="warning", access_log=False)


async def drive(port: int, rps: float, duration: float, targets: list[str]) -> tuple[list[float], int]:
    latencies, errors, _ = await open_loop(port, rps, duration, 64, lambda i: targets[i % len(targets)])
    return latencies, errors


def http_p99(folder: Path, rps: float, duration: float, prefixes: list[str]) -> tuple[float, float, int]:
    import socket
    import urllib.parse

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(folder), "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise SystemExit("the API did not start")
        for _ in range(100):  # uvicorn binds after "ready"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        targets = [f"/v1/autocomplete?q={urllib.parse.quote(p)}&n=10" for p in prefixes]
        asyncio.run(drive(port, rps / 4, 3.0, targets))  # warm-up
        latencies, errors = asyncio.run(drive(port, rps, duration, targets))
        return float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99)), errors
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="50,000 queries, 5 s of HTTP load")
    parser.add_argument(
        "--queries", type=int, default=None, help="about this many distinct queries (default 1,000,000)"
    )
    parser.add_argument("--rps", type=float, default=1_000.0)
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis layout")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.port)
        return
    n = args.queries or (50_000 if args.quick else 1_000_000)
    phrases, words = vocabulary(DATA_DIR / "movielens-100k", DATA_DIR / "davidson_hate_offensive")
    # generated phrases that normalize alike or to stop words alone, and queries first searched in the
    # held-out tail, are not keys of the index: 40% more are generated, and `queries` reports the keys
    queries = distinct_queries(phrases, words, n + 2 * n // 5, seed=2026)
    stream = query_stream(queries, n, n_users=max(1_000, n // 20), start_s=START_S, seed=2026)
    cut = int(stream.table.num_rows * 0.95)
    history, held = stream.table.slice(0, cut), stream.table.slice(cut)
    print(
        f"{len(queries):,} distinct queries, {stream.table.num_rows:,} events ({cut:,} counted)", flush=True
    )

    cfg = AutocompleteConfig()
    ac = Autocomplete(cfg)
    started = time.perf_counter()
    ac.observe(history)
    count_s = time.perf_counter() - started
    started = time.perf_counter()
    ac.rebuild()
    build_s = time.perf_counter() - started
    index = ac.live.index
    scores = {key: float(index.scores[i]) for key, i in index.trie.items()}
    keys = len(scores)
    print(f"counted in {count_s:.1f} s; marisa layout built in {build_s:.1f} s", flush=True)

    import marisa_trie

    marisa_alone = len(marisa_trie.Trie(list(scores)).tobytes())
    started = time.perf_counter()
    array = SortedArrayIndex(scores, cfg.max_n, cfg.scan)
    array_build_s = time.perf_counter() - started

    rng = np.random.default_rng(7)
    sample = rng.choice(history.num_rows, 20_000 if args.quick else 100_000)
    texts = history.column("query").to_pylist()
    prefixes = []
    for i in sample:
        query = normalize(texts[int(i)])
        prefixes.append(query[: int(rng.integers(1, min(8, len(query)) + 1))])
    figures: dict[str, Any] = {"queries": keys}
    marisa_p50, marisa_p99 = timed_lookups(index.complete, prefixes)
    array_p50, array_p99 = timed_lookups(array.complete, prefixes)
    print(
        f"marisa layout: {index.nbytes / keys:.1f} bytes/key, "
        f"lookup p50 {marisa_p50:.1f} / p99 {marisa_p99:.1f} us"
    )
    print(
        f"sorted array: {array.nbytes / keys:.1f} bytes/key, p50 {array_p50:.1f} / p99 {array_p99:.1f} us, "
        f"built in {array_build_s:.1f} s"
    )
    print(f"marisa-trie alone: {marisa_alone / keys:.1f} bytes/key")
    figures |= {
        "p50_us": round(marisa_p50, 1),
        "p99_us": round(marisa_p99, 1),
        "bytes_per_key": round(index.nbytes / keys, 1),
        "marisa_bytes_per_key": round(marisa_alone / keys, 1),
        "build_s": round(build_s, 1),
        "array_p50_us": round(array_p50, 1),
        "array_p99_us": round(array_p99, 1),
        "array_bytes_per_key": round(array.nbytes / keys, 1),
        "array_build_s": round(array_build_s, 1),
    }
    if not args.no_redis:
        busy = {
            prefix: [index.trie.restore_key(int(i)) for i in np.frombuffer(packed, dtype=np.uint32)]
            for prefix, packed in index.hot.items()
        }
        layout = RedisLayout(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), scores, busy, cfg.scan)
        try:
            redis_p50, redis_p99 = timed_lookups(layout.complete, prefixes[:10_000])
            print(
                f"redis sorted sets: {layout.nbytes / keys:.1f} bytes/key, p50 {redis_p50:.1f} / "
                f"p99 {redis_p99:.1f} us, built in {layout.build_s:.1f} s"
            )
            figures |= {
                "redis_p50_us": round(redis_p50, 1),
                "redis_p99_us": round(redis_p99, 1),
                "redis_bytes_per_key": round(layout.nbytes / keys, 1),
                "redis_build_s": round(layout.build_s, 1),
            }
        finally:
            layout.close()

    held_sample = held.take(rng.choice(held.num_rows, 500 if args.quick else 2_000, replace=False))
    with_boost = mean_reciprocal_rank(ac.suggest, held_sample)
    plain = Autocomplete(AutocompleteConfig(personal_weight=0.0))
    plain.live, plain.users, plain.alphabet = ac.live, ac.users, ac.alphabet
    without = mean_reciprocal_rank(plain.suggest, held_sample)
    print(
        f"MRR of the held-out query (prefixes of 1-5 characters): {with_boost:.4f} with the personal boost, "
        f"{without:.4f} without"
    )
    figures |= {"mrr_personal": round(with_boost, 4), "mrr_plain": round(without, 4)}

    # the separate topology: the worker's snapshot of every count, and an API process loading it
    from recstack.autocomplete.sync import decode_counts, encode_counts

    started = time.perf_counter()
    blob = encode_counts(ac, "bench", 1)
    encode_s = time.perf_counter() - started
    started = time.perf_counter()
    meta, counts, users = decode_counts(blob)
    follower = Autocomplete(cfg)
    follower.restore(counts, meta["ref_s"], users, meta["watermark_us"], meta["half_life_s"])
    restore_s = time.perf_counter() - started
    print(
        f"separate topology: the counts' snapshot is {len(blob) / 1e6:.1f} MB "
        f"({len(blob) / keys:.1f} bytes/key, {len(users):,} users' queries), written in {encode_s:.1f} s, "
        f"loaded in {restore_s:.1f} s",
        flush=True,
    )
    figures |= {
        "snapshot_mb": round(len(blob) / 1e6, 1),
        "snapshot_encode_s": round(encode_s, 2),
        "snapshot_restore_s": round(restore_s, 2),
    }
    del follower, counts, users, blob

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fresh_s = freshness(folder)
        print(f"freshness: a new query suggested {fresh_s:.3f} s after its events were appended", flush=True)
        if not args.no_redis:
            url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0] + "/15"
            separate_s = freshness_separate(folder, url)
            print(
                f"freshness, separate topology over Redis: suggested {separate_s:.3f} s after the events "
                "were posted to the bus",
                flush=True,
            )
            figures["freshness_separate_s"] = round(separate_s, 3)
        from recstack.events.parquet import ParquetEventLog

        log = ParquetEventLog(folder / "events")
        for at in range(0, history.num_rows, 200_000):
            log.append_table(history.slice(at, 200_000))
        log.close()
        # this process holds millions of objects (the layouts, the log): a collection of them while
        # it drives the load would stall the generator and count as the API's latency
        import gc

        gc.collect()
        gc.freeze()
        gc.disable()
        http50, http99, errors = http_p99(folder, args.rps, 5.0 if args.quick else 30.0, prefixes[:5_000])
        gc.enable()
        print(f"HTTP at {args.rps:.0f} requests/s: p50 {http50:.2f} ms, p99 {http99:.2f} ms, {errors} errors")
    figures |= {
        "http_p50_ms": round(http50, 2),
        "http_p99_ms": round(http99, 2),
        "http_errors": errors,
        "freshness_s": round(fresh_s, 3),
    }
    head = ["queries", "p99_us", "http_p99_ms", "bytes_per_key", "marisa_bytes_per_key", "freshness_s"]
    ordered = {k: figures[k] for k in head} | {k: v for k, v in figures.items() if k not in head}
    record(
        "autocomplete" + (" --quick" if args.quick else ""),
        ordered,
        f"generated log over MovieLens-100k titles/genres and Davidson words, {2 * n:,} events, Zipf 1.05, "
        f"30% own repeats; top 10, scan {cfg.scan}; lookups of prefixes of 1-8 characters drawn from the "
        f"log; HTTP open loop at {args.rps:.0f}/s, API in its own process on the same 2 cores; goals "
        "p99 <= 50 us, HTTP p99 <= 5 ms, bytes/key <= 2x marisa alone",
    )


if __name__ == "__main__":
    main()
