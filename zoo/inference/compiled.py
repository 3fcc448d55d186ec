"""The entry point: :func:`compile` a model for a backend and precision into an :class:`InferenceModel`, which is
called like the model itself."""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from . import backend_onnxruntime, backend_openvino, backend_torch
from .auto import choose_fastest
from .cache import cached_export, export_folder, model_name
from .errors import InferenceError, InferenceWarning
from .onnx_export import EXPORT_BATCH, export_onnx
from .onnx_export import PACKAGES as EXPORTER_PACKAGES

__all__ = ['BACKENDS', 'PRECISIONS', 'InferenceModel', 'available_backends', 'check_backend', 'compile']

_RUNTIMES = {runtime.NAME: runtime for runtime in (backend_torch, backend_onnxruntime, backend_openvino)}
BACKENDS = ('auto', *_RUNTIMES)
_EXPORTED = ('onnxruntime', 'openvino')  # the backends that run an ONNX export, on the CPU
PRECISIONS = ('fp32', 'bf16')


def _first_line(error: BaseException) -> str:
    """The error's type and first telling line (OpenVINO's messages open with the C++ files they passed through)."""
    lines = [line for line in str(error).splitlines() if line.strip() and not line.startswith('Exception from src/')]
    return f'{type(error).__name__}: {lines[0].strip()[:200] if lines else ""}'.rstrip(': ')


def _missing(backend: str) -> str | None:
    """Why ``backend`` cannot run here (a package not installed), or ``None``."""
    for package in _RUNTIMES[backend].PACKAGES + (EXPORTER_PACKAGES if backend in _EXPORTED else ()):
        try:
            importlib.import_module(package)
        except ImportError:
            return f"{package} is not installed (pip install 'cuttlefish-mrl-zoo[fast]')"
    return None


def available_backends() -> list[str]:
    """The backends whose packages are installed here (``torch`` always)."""
    return [backend for backend in _RUNTIMES if _missing(backend) is None]


def _export(model: torch.nn.Module, input_size: tuple[int, ...], dynamic: bool, cache_root: Path | None):
    """The model's ONNX export for ``input_size`` (``C x H x W``), from the cache or made now."""
    name = 'dynamic' if dynamic else 'x'.join(map(str, input_size[1:]))
    with backend_torch.eval_mode(model):
        return cached_export(export_folder(model, cache_root), name, lambda: export_onnx(model, input_size, dynamic))


class InferenceModel:
    """A model compiled for one backend and precision, called like the model: ``B x C x H x W`` float32 images in,
    the model's own outputs out (logits for a classifier, the ``{'np', 'hv', 'tp'}`` dict for a segmenter; CPU
    tensors from the ONNX backends).

    Attributes:
        model: the eager model, always run (and exported) in eval mode, whatever mode it is in; its weights
            are read when an input size is first exported, so compile again after changing them.
        backend, precision: what runs (after any fallback): ``'torch'``, ``'onnxruntime'`` or ``'openvino'``;
            ``'fp32'`` or ``'bf16'``.
        threads: intra-op threads of the backend.
        device: where inputs are computed (the CPU for the ONNX backends).
        dynamic: one export with symbolic height and width for every size it runs, instead of one per input
            size (a size the symbolic graph cannot run gets its own export).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        backend: str,
        precision: str,
        threads: int,
        dynamic: bool = False,
        cache_root: Path | None = None,
    ):
        self.model, self.backend, self.precision, self.threads = model, backend, precision, threads
        self.dynamic, self._cache_root = dynamic, cache_root
        self.device = next(model.parameters()).device if backend == 'torch' else torch.device('cpu')
        self._forwards: dict[tuple[int, ...], Callable] = {}  # per input size: images -> outputs
        self._dynamic_graph: Callable | None = None

    def __repr__(self) -> str:
        return f'InferenceModel({model_name(self.model)}, backend={self.backend!r}, precision={self.precision!r})'

    def __call__(self, images: torch.Tensor):
        if self.backend == 'torch':
            return backend_torch.forward(self.model, images, self.precision, self.threads)
        size = tuple(images.shape[1:])
        if size not in self._forwards:
            try:
                self.prepare(size)
            except Exception as e:  # torch.export, onnxscript and the runtimes fail in many types
                warnings.warn(f'{self._cannot(size, e)}; torch runs that size', InferenceWarning, stacklevel=2)
                self._forwards[size] = functools.partial(
                    backend_torch.forward, self.model, precision=self.precision, threads=self.threads
                )
        return self._forwards[size](images)

    def prepare(self, input_size: Sequence[int]) -> None:
        """Export (or take from the cache), load and try the graph for ``C x H x W`` inputs now; raises if the
        backend cannot run them."""
        size = tuple(input_size)
        if self.backend == 'torch' or size in self._forwards:
            return
        example = torch.rand((EXPORT_BATCH, *size), generator=torch.Generator().manual_seed(0))
        if self.dynamic:
            try:
                self._dynamic_graph = self._dynamic_graph or self._load(size, dynamic=True)
                self._dynamic_graph(example)  # OpenVINO checks a symbolic graph's shapes when it runs
                self._forwards[size] = self._dynamic_graph
                return
            except Exception as e:  # as in __call__
                self.dynamic = self._dynamic_graph is not None  # an export that failed is not tried again
                warnings.warn(f'{self._cannot(size, e)} with symbolic sizes; exporting that size', InferenceWarning)
        forward = self._load(size, dynamic=False)
        forward(example)
        self._forwards[size] = forward

    def _cannot(self, size: tuple[int, ...], error: BaseException) -> str:
        where = 'x'.join(map(str, size[1:]))
        return f'{self.backend} cannot run {model_name(self.model)} at {where} ({_first_line(error)})'

    def _load(self, input_size: tuple[int, ...], dynamic: bool) -> Callable:
        data, record = _export(self.model, input_size, dynamic, self._cache_root)
        run = _RUNTIMES[self.backend].load(data, self.precision, self.threads)
        names, as_dict = record['outputs'], record['dict']

        def forward(images: torch.Tensor):
            outputs = [torch.from_numpy(o) for o in run(images.detach().cpu().float().contiguous().numpy())]
            return dict(zip(names, outputs)) if as_dict else outputs[0]

        return forward


def check_backend(backend: str, precision: str) -> None:
    """Raise :class:`InferenceError` for a request that can never work: an unknown backend or precision, or a
    precision the backend does not run (checked before any work starts)."""
    if backend not in BACKENDS:
        raise InferenceError(f'unknown backend {backend!r}; choose one of {", ".join(BACKENDS)}')
    if precision not in PRECISIONS:
        raise InferenceError(f'unknown precision {precision!r}; choose one of {", ".join(PRECISIONS)}')
    if backend != 'auto' and precision not in _RUNTIMES[backend].PRECISIONS:
        raise InferenceError(
            f'{backend} runs {", ".join(_RUNTIMES[backend].PRECISIONS)} only; for {precision} choose openvino (on '
            'CPUs with bf16 instructions) or torch'
        )


def compile(
    model: torch.nn.Module,
    backend: str = 'auto',
    precision: str = 'fp32',
    *,
    input_size: Sequence[int] | None = None,
    batch_size: int = 8,
    dynamic: bool = False,
    threads: int | None = None,
    cache_dir: str | Path | None = None,
) -> InferenceModel:
    """``model`` ready for inference on a backend: a callable with the model's own output contract.

    Args:
        model: any zoo (or timm) model; it runs in eval mode, its own mode untouched.
        backend: ``'torch'`` (eager PyTorch, on any device), ``'onnxruntime'`` or ``'openvino'`` (exported to
            ONNX once, run on the CPU), or ``'auto'``: every installed backend (and precision, see below) timed
            on a ``batch_size x input_size`` probe, the fastest whose outputs stay within
            :data:`~zoo.inference.TOLERANCE` of eager fp32 taken, the choice and figures logged in one line
            (logger ``zoo.inference``).
        precision: ``'fp32'``, or ``'bf16'`` (torch autocast; OpenVINO on CPUs with bf16 instructions). ONNX
            Runtime runs fp32 only. With ``'auto'``, ``'bf16'`` lets bf16 candidates compete with fp32 ones.
        input_size: ``C x H x W`` of the inputs to prepare and probe (default: the model's
            ``pretrained_cfg['input_size']``); other sizes are exported when first seen.
        batch_size: the probe's batch for ``'auto'``.
        dynamic: one export with symbolic height and width instead of one per input size (slower to export;
            falls back to one per size where torch.export cannot express the model's size arithmetic).
        threads: intra-op threads of the backend (default: ``torch.get_num_threads()``).
        cache_dir: where exports are kept (default :func:`zoo.inference.cache_dir`).

    A backend that is not installed, or that cannot convert the model, falls back to torch with one
    :class:`InferenceWarning` line; so does OpenVINO's bf16 to fp32 on a CPU without bf16. A request that can never
    work (an unknown name, bf16 on ONNX Runtime, an ONNX backend for a model on a GPU) is an
    :class:`InferenceError`.
    """
    check_backend(backend, precision)
    device = next(model.parameters()).device
    if backend in _EXPORTED and device.type != 'cpu':
        raise InferenceError(
            f'{backend} runs on the CPU but the model is on {device}; move it there (model.cpu()) or use torch'
        )
    threads = threads or torch.get_num_threads()
    if backend == 'torch':
        return InferenceModel(model, 'torch', precision, threads)
    input_size = tuple(input_size or getattr(model, 'pretrained_cfg', {}).get('input_size') or ())
    if len(input_size) != 3:
        raise InferenceError(f'compile needs input_size=(C, H, W) for {model_name(model)}, got {input_size}')
    cache_root = Path(cache_dir) if cache_dir is not None else None
    if backend == 'auto':
        return _choose(model, precision, input_size, batch_size, threads, dynamic, cache_root)
    missing = _missing(backend)
    if missing:
        warnings.warn(f'{backend}: {missing}; running torch {precision}', InferenceWarning, stacklevel=2)
        return InferenceModel(model, 'torch', precision, threads)
    lacks = _RUNTIMES[backend].lacks(precision)
    if lacks:
        warnings.warn(f'{backend} {precision}: {lacks}; running {backend} fp32', InferenceWarning, stacklevel=2)
        precision = 'fp32'
    network = InferenceModel(model, backend, precision, threads, dynamic, cache_root)
    try:
        network.prepare(input_size)
    except Exception as e:  # torch.export, onnxscript and the runtimes fail in many types
        warnings.warn(f'{network._cannot(input_size, e)}; running torch', InferenceWarning, stacklevel=2)
        return InferenceModel(model, 'torch', precision, threads)
    return network


def _choose(model, precision, input_size, batch_size, threads, dynamic, cache_root) -> InferenceModel:
    device = next(model.parameters()).device
    candidates, notes = [], []
    for backend, runtime in _RUNTIMES.items():  # torch fp32 first: the reference
        missing = 'CPU only' if backend in _EXPORTED and device.type != 'cpu' else _missing(backend)
        if missing:
            notes.append(f'{backend}: {missing}')
            continue
        for p in ('fp32', 'bf16') if precision == 'bf16' else ('fp32',):
            if p not in runtime.PRECISIONS or (device.type == 'cpu' and runtime.lacks(p)):
                continue
            network = InferenceModel(model, backend, p, threads, dynamic, cache_root)
            try:
                network.prepare(input_size)
            except Exception as e:  # as in compile
                notes.append(f'{backend}: {_first_line(e)}')
                break
            candidates.append(network)
    probe = torch.rand((batch_size, *input_size), generator=torch.Generator().manual_seed(0)).to(device)
    return choose_fastest(candidates, probe, notes, model_name(model))
