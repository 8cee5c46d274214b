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


def export_onnx(
    module: Any,
    args: tuple[Any, ...],
    inputs: list[str],
    output: str,
    path: Path,
    dynamic: dict[str, dict[int, str]] | None = None,
) -> None:
    """Export ``module(*args) -> output`` with dim 0 of every input and the output dynamic (and the
    axes ``dynamic`` names besides, e.g. a sequence length). The TorchScript-based exporter:
    deterministic and quick for these static graphs."""
    import torch

    axes = {name: {0: "batch"} for name in [*inputs, output]}
    for name, more in (dynamic or {}).items():
        axes[name] = axes.get(name, {}) | more
    torch.onnx.export(
        module.eval(),
        args,
        str(path),
        input_names=inputs,
        output_names=[output],
        dynamic_axes=axes,
        opset_version=17,
        dynamo=False,
    )


def open_session(model: Path | bytes, threads: int = 1) -> ort.InferenceSession:
    """A CPU session with ``threads`` intra-op threads (serving scores small batches per request)
    over an ONNX file or its bytes."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
