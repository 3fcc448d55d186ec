"""timm's classifier API for the NCHW families whose head is global pooling + dropout + ``fc``."""

import torch
import torch.nn as nn
from timm.layers import create_classifier, get_device_dtype
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices

from .._arguments import check_count

__all__ = ['PooledClassifier']


class PooledClassifier(nn.Module):
    """Base for ``ResNet`` and ``VGG``.

    A subclass registers its modules in execution order (the order timm's feature extractor replays them
    in), with ``global_pool`` and ``fc`` last; lists its feature taps in ``feature_info``; calls
    ``_init_head``; and writes ``forward_features`` out (TorchScript cannot iterate over named children
    picked at run time). ``forward_intermediates`` and ``prune_intermediate_layers`` walk the registered
    modules, so they follow whatever ``forward_features`` runs; a test checks that both agree.
    """

    def _init_head(self, num_classes: int, global_pool: str, drop_rate: float, device=None, dtype=None) -> None:
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.global_pool, self.fc = create_classifier(
            self.num_features, num_classes, pool_type=global_pool, device=device, dtype=dtype
        )
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None):
        """A new ``fc`` for ``num_classes`` (0: none) on the model's device and dtype; the pooling changes
        only when ``global_pool`` is given (``''``: no pooling, ``forward`` returns the feature map)."""
        check_count('num_classes', num_classes, 0)
        pool_type = self.global_pool.pool_type if global_pool is None else global_pool
        self._init_head(num_classes, pool_type, self.drop_rate, **get_device_dtype(self))
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def _body(self) -> list[tuple[str, nn.Module]]:
        """The modules ``forward_features`` runs, in order: everything registered before the head."""
        names = list(self._modules)
        return [(name, self._modules[name]) for name in names[: names.index('global_pool')]]

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = 'NCHW',
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The ``feature_info`` maps (``indices`` as in timm: all if None, the last n if int, else positions)
        and, unless ``intermediates_only``, ``forward_features(x)``. There is no final norm (``norm`` is
        accepted for timm's API); ``stop_early`` stops after the last wanted map."""
        if output_fmt != 'NCHW':
            raise ValueError(f'{type(self).__name__} features are NCHW, got output_fmt={output_fmt!r}')
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        taps = {info['module']: i for i, info in enumerate(self.feature_info)}
        intermediates = []
        for name, module in self._body():
            if self.grad_checkpointing and isinstance(module, nn.Sequential) and not torch.jit.is_scripting():
                x = checkpoint_seq(module, x)
            else:
                x = module(x)
            if name in taps and taps[name] in take_indices:
                intermediates.append(x)
                if stop_early and taps[name] == max_index:
                    break
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Empty every module after the last wanted feature map (and drop the head) for a backbone."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        body = [name for name, _ in self._body()]
        for name in body[body.index(self.feature_info[max_index]['module']) + 1 :]:
            setattr(self, name, nn.Sequential())  # empty, not Identity, so checkpoint_seq can iterate it
        pruned_end = max_index < len(self.feature_info) - 1
        if pruned_end:
            self.num_features = self.feature_info[max_index]['num_chs']
        if prune_head or pruned_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0.0:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
