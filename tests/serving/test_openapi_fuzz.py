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


def _small_safety_model(folder: Path) -> Any:
    """A real TF-IDF classifier fitted on a few made-up texts of each class (the contract is under
    test here, not the classifier), saved as the API loads it."""
    import numpy as np

    from recstack.safety.classifier import TfidfLogistic
    from recstack.safety.model import SafetyModel

    texts = [f"{word} {n}" for n in range(10) for word in ("vile slur", "damn idiot", "nice weather")]
    labels = np.array([0, 1, 2] * 10)
    classifier = TfidfLogistic(c=1.0).fit(texts, labels)
    SafetyModel(classifier, 0.9, 0.6, {"model": "tfidf_lr"}).save(folder)
    return lambda: ("1", folder)


@pytest.mark.slow
def test_schemathesis_with_all_checks_and_phases_finds_nothing(
    served: tuple[TestClient, Runtime, dict[str, Any]], tmp_path: Path
) -> None:
    served[1].safety_source = _small_safety_model(tmp_path / "safety")  # so /v1/moderate answers
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
