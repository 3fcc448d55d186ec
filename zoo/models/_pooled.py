"""timm's classifier API for the NCHW families whose head is global pooling + dropout + ``fc``."""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import create_classifier
from timm.models import checkpoint_seq

__all__ = ['PooledClassifier']


class PooledClassifier(nn.Module):
    """Base for ``ResNet`` and ``VGG``: subclasses call ``_init_head`` and define ``stem``, ``stages()``
    and ``finish`` (what runs after the last stage); everything else in timm's API is shared here."""

    num_features: int

    def _init_head(self, num_classes: int, global_pool: str, drop_rate: float) -> None:
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.head_hidden_size = self.num_features
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def stages(self) -> list[nn.Sequential]:
        raise NotImplementedError

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = 'avg'):
        self._init_head(num_classes, global_pool, self.drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages():
            x = checkpoint_seq(stage, x) if self.grad_checkpointing and not torch.jit.is_scripting() else stage(x)
        return self.finish(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
