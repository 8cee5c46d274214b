"""Several API processes on one port: load once, fork after loading.

One Python process serves requests one at a time (the funnel holds the GIL for most of a
request), so at a few hundred requests/s one process is a saturated core and its tail latency is
queueing. ``serve_processes`` loads the champion and the state once, freezes the heap, then forks
``processes`` children that listen on one port (SO_REUSEPORT: the kernel spreads connections
over them). The catalog and the model (hundreds of MB at 1M items, mostly NumPy buffers and frozen
objects) stay shared copy-on-write between them; each child runs its own background work
(impression flush, state sync, champion reload) exactly as a single ``recstack serve`` does. The
parent serves nothing: it restarts a child that dies (from the image it loaded; the child then
syncs to the current state and champion) and stops them all on SIGTERM or SIGINT.

Several processes need the separate worker (the Redis bus and state store): the state each
process serves from is the worker's snapshot, loaded every ``[serving] state_sync_s``. With the
embedded default the worker runs inside the one API process and owns the state there, so more than
one process is refused.

Metrics: Prometheus' multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``), so ``/metrics`` on any
process reports all of them. It must be set before ``prometheus_client`` is imported:
``multiprocess_metrics()`` does that (a fresh folder unless the variable is set already).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recstack.errors import ConfigError

if TYPE_CHECKING:
    from recstack.serving.api import Runtime

log = logging.getLogger(__name__)

METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
CRASH_WINDOW_S = 10.0  # a child that dies this soon after starting counts towards a crash loop
CRASH_LIMIT = 5  # consecutive early deaths after which the parent gives up


def check_processes(processes: int, separate_worker: bool) -> None:
    if processes < 1:
        raise ConfigError(f"[serving] processes must be at least 1, got {processes}")
    if processes > 1 and not separate_worker:
        raise ConfigError(
            f"[serving] processes = {processes} needs the separate worker (event_log backend = "
            '"redis", state in Redis, `recstack worker` running): with the embedded default the '
            "worker runs inside the one API process and owns the state there"
        )


def multiprocess_metrics() -> Path | None:
    """Point prometheus_client at a metrics folder shared by the processes (a fresh one unless
    PROMETHEUS_MULTIPROC_DIR is set). Call before anything imports prometheus_client; returns the
    folder this call created (to remove at exit), None when the variable was set already."""
    if os.environ.get(METRICS_ENV):
        return None
    if "prometheus_client" in sys.modules:
        raise RuntimeError("multiprocess_metrics() must run before prometheus_client is imported")
    folder = Path(tempfile.mkdtemp(prefix="recstack-metrics-"))
    os.environ[METRICS_ENV] = str(folder)
    return folder


def listen(host: str, port: int) -> socket.socket:
    """The port, bound before forking (so that it is known and taken, port 0 included) but not
    listening: each child listens on it with its own SO_REUSEPORT socket and the kernel spreads
    new connections over them evenly. (One listening socket shared by all would let whichever
    process is idle at the moment take each connection: keep-alive clients that connect together
    then stay skewed, one process saturated beside an idle one.)"""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except (OSError, AttributeError) as exc:  # AttributeError: no SO_REUSEPORT on this platform
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from exc
    return sock


def _listening(reserved: socket.socket, backlog: int = 2048) -> socket.socket:
    """A child's own listening socket on the reserved port."""
    sock = socket.socket(reserved.family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(reserved.getsockname()[:2])
    sock.listen(backlog)
    return sock


def prepare_parent() -> None:
    """Before loading what the children will share: FAISS searches on the calling thread only (one
    process per core is the parallelism; an OpenMP pool started before fork would not exist in a
    child, and GNU OpenMP can hang there)."""
    import faiss

    faiss.omp_set_num_threads(1)


def after_fork_in_child() -> None:
    """Drop connections inherited from the parent that must not be shared: SQLAlchemy pools
    (MLflow's registry keeps one engine per database for the process) are disposed without closing
    the parent's connections, as SQLAlchemy documents for forked processes. redis-py resets its
    pools on a pid change by itself."""
    for module in ("mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store"):
        store = getattr(sys.modules.get(module), "SqlAlchemyStore", None)
        for engine in list(getattr(store, "_engine_map", {}).values()):
            engine.dispose(close=False)


def serve_processes(
    runtime: Runtime,
    app_factory: Callable[[Runtime], Any],
    sock: socket.socket,
    processes: int,
    log_level: str = "warning",
) -> int:
    """Fork ``processes`` children serving ``app_factory(runtime)`` on the port ``sock`` holds
    (from ``listen``) and supervise them until SIGTERM/SIGINT; returns the exit status (0, or 1
    after a crash loop)."""
    import uvicorn

    tasks = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1
    if tasks > 1:  # threads do not survive fork (idle pool threads of the libraries, usually)
        log.info("forking with %d threads in the parent; they do not exist in the children", tasks)
    children: dict[int, float] = {}  # pid -> start time
    stopping = False

    def child() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        after_fork_in_child()
        own = _listening(sock)
        sock.close()
        runtime.after_fork()
        runtime.start_background()
        config = uvicorn.Config(app_factory(runtime), log_level=log_level, access_log=False)
        try:
            uvicorn.Server(config).run(sockets=[own])
        finally:
            runtime.close()

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                child()
                status = 0
            except BaseException:
                log.exception("API process %d failed", os.getpid())
            finally:
                logging.shutdown()
                os._exit(status)
        children[pid] = time.monotonic()

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    early_deaths = 0
    status = 0
    try:
        for _ in range(processes):
            spawn()
        log.info("%d API processes serving: %s", processes, sorted(children))
        while children:
            try:
                pid, code = os.wait()
            except ChildProcessError:
                break
            started = children.pop(pid, None)
            if started is None:
                continue
            _mark_dead(pid)
            if stopping:
                continue
            early_deaths = early_deaths + 1 if time.monotonic() - started < CRASH_WINDOW_S else 0
            if early_deaths >= CRASH_LIMIT:
                log.error("API processes keep dying at start (%d in a row); stopping", early_deaths)
                stop(signal.SIGTERM, None)
                status = 1
                continue
            log.warning("API process %d exited (status %d); starting another", pid, code)
            spawn()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    return status


def _mark_dead(pid: int) -> None:
    if os.environ.get(METRICS_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def remove_metrics_folder(folder: Path | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
