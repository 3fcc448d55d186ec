"""Fast inference: every zoo model on eager PyTorch, ONNX Runtime or OpenVINO, in fp32 or bf16, chosen per call.

:func:`compile` returns an :class:`InferenceModel`, called like the model itself (``B x C x H x W`` float32 images
in, logits or the segmenters' ``{'np', 'hv', 'tp'}`` dict out). ``zoo.segment``, ``zoo.slide.segment_slide``,
``zoo predict`` and ``zoo segment-slide`` take the same ``backend`` / ``precision`` choice. One file per concern:

* ``compiled.py``: :func:`compile` and :class:`InferenceModel`, the fallbacks (a backend not installed or unable
  to convert the model runs torch, with one :class:`InferenceWarning` line);
* ``onnx_export.py``: the ONNX export (``torch.onnx.export(dynamo=True)``, dynamic batch; one export per input
  size unless ``dynamic=True``);
* ``cache.py``: the export cache (``$ZOO_CACHE_DIR``; keyed by weights, architecture and size, written
  atomically under a lock, checked by sha256 when reused) and :func:`model_sha256`;
* ``backend_torch.py``, ``backend_onnxruntime.py``, ``backend_openvino.py``: running a model on each;
* ``auto.py``: ``backend='auto'``, timing the candidates on a probe batch and checking their outputs against
  eager fp32 (:data:`TOLERANCE`).

ONNX Runtime and OpenVINO come with the ``fast`` extra (``pip install 'cuttlefish-mrl-zoo[fast]'``); without it
everything runs on torch.
"""

from .auto import TOLERANCE
from .cache import cache_dir, model_sha256
from .compiled import BACKENDS, PRECISIONS, InferenceModel, available_backends, check_backend, compile
from .errors import InferenceError, InferenceWarning

__all__ = [
    'BACKENDS',
    'PRECISIONS',
    'TOLERANCE',
    'InferenceError',
    'InferenceModel',
    'InferenceWarning',
    'available_backends',
    'cache_dir',
    'check_backend',
    'compile',
    'model_sha256',
]
