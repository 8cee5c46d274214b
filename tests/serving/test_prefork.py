"""Several API processes forked after loading (``serving/prefork.py``), for real: two processes
over Redis answer on one port, /metrics adds up both, a killed process is replaced, SIGTERM stops
them all after flushing what they served."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from recstack.data.simulator import World
from recstack.errors import ConfigError
from recstack.serving.prefork import check_processes
from tests.serving.conftest import KEY, RedisFeed

ROOT = Path(__file__).resolve().parents[2]


def test_more_than_one_process_needs_the_separate_worker() -> None:
    check_processes(1, separate_worker=False)
    check_processes(2, separate_worker=True)
    with pytest.raises(ConfigError, match="needs the separate worker"):
        check_processes(2, separate_worker=False)
    with pytest.raises(ConfigError, match="at least 1"):
        check_processes(0, separate_worker=True)


def test_a_taken_port_is_a_clear_error() -> None:
    import socket

    from recstack.serving.prefork import listen

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            listen("127.0.0.1", port)


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _wait(what: str, check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _recommend_count(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith("recstack_request_seconds_count") and 'endpoint="/v1/recommend"' in line:
            return float(line.split()[-1])
    return 0.0


@pytest.mark.services
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads process children from /proc")
def test_forked_processes_share_a_port_report_together_and_are_replaced(
    redis_url: str, redis_feed: RedisFeed, feed_world: tuple[World, Path, Path], tmp_path: Path
) -> None:
    namespace, bus = redis_feed.namespace, redis_feed.bus  # the worker's snapshot is in its store
    port_file = tmp_path / "port"
    server = None
    try:
        logged = bus.table().num_rows
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.serving.prefork_server",
                redis_url,
                namespace,
                str(feed_world[2]),
                str(tmp_path / "state"),
                str(port_file),
            ],
            cwd=ROOT,
            env=os.environ | {"PROMETHEUS_MULTIPROC_DIR": ""},
        )
        _wait("the port", lambda: port_file.exists() and port_file.read_text())
        base = f"http://127.0.0.1:{port_file.read_text()}"
        _wait("readiness", lambda: httpx.get(f"{base}/health/ready").status_code == 200)
        first = _children(server.pid)
        assert len(first) == 2

        for n in range(30):  # a new connection each: the kernel hands them to either process
            reply = httpx.get(f"{base}/v1/recommend", params={"user_id": f"u{n}", "n": 5}, headers=KEY)
            assert reply.status_code == 200, reply.text
            assert len(reply.json()["items"]) == 5
        assert _recommend_count(httpx.get(f"{base}/metrics").text) == 30  # both processes, added up
        # each process flushes its served impressions to the bus on its own
        _wait("the impressions", lambda: bus.table().num_rows == logged + 30 * 5, timeout=10)

        os.kill(first[0], signal.SIGKILL)
        pid = server.pid
        _wait("a replacement", lambda: len(_children(pid)) == 2 and first[0] not in _children(pid))
        _wait(
            "readiness again",
            lambda: all(
                httpx.get(f"{base}/v1/recommend", params={"user_id": "u1"}, headers=KEY).status_code == 200
                for _ in range(6)
            ),
        )

        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        assert all(not Path(f"/proc/{pid}").exists() for pid in first[1:])
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.wait()
