"""OpenVINO on the CPU: fp32, and bf16 (its ``INFERENCE_PRECISION_HINT``) on CPUs with bf16 instructions
(AVX512-BF16 or AMX). On other CPUs OpenVINO would silently run fp32 under a bf16 hint; the zoo says so."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np

NAME = 'openvino'
PACKAGES = ('openvino',)  # what must be installed besides the exporter's
PRECISIONS = ('fp32', 'bf16')
_HINT = {'fp32': 'f32', 'bf16': 'bf16'}  # set explicitly: OpenVINO's own default is bf16 on AMX CPUs


@cache
def _capabilities() -> tuple[str, ...]:
    import openvino

    return tuple(openvino.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))


def lacks(precision: str) -> str | None:
    """Why this CPU cannot run ``precision`` natively, or ``None``."""
    if precision == 'bf16' and 'BF16' not in _capabilities():
        return f'this CPU has no bf16 instructions (OpenVINO lists {", ".join(_capabilities())})'
    return None


def load(onnx: bytes, precision: str, threads: int) -> Callable[[np.ndarray], list[np.ndarray]]:
    """A function running the ONNX graph on ``B x C x H x W`` float32 images with ``threads`` threads."""
    import openvino

    core = openvino.Core()
    config = {'INFERENCE_PRECISION_HINT': _HINT[precision], 'PERFORMANCE_HINT': 'LATENCY'}
    compiled = core.compile_model(core.read_model(onnx), 'CPU', dict(config, INFERENCE_NUM_THREADS=threads))
    request = compiled.create_infer_request()

    def run(images: np.ndarray) -> list[np.ndarray]:
        results = request.infer({0: images})  # copies the outputs: the request reuses its buffers
        return [results[output] for output in compiled.outputs]

    return run
