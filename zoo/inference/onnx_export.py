"""Exporting a model to ONNX, the graph both ONNX Runtime and OpenVINO load.

``torch.onnx.export(dynamo=True)`` (torch.export, then onnxscript's translation and optimizer) with a dynamic
batch. Heights and widths are fixed per export by default: a slide runs one tile size, a fixed-size graph exports
about 5x faster than one with symbolic sizes, and torch.export cannot reason about every model's size arithmetic
(``mrl_seg_*`` from a 64 px example fails in sympy). ``dynamic=True`` asks for symbolic heights and widths.
The legacy TorchScript exporter is not used: it is deprecated, and it silently bakes sizes computed in Python into
the graph (HoVer-Net's mirror padding came out wrong at other sizes).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import tempfile
import time
import warnings
from pathlib import Path

import torch

__all__ = ['EXPORT_BATCH', 'export_onnx', 'missing_exporter']

EXPORT_BATCH = 2  # the example's batch: a batch of 1 would be specialised as a constant, not a dimension
_INSTALL_HINT = "pip install 'cuttlefish-mrl-zoo[fast]'"


def missing_exporter() -> str | None:
    """Why models cannot be exported to ONNX here (a missing package), or ``None``."""
    for package in ('onnx', 'onnxscript'):
        try:
            importlib.import_module(package)
        except ImportError:
            return f'the ONNX export needs {package}, which is not installed ({_INSTALL_HINT})'
    return None


def export_onnx(model: torch.nn.Module, input_size: tuple[int, ...] | None) -> tuple[bytes, dict]:
    """The ONNX bytes of ``model`` (on the CPU, in eval mode: the caller sets it) and a record: its output names
    and whether the model returns a dict of them. ``input_size`` is ``(C, H, W)`` for a fixed-size export, or
    ``(C,)`` for symbolic heights and widths (exported from a 256 px example)."""
    channels, *size = input_size
    example = torch.rand((EXPORT_BATCH, channels, *(size or (256, 256))), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = model(example)
    names = list(outputs) if isinstance(outputs, dict) else ['output']
    dims = {0: torch.export.Dim('batch')}
    if not size:
        dims.update({2: torch.export.Dim('height'), 3: torch.export.Dim('width')})
    start = time.perf_counter()
    # The exporter narrates its steps on stdout and warns about internals; neither concerns the user.
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter('ignore')
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            optimize=True,
            verbose=False,
            dynamic_shapes=(dims,),
            input_names=['images'],
            output_names=names,
        )
        path = Path(tmp) / 'model.onnx'
        program.save(path, external_data=False)
        data = path.read_bytes()
    record = {
        'outputs': names,
        'dict': isinstance(outputs, dict),
        'input_size': [channels, *size] if size else [channels, 'height', 'width'],
        'torch': torch.__version__,
        'seconds': round(time.perf_counter() - start, 1),
    }
    return data, record
