"""PyTorch itself (eager): the reference every other backend is checked against, on any device; bf16 through
autocast (emulated, and slow, on CPUs without bf16 instructions)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

NAME = 'torch'
PACKAGES = ()
PRECISIONS = ('fp32', 'bf16')


def lacks(precision: str) -> str | None:
    """Why this CPU cannot run ``precision`` natively, or ``None``: without bf16 instructions (oneDNN's bf16
    path) torch emulates bf16, many times slower than fp32, so ``auto`` does not time it. Asked for by name, it
    still runs: the numbers are bf16's."""
    if precision == 'bf16' and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return 'this CPU has no bf16 instructions (torch emulates bf16)'
    return None


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside, in its own mode again after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def forward(model: torch.nn.Module, images: torch.Tensor, precision: str, threads: int):
    """``model(images)`` in eval mode under ``torch.inference_mode`` with ``threads`` intra-op threads; in bf16
    under autocast, the outputs cast back to float32 (the model's own output contract)."""
    previous = torch.get_num_threads()
    if threads != previous:
        torch.set_num_threads(threads)
    autocast = torch.autocast(images.device.type, torch.bfloat16) if precision == 'bf16' else contextlib.nullcontext()
    try:
        with eval_mode(model), torch.inference_mode(), autocast:
            outputs = model(images)
    finally:
        if threads != previous:
            torch.set_num_threads(previous)
    if precision == 'bf16':
        outputs = {k: v.float() for k, v in outputs.items()} if isinstance(outputs, dict) else outputs.float()
    return outputs
