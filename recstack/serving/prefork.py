"""Several API processes on one port: load once, fork after loading.

One Python process serves requests one at a time (the funnel holds the GIL for most of a
request), so at a few hundred requests/s one process is a saturated core and its tail latency is
queueing. ``serve_processes`` loads the champion and the state once, freezes the heap, then forks
``processes`` children; the parent accepts on the port and hands each connection to the next
child in turn. The catalog and the model (hundreds of MB at 1M items, mostly NumPy buffers and frozen
objects) stay shared copy-on-write between them; each child runs its own background work
(impression flush, state sync, champion reload) exactly as a single ``recstack serve`` does. The
parent answers no request: it restarts a child that dies (from the image it loaded; the child then
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
import threading
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


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """The public listening socket, bound before forking (port 0 included); only the parent
    accepts from it (``serve_processes``)."""
    try:
        return socket.create_server((host, port), backlog=backlog)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from exc


class _Dispatcher:
    """The parent's accept loop (a thread): each new connection goes to the next process in turn,
    its descriptor sent over that process's channel (a Unix SOCK_SEQPACKET pair), as Node's
    cluster module schedules connections. Letting every process accept from the socket (or each
    listen with SO_REUSEPORT) spread keep-alive connections unevenly (by timing, or by hash), and
    the p99 followed the busier process."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.channels: dict[int, socket.socket] = {}  # slot -> the parent's end
        self.turn = 0
        self.lock = threading.Lock()

    def channel(self, slot: int) -> socket.socket:
        """A new channel for ``slot`` (before forking its process); returns the child's end."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with self.lock:
            old = self.channels.pop(slot, None)
            self.channels[slot] = parent
        if old is not None:
            old.close()
        return child

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # the socket was closed: stopping
                return
            with conn:
                self.hand_over(conn)

    def hand_over(self, conn: socket.socket) -> None:
        with self.lock:
            slots = sorted(self.channels)
            for k in range(len(slots)):
                slot = slots[(self.turn + k) % len(slots)]
                try:
                    socket.send_fds(self.channels[slot], [b"c"], [conn.fileno()])
                except OSError:  # that process is gone (or going): the next one
                    continue
                self.turn = (self.turn + k + 1) % len(slots)
                return
        log.warning("no API process to take a connection; closed it")


def _serve_channel(server: Any, channel: socket.socket) -> None:
    """In a child, once its uvicorn server has started: serve each connection the parent sends
    over ``channel`` with uvicorn's protocol, as its own listening socket would have. The parent
    gone (the channel closed) stops the server."""
    import asyncio

    loop = asyncio.get_running_loop()
    config = server.config
    channel.setblocking(False)

    def protocol() -> asyncio.Protocol:
        # what uvicorn's Server.startup builds for its listening sockets (uvicorn pinned)
        made: asyncio.Protocol = config.http_protocol_class(
            config=config, server_state=server.server_state, app_state=server.lifespan.state
        )
        return made

    starting: set[asyncio.Task[Any]] = set()

    def readable() -> None:
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(channel, 16, 64)
            except BlockingIOError:
                return
            except OSError:
                message, fds = b"", []
            if not message and not fds:  # the parent closed the channel
                loop.remove_reader(channel.fileno())
                server.should_exit = True
                return
            for fd in fds:
                conn = socket.socket(fileno=fd)
                conn.setblocking(False)
                task = loop.create_task(loop.connect_accepted_socket(protocol, conn))
                starting.add(task)  # referenced until done (the loop keeps only weak references)
                task.add_done_callback(starting.discard)

    loop.add_reader(channel.fileno(), readable)


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


def uvicorn_logging(access_log: bool) -> dict[str, Any]:
    """uvicorn's logging config with its own messages at warning and, with ``access_log``, one
    line per request (method, path, status) on stdout."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["uvicorn"]["level"] = "WARNING"
    config["loggers"]["uvicorn.error"] = {"level": "WARNING"}
    config["loggers"]["uvicorn.access"]["level"] = "INFO" if access_log else "WARNING"
    return config


def serve_processes(
    runtime: Runtime,
    app_factory: Callable[[Runtime], Any],
    sock: socket.socket,
    processes: int,
    access_log: bool = False,
) -> int:
    """Fork ``processes`` children serving ``app_factory(runtime)`` on the port ``sock`` holds
    (from ``listen``) and supervise them until SIGTERM/SIGINT; returns the exit status (0, or 1
    after a crash loop)."""
    import uvicorn

    tasks = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1
    if tasks > 1:  # threads do not survive fork (idle pool threads of the libraries, usually)
        log.info("forking with %d threads in the parent; they do not exist in the children", tasks)
    children: dict[int, tuple[int, float]] = {}  # pid -> (slot, start time)
    stopping = False

    dispatcher = _Dispatcher(sock)

    class ChannelServer(uvicorn.Server):
        """uvicorn with no listening socket of its own: connections come over the channel."""

        channel: socket.socket

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=[])
            _serve_channel(self, self.channel)

    def child(channel: socket.socket) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        sock.close()
        for other in dispatcher.channels.values():
            other.close()
        after_fork_in_child()
        runtime.after_fork()
        runtime.start_background()
        config = uvicorn.Config(
            app_factory(runtime), log_config=uvicorn_logging(access_log), access_log=access_log
        )
        server = ChannelServer(config)
        server.channel = channel
        try:
            server.run()
        finally:
            runtime.close()

    def spawn(slot: int) -> None:
        channel = dispatcher.channel(slot)
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                child(channel)
                status = 0
            except BaseException:
                log.exception("API process %d failed", os.getpid())
            finally:
                logging.shutdown()
                os._exit(status)
        channel.close()
        children[pid] = (slot, time.monotonic())

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
        for slot in range(processes):
            spawn(slot)
        accepting = threading.Thread(target=dispatcher.run, name="recstack-accept", daemon=True)
        accepting.start()
        log.info("%d API processes serving: %s", processes, sorted(children))
        while children:
            try:
                pid, code = os.wait()
            except ChildProcessError:
                break
            found = children.pop(pid, None)
            if found is None:
                continue
            slot, started = found
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
            spawn(slot)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes the accept loop (close alone would not)
        sock.close()
        for channel in dispatcher.channels.values():
            channel.close()
    return status


def _mark_dead(pid: int) -> None:
    if os.environ.get(METRICS_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def remove_metrics_folder(folder: Path | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
