"""ONNX in one place: exporting a PyTorch module with a dynamic batch dimension (training side) and
opening an ONNX Runtime session (serving side, no torch needed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# before ONNX Runtime starts: otherwise it writes a telemetry device id and database under
# ~/.cache/Microsoft/DeveloperTools, outside the state directory
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
import onnxruntime as ort


def export_onnx(module: Any, args: tuple[Any, ...], inputs: list[str], output: str, path: Path) -> None:
    """Export ``module(*args) -> output`` with dim 0 of every input and the output dynamic. The
    TorchScript-based exporter: deterministic and quick for these static graphs."""
    import torch

    torch.onnx.export(
        module.eval(),
        args,
        str(path),
        input_names=inputs,
        output_names=[output],
        dynamic_axes={name: {0: "batch"} for name in [*inputs, output]},
        opset_version=17,
        dynamo=False,
    )


def open_session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU session with ``threads`` intra-op threads (serving scores small batches per request)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
