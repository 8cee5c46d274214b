"""The API against its own OpenAPI document: schemathesis with every check and every phase
(examples, coverage, fuzzing, stateful), bounded for CI, finds nothing: no server error, no
undocumented status code, content type or body, no schema-valid request refused, the key enforced."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from recstack.serving.api import Runtime


@pytest.mark.slow
def test_schemathesis_with_all_checks_and_phases_finds_nothing(
    served: tuple[TestClient, Runtime, dict[str, Any]], tmp_path: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(served[0].app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the API did not come up"
        time.sleep(0.2)
    try:
        run = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "run",
                f"http://127.0.0.1:{port}/openapi.json",
                "--checks",
                "all",
                "--phases",
                "examples,coverage,fuzzing,stateful",
                "--max-examples",
                "15",
                "--seed",
                "2026",
                "-H",
                "X-API-Key: recstack-local",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
            check=False,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    summary = run.stdout[-4000:]
    assert run.returncode == 0, summary
    assert "No issues found" in run.stdout or "passed" in run.stdout, summary
