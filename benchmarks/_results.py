"""Shared by the benchmark scripts: record a figure in benchmarks/RESULTS.md and print RESULT."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"  # the real data sets beside the repo


def record(benchmark: str, figures: dict[str, object], notes: str = "") -> None:
    """Append one row to RESULTS.md and print the RESULT line (the script's last line)."""
    command = " ".join([".venv/bin/python", os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    values = " ".join(f"{k}={v}" for k, v in figures.items())
    if not RESULTS.exists():
        RESULTS.write_text(
            "# Measured figures\n\nEvery row was appended by the script named in its command.\n\n"
            "| date (UTC) | benchmark | figures | machine | command | notes |\n"
            "|---|---|---|---|---|---|\n"
        )
    with RESULTS.open("a") as handle:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
        handle.write(f"| {stamp} | {benchmark} | {values} | {machine()} | `{command}` | {notes} |\n")
    print(f"RESULT {values}", flush=True)


def rss_mb() -> float:
    """This process's resident memory now, in MB (Linux /proc; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class PeakRSS:
    """Samples resident memory every 20 ms inside a ``with`` block; ``peak_mb`` is the highest seen."""

    def __init__(self) -> None:
        import threading

        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, rss_mb())
            self._stop.wait(0.02)

    def __enter__(self) -> PeakRSS:
        self.peak_mb = rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())


def bench_settings(env: dict[str, str]) -> Any:
    """recstack settings for a benchmark run: state in a fresh temporary folder, MLflow and progress
    bars off; ``env`` holds overrides spelled as the RECSTACK_<SECTION>__<KEY> variables."""
    import tempfile

    from recstack.config import load_settings

    base = {
        "RECSTACK_PATHS__STATE_DIR": tempfile.mkdtemp(),
        "RECSTACK_TRACKING__ENABLED": "false",
        "RECSTACK_TRAIN__PROGRESS": "false",
    }
    return load_settings(None, base | env)


def wait_until_up(url: str, process: Any, timeout_s: float = 300.0) -> None:
    """Poll ``url`` until it answers 200; exit if ``process`` (a Popen) dies or time runs out."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            raise SystemExit(f"{url} did not come up")
        time.sleep(0.3)


def peer_env(venv: Path, installs: list[list[str]]) -> Path | None:
    """The python of a peer's own virtual environment, created on first use by running each
    ``pip install`` argument list in turn; None (and a message) when that fails."""
    python = venv / "bin" / "python"
    if python.exists():
        return python
    print(f"creating the peer environment in {venv} (one time)")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        for args in installs:
            subprocess.run([str(python), "-m", "pip", "install", "-q", *args], check=True)
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"peer unavailable: {exc}")
        return None
    return python
