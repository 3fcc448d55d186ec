"""ONNX Runtime's CPU execution provider: fp32 only (it has no bf16 kernels for these graphs)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

NAME = 'onnxruntime'
PACKAGES = ('onnxruntime',)  # what must be installed besides the exporter's
PRECISIONS = ('fp32',)


def lacks(precision: str) -> str | None:
    """Why this CPU cannot run ``precision`` natively (never: fp32 is all this backend runs)."""
    return None


def load(onnx: bytes, precision: str, threads: int) -> Callable[[np.ndarray], list[np.ndarray]]:
    """A function running the ONNX graph on ``B x C x H x W`` float32 images with ``threads`` intra-op threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    # Idle pool threads sleep instead of spinning, so the pipeline's post-processing gets the core meanwhile.
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    options.log_severity_level = 3  # errors only: its warnings about unused initializers are noise
    session = onnxruntime.InferenceSession(onnx, options, providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: images})
