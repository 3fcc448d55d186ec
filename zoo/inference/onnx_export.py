"""Exporting a model to ONNX, the graph both ONNX Runtime and OpenVINO load.

``torch.onnx.export(dynamo=True)`` (torch.export, then onnxscript's translation and optimizer) with a dynamic
batch. Heights and widths are fixed per export by default: a slide runs one tile size, a fixed-size graph exports
about 5x faster than one with symbolic sizes, and torch.export cannot reason about every model's size arithmetic
(``mrl_seg_*`` from a 64 px example fails in sympy). ``dynamic=True`` asks for symbolic heights and widths.
The legacy TorchScript exporter is not used: it is deprecated, and it silently bakes sizes computed in Python into
the graph (HoVer-Net's mirror padding came out wrong at other sizes).

In a fixed-size export, ceil-mode average pooling (MRL's regional tokens) becomes explicit end padding that is not
counted, the same numbers: OpenVINO refuses a pooling window larger than its input, which MRL's 7x7 regions are
on the 4x4 maps of a 128 px tile or a 28 px image.
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
        data = path.read_bytes() if not size else _explicit_ceil_padding(path.read_bytes())
    record = {
        'outputs': names,
        'dict': isinstance(outputs, dict),
        'input_size': [channels, *size] if size else [channels, 'height', 'width'],
        'torch': torch.__version__,
        'seconds': round(time.perf_counter() - start, 1),
    }
    return data, record


def _explicit_ceil_padding(data: bytes) -> bytes:
    """``data`` with every ceil-mode ``AveragePool`` without declared padding turned into a floor-mode one with
    uncounted end padding: the windows, and the real pixels each averages, are the same (PyTorch's ceil mode
    divides by the real pixels only, and never starts a window past the input)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load_from_string(data))
    shapes = {info.name: [d.dim_value for d in info.type.tensor_type.shape.dim] for info in model.graph.value_info}
    shapes.update({v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.input})
    for node in model.graph.node:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != 'AveragePool' or not attributes.get('ceil_mode') or any(attributes.get('pads', [])):
            continue
        if attributes.get('auto_pad', b'NOTSET') != b'NOTSET' or any(d != 1 for d in attributes.get('dilations', [])):
            continue
        sizes = shapes.get(node.input[0], [])[2:]
        kernel, strides = attributes['kernel_shape'], attributes.get('strides', [1] * len(sizes))
        if len(sizes) != len(kernel) or not all(sizes):
            continue  # sizes not known: leave the node as it is
        ends = []
        for size, k, s in zip(sizes, kernel, strides):
            count = -(-(size - k) // s) + 1  # ceil((size - k) / s) + 1 windows...
            count -= (count - 1) * s >= size  # ...none starting past the input
            ends.append(max(0, (count - 1) * s + k - size))
        del node.attribute[:]
        node.attribute.extend(
            [
                onnx.helper.make_attribute('kernel_shape', kernel),
                onnx.helper.make_attribute('strides', strides),
                onnx.helper.make_attribute('pads', [0] * len(sizes) + ends),
                onnx.helper.make_attribute('ceil_mode', 0),
                onnx.helper.make_attribute('count_include_pad', 0),
            ]
        )
    return model.SerializeToString()
