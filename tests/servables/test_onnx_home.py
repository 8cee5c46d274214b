"""Serving writes nothing outside the state directory: ONNX Runtime's telemetry files under the
user's cache are turned off by the servable that opens sessions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_an_onnx_session_writes_nothing_under_the_home_directory(tmp_path: Path) -> None:
    home, cache = tmp_path / "home", tmp_path / "cache"
    home.mkdir()
    script = (
        "import torch, numpy as np\n"
        "from recstack.servables.onnx import export_onnx, open_session\n"
        f"path = __import__('pathlib').Path({str(tmp_path)!r}) / 'm.onnx'\n"
        "export_onnx(torch.nn.Linear(3, 1), (torch.zeros(2, 3),), ['x'], 'y', path)\n"
        "open_session(path).run(None, {'x': np.zeros((4, 3), dtype=np.float32)})\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env |= {"HOME": str(home), "XDG_CACHE_HOME": str(cache)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    written = [p for p in [*home.rglob("*"), *cache.rglob("*")] if p.is_file()]
    assert written == []
