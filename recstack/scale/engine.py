"""Ray as the engine of the heavy jobs once one machine is not enough (``[compute] engine = "ray"``).

The local path needs no Ray: nothing here imports it until a job asks for it. ``connect`` joins the
configured cluster (``[compute] address``) or starts a local Ray, after checking that the address
answers (``ray.init`` against an address nobody listens on waits for minutes). ``check_visible``
asks every node whether it sees the files a job will read (the workers read the event log's Parquet
files themselves, so the log must sit on storage every node mounts at the same path). ``job``
turns what Ray raises when workers keep dying into a RecstackError that says what was retried.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from recstack.config import ComputeConfig
from recstack.errors import RecstackError

log = logging.getLogger(__name__)

INSTALL = 'pip install "recstack[scale]" (or: pip install "ray[data,train]==2.60.0" torch==2.13.0)'


class EngineError(RecstackError):
    """The configured engine cannot run the job (Ray missing, a cluster out of reach, workers that
    cannot see the data, workers that kept dying)."""


def require_ray() -> ModuleType:
    """The ``ray`` module, or an EngineError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise EngineError(
            f"[compute] engine = 'ray' needs Ray, which is not installed here: {INSTALL}; or set "
            "[compute] engine = 'local' (the default, which needs no Ray)"
        ) from exc
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a cluster address, or None for ``auto`` (Ray finds the local cluster)."""
    if address == "auto":
        return None
    bare = address.removeprefix("ray://")
    host, _, port = bare.rpartition(":")
    if not host or not port.isdigit():
        raise EngineError(
            f"[compute] address = {address!r} is not host:port, ray://host:port or auto "
            "(leave it unset to start a local Ray)"
        )
    return host, int(port)


def reachable(address: str, timeout_s: float) -> None:
    """EngineError unless something accepts a connection at ``address`` within ``timeout_s``."""
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout_s):
            pass
    except OSError as exc:
        raise EngineError(
            f"cannot reach the Ray cluster at {address}: {exc} (waited up to {timeout_s:g} s, "
            "[compute] connect_timeout_s). Start it (`ray start --head` on its head node), fix "
            "[compute] address, or unset it to start a local Ray on this machine"
        ) from exc


def connect(compute: ComputeConfig) -> ModuleType:
    """Ray, initialized: the cluster at ``compute.address``, or a local Ray of ``compute.cpus`` CPUs.
    An already initialized Ray (a test's, a notebook's) is used as it is."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no telemetry from recstack's jobs
    try:
        quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
        if compute.address is None:
            ray.init(num_cpus=compute.cpus, include_dashboard=False, **quiet)
        else:
            reachable(compute.address, compute.connect_timeout_s)
            ray.init(address=compute.address, **quiet)
    except EngineError:
        raise
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = compute.address or "a local Ray"
        raise EngineError(f"cannot start or join {where}: {exc}") from exc
    _quiet_data()
    return ray


def _quiet_data() -> None:
    """Ray Data without its progress bars (recstack's commands print their own), raising what a
    task raised (a RecstackError that says what is wrong) instead of its own wrapper."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.raise_original_map_exception = True
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # Ray 2.60 warns that the remote options recstack passes to map_batches (max_retries) move to
    # named parameters in 2.64; the pinned version takes them as they are
    warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")


def cluster_cpus() -> int:
    ray = require_ray()
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def partitions(compute: ComputeConfig) -> int:
    """How many partitions the join and feature jobs cut their data into."""
    return compute.partitions or 2 * cluster_cpus()


def _missing(paths: Sequence[str]) -> tuple[str, list[str]]:
    return socket.gethostname(), [p for p in paths if not os.path.exists(p)]


def check_visible(paths: Sequence[str], what: str = "the event log") -> None:
    """EngineError naming the node and the files when a node of the cluster cannot see ``paths``
    (the driver saw them). One small task runs on every alive node."""
    ray = require_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0)(_missing)
    pending = [
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
            list(paths)
        )
        for node in ray.nodes()
        if node.get("Alive")
    ]
    for host, missing in ray.get(pending):
        if missing:
            raise worker_cannot_see(what, host, missing)


def worker_cannot_see(what: str, host: str, missing: Sequence[str]) -> EngineError:
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return EngineError(
        f"the Ray workers on {host} cannot see {what}: {shown}. Put it on storage every node mounts "
        "at the same path (a shared file system, or object storage), or run on a local Ray "
        "([compute] address unset)"
    )


@contextmanager
def job(name: str, compute: ComputeConfig) -> Iterator[None]:
    """Run a Ray job; a worker that kept dying after Ray's retries becomes an EngineError that
    says so (nothing the job would write has been written: every job writes after it finishes)."""
    require_ray()
    try:
        yield
    except RecstackError:
        raise
    except Exception as exc:
        raised = _purposeful(exc)
        if raised is not None:  # raised on purpose inside a task: as it is
            raise raised from None
        if not type(exc).__module__.startswith("ray"):
            raise
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # Ray colours its messages
        first = text.splitlines()[0] if text else type(exc).__name__
        raise EngineError(
            f"{name} failed on Ray after {compute.task_retries} retries of each task "
            f"([compute] task_retries): {type(exc).__name__}: {first}. Nothing was written; "
            "the job can be run again"
        ) from exc


def _purposeful(exc: BaseException) -> RecstackError | None:
    """The RecstackError a task raised, found through Ray's wrappers (``cause``, ``__cause__``)."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, RecstackError):
            return current
        todo += [getattr(current, "cause", None), current.__cause__, current.__context__]
    return None
