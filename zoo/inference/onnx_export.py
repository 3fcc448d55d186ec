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
import io
import logging
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = ['EXPORT_BATCH', 'PACKAGES', 'export_onnx']

EXPORT_BATCH = 2  # the example's batch: a batch of 1 would be specialised as a constant, not a dimension
PACKAGES = ('onnx', 'onnxscript')  # torch.onnx.export(dynamo=True) needs both


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter narrates its steps (stdout, INFO logs) and warns about its internals (sympy, guards); none of it
    concerns the user, whose one line is the export's result or failure."""
    loggers = [logging.getLogger(name) for name in ('torch', 'onnxscript', 'onnx_ir')]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter('ignore')
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export_onnx(model: torch.nn.Module, input_size: tuple[int, int, int], dynamic: bool) -> tuple[bytes, dict]:
    """The ONNX bytes of ``model`` (on the CPU, in eval mode: the caller sets it) and a record: its output names
    and whether the model returns a dict of them. The example input is ``input_size`` (``C x H x W``), and the
    export is for that size, or with ``dynamic`` for any height and width."""
    example = torch.rand((EXPORT_BATCH, *input_size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = model(example)
    names = list(outputs) if isinstance(outputs, dict) else ['output']
    dims = {0: torch.export.Dim('batch')}
    if dynamic:
        dims.update({2: torch.export.Dim('height'), 3: torch.export.Dim('width')})
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, _quiet():
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
        data = path.read_bytes() if dynamic else _explicit_ceil_padding(path.read_bytes())
    record = {
        'outputs': names,
        'dict': isinstance(outputs, dict),
        'input_size': [input_size[0], 'height', 'width'] if dynamic else list(input_size),
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
