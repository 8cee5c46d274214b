"""Event ingestion over HTTP: ``POST /v1/events`` in batches, into the embedded Parquet log (the
worker consuming in the same process) or, with ``--bus redis``, into the Redis stream.

The API runs in its own process (uvicorn, one worker). The client posts ``--batches`` batches of
``--batch`` engagement events (valid, unique ids) from ``--clients`` concurrent connections and
counts the events the API accepted per second of wall time. Ends with ``RESULT events_per_s=<n>``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _results import record, wait_until_up  # noqa: E402

KEY = "recstack-local"


def serve(folder: Path, port: int, bus: str) -> None:
    import uvicorn

    from recstack.config import load_settings
    from recstack.features.stores import SQLiteStore
    from recstack.serving.api import Runtime, bus_for, create_app

    settings = load_settings(
        None,
        {
            "RECSTACK_PATHS__STATE_DIR": str(folder),
            "RECSTACK_EVENT_LOG__BACKEND": bus,
            "RECSTACK_EVENT_LOG__STREAM": f"recstack:bench:{uuid.uuid4().hex[:8]}",
            "RECSTACK_TRACKING__ENABLED": "false",
        },
    )
    runtime = Runtime(
        settings,
        bus_for(settings),
        store=SQLiteStore(folder / "state.sqlite"),
        in_process_worker=bus == "parquet",
    )
    runtime.start()
    try:
        uvicorn.run(create_app(runtime), host="127.0.0.1", port=port, log_level="warning", access_log=False)
    finally:
        drop = getattr(runtime.bus, "drop", None)
        if bus == "redis" and drop is not None:
            drop()


async def drive(port: int, batches: int, size: int, clients: int) -> tuple[int, float]:
    import httpx

    accepted = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for b in range(batches):
        queue.put_nowait(b)
    run = uuid.uuid4().hex[:8]

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal accepted
        while not queue.empty():
            b = queue.get_nowait()
            batch = [
                {
                    "event_id": f"{run}-{b}-{n}",
                    "kind": "click",
                    "timestamp": 1_795_000_000 + b,
                    "user_id": f"u{n % 977}",
                    "item_id": f"i{(b * size + n) % 5003}",
                }
                for n in range(size)
            ]
            response = await client.post("/v1/events", json=batch)
            response.raise_for_status()
            accepted += response.json()["accepted"]

    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": KEY}, timeout=60
    ) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        return accepted, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="40 batches")
    parser.add_argument("--batches", type=int, default=None)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--bus", choices=("parquet", "redis"), default="parquet")
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), int(args.serve[1]), args.serve[2])
        return
    batches = args.batches or (40 if args.quick else 400)

    folder = Path(tempfile.mkdtemp(prefix="recstack-ingest-"))
    port = 19_000 + os.getpid() % 1000
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(folder), str(port), args.bus])
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health/live", server, 120)
        asyncio.run(drive(port, 4, args.batch, 1))  # warm-up
        accepted, seconds = asyncio.run(drive(port, batches, args.batch, args.clients))
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
    rate = accepted / seconds
    print(
        f"{accepted:,} events accepted in {seconds:.1f} s: {rate:,.0f} events/s "
        f"({args.batch} per batch, {args.clients} clients, bus {args.bus})"
    )
    quick = " --quick" if args.quick else ""
    record(
        f"ingest_http{quick}",
        {
            "bus": args.bus,
            "batch": args.batch,
            "clients": args.clients,
            "events": accepted,
            "events_per_s": round(rate),
        },
        "POST /v1/events on loopback; API (with its in-process worker for parquet) and client share 2 cores",
    )


if __name__ == "__main__":
    main()
