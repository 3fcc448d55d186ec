"""Building zoo models: timm's ``build_model_with_cfg`` plus verified weights and per-weights arguments."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import safe_open
from timm.models import build_model_with_cfg, resolve_pretrained_cfg

from . import hub
from ._registry import check_model_name, get_weights, list_weights
from .hub import Weights, WeightsError, WeightsShapeError

__all__ = ['build_zoo_model', 'create_model', 'check_weights_fit']

# build_model_with_cfg arguments that shape the wrapper or the cache, not the architecture.
_WRAPPER_KWARGS = ('features_only', 'out_indices', 'feature_cls', 'cache_dir')
# pretrained_cfg fields that tell timm where or how to load weights; a published config.json may not set them.
_SOURCE_KEYS = (*hub.WEIGHT_SOURCE_KEYS, 'custom_load')


def _file_shapes(path: Path) -> dict[str, tuple]:
    with safe_open(str(path), framework='pt') as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def check_weights_fit(model: torch.nn.Module, path: Path, name: str, ignore: tuple[str, ...] = ()) -> None:
    """Compare the file's tensor names and shapes with the model's; raise listing every problem."""
    try:
        found = _file_shapes(path)
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise WeightsError(f'{name}: {path} is not a readable safetensors file ({e})') from e
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    def skipped(k):
        return any(k == p or k.startswith(p + '.') for p in ignore)

    problems = [
        f'{k}: file has {s}, model has {expected[k]}'
        for k, s in found.items()
        if k in expected and s != expected[k] and not skipped(k)
    ]
    problems += [f'unexpected {k} {s}' for k, s in found.items() if k not in expected and not skipped(k)]
    problems += [f'missing {k} {s}' for k, s in expected.items() if k not in found and not skipped(k)]
    if problems:
        shown = '\n  '.join(problems[:20]) + ('\n  ...' if len(problems) > 20 else '')
        raise WeightsShapeError(
            f'{name}: weights file {path} does not fit the architecture ({len(problems)} mismatches):\n  {shown}'
        )


def build_zoo_model(
    model_cls: type[torch.nn.Module] | Callable,
    variant: str,
    pretrained: bool = False,
    weights: Weights | None = None,
    **kwargs,
) -> torch.nn.Module:
    """Build ``variant`` like timm does, with the zoo's weights handling.

    * The tag's ``Weights.model_args`` (e.g. per-layer ranks) are applied as defaults when the
      weights are loaded or named by tag, so the architecture always matches its weights.
    * ``pretrained=True`` fetches the file, verifies its sha256, checks every tensor name and shape
      against the model (the classifier and input conv are exempt when ``num_classes``/``in_chans``
      are changed, as timm adapts them) and then lets timm load that file and no other source.
    * ``weights`` overrides the registry (e.g. weights you published yourself).
    """
    requested = kwargs.pop('pretrained_cfg', None)
    pretrained_cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=requested, pretrained_cfg_overlay=kwargs.pop('pretrained_cfg_overlay', None)
    )
    key = f'{variant}.{pretrained_cfg.tag}' if pretrained_cfg.tag else variant
    # The architecture follows the weights whenever weights are named ('arch.tag', weights=...) or
    # loaded; a bare name without pretrained=True is the plain (full-rank) architecture.
    named = weights is not None or isinstance(requested, str)
    weights = weights or get_weights(key)
    if weights is not None and (pretrained or named):
        for arg, value in weights.model_args.items():
            kwargs.setdefault(arg, value)
    model_args = {k: v for k, v in kwargs.items() if k not in _WRAPPER_KWARGS}
    overlay = None
    if pretrained:
        if weights is None:
            tags = [k.split('.', 1)[1] for k in list_weights(variant)]
            raise WeightsError(
                f'No pretrained weights for {key}; published tags: {tags or "none"}. '
                f'Use pretrained=False for a randomly initialised model.'
            )
        path = hub.fetch(weights.source, weights.sha256, name=key, cache_dir=kwargs.get('cache_dir'))
        ignore = []
        if kwargs.get('num_classes', pretrained_cfg.num_classes) != pretrained_cfg.num_classes or kwargs.get(
            'features_only'
        ):
            ignore += [c for c in as_tuple(pretrained_cfg.classifier)]
        if kwargs.get('in_chans', pretrained_cfg.input_size[0]) != pretrained_cfg.input_size[0]:
            ignore += [c for c in as_tuple(pretrained_cfg.first_conv)]
        with torch.device('meta'):
            reference = build_model_with_cfg(
                model_cls,
                variant,
                False,
                pretrained_cfg=pretrained_cfg.to_dict(),
                **{k: v for k, v in model_args.items()},
            )
        check_weights_fit(reference, path, key, tuple(ignore))
        # Only the verified file may be loaded: clear every other source timm would otherwise prefer.
        overlay = dict(
            file=str(path),
            source=None,
            url=None,
            hf_hub_id=None,
            hf_hub_filename=None,
            state_dict=None,
            custom_load=False,
        )
    pretrained_cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=pretrained_cfg.to_dict(), pretrained_cfg_overlay=overlay
    )
    kwargs.pop('cache_dir', None)
    model = build_model_with_cfg(model_cls, variant, pretrained, pretrained_cfg=pretrained_cfg.to_dict(), **kwargs)
    model.zoo_model_args = model_args  # what `zoo.hub.publish` writes as config.json "model_args"
    return model


def as_tuple(value) -> tuple:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _create_from_folder(source: str, pretrained: bool, **kwargs) -> torch.nn.Module:
    """``local-dir:PATH`` or ``hf-hub:ORG/NAME[@REV]``: architecture and arguments from its config.json."""
    if source.startswith('local-dir:'):
        folder = Path(source[len('local-dir:') :]).expanduser().resolve()
        weights_source = f'local:{folder}'
    else:
        weights_source = source
    config = hub.read_config(
        hub.fetch(weights_source, None, name=source, filename=hub.CONFIG_NAME, cache_dir=kwargs.get('cache_dir')).parent
    )
    architecture = check_model_name(config['architecture'])
    if 'sha256' not in config:
        raise WeightsError(
            f'{source}: config.json has no "sha256" of {hub.WEIGHTS_NAME}; publish it with zoo.hub.publish'
        )
    weights = Weights(source=weights_source, sha256=config['sha256'], model_args=config.get('model_args', {}))
    cfg = {k: v for k, v in config.get('pretrained_cfg', {}).items() if k not in _SOURCE_KEYS}
    cfg['architecture'] = architecture
    return timm.create_model(architecture, pretrained=pretrained, pretrained_cfg=cfg, weights=weights, **kwargs)


def create_model(name: str, pretrained: bool = False, **kwargs: Any) -> torch.nn.Module:
    """Create a zoo model by name (``'cf_resnet18'``, ``'cf_resnet18_fmnist.fmnist'``), or from a published
    folder (``'local-dir:/path'``) or Hugging Face repo (``'hf-hub:org/name@rev'``) written by
    ``zoo.hub.publish``. Unknown names raise ``UnknownModelError`` suggesting close matches."""
    if name.startswith(('local-dir:', 'hf-hub:')):
        return _create_from_folder(name, pretrained, **kwargs)
    check_model_name(name)
    return timm.create_model(name, pretrained=pretrained, **kwargs)
