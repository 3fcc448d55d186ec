"""This process's place in a (possibly distributed) training job, from torchrun's environment."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ['DistContext']


class DistContext:
    """This process's place in the job, from torchrun's environment (a single process without it)."""

    def __init__(self, timeout_s: float):
        self.world_size = int(os.environ.get('WORLD_SIZE', 1))
        self.rank = int(os.environ.get('RANK', 0))
        self.local_rank = int(os.environ.get('LOCAL_RANK', 0))
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device('cuda', self.local_rank)
            torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
        else:
            self.device = torch.device('cpu')
        self.backend = 'nccl' if self.device.type == 'cuda' else 'gloo'
        self.timeout = timedelta(seconds=timeout_s)
        if self.world_size > 1 and not dist.is_initialized():
            # The timeout bounds every collective: a dead rank makes the others fail instead of hanging.
            dist.init_process_group(
                self.backend, timeout=self.timeout, device_id=self.device if self.device.type == 'cuda' else None
            )

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sums(self, values: dict[str, float]) -> dict[str, float]:
        if not self.distributed:
            return values
        keys = sorted(values)
        tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return dict(zip(keys, tensor.tolist()))

    def ranks_where(self, condition: bool) -> list[int]:
        """The ranks whose ``condition`` is true, known to every rank (collective), so that all ranks take the
        same branch, e.g. all stop when one cannot read a file."""
        if not self.distributed:
            return [0] if condition else []
        flags = torch.zeros(self.world_size, dtype=torch.int32, device=self.device)
        flags[self.rank] = int(condition)
        dist.all_reduce(flags)
        return flags.nonzero().flatten().tolist()

    def broadcast_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            tensor = tensor.to(self.device)
            dist.broadcast(tensor, 0)
        return tensor.cpu()
