"""Building zoo models: timm's ``build_model_with_cfg``, loading nothing but verified safetensors.

timm decides which weights a call names, exactly as it does for its own models: a registered tag's
``file`` / ``hf_hub_id`` / ``url``, a ``local-dir:PATH`` or ``hf-hub:ORG/NAME@REV`` folder whose
``config.json`` timm parsed, or the file given with ``pretrained_cfg_overlay=dict(file=...)``. The zoo adds
what timm does not do (:func:`build_zoo_model`):

* the sha256 the weights were published with is checked on every load: the manifest's for a registered tag
  (whose sources are tried in order, ``zoo.hub.fetch_weights``), otherwise the ``config.json`` next to the
  file (a file without one loads with a warning);
* a ``config.json`` is validated as data (``zoo.hub_config``) before anything is built from it, and files stay
  inside the folder named (symlinks included);
* the architecture is built on the meta device first whenever published arguments (a config.json's or a
  manifest entry's) apply, so arguments that do not build it or build an absurdly large model are a
  one-line ``ConfigError`` before any memory is allocated;
* tensor names and shapes are compared with that meta model; a mismatch is an error, never a silently
  re-initialised layer. The classifier (or the stem) may differ only when the caller asks for another
  ``num_classes`` (or ``in_chans``), which timm then adapts. Tensor values are data too: a non-floating
  tensor where the architecture has a floating one, or a NaN or infinite value, is refused naming the tensor;
* the architecture arguments published with the weights (e.g. Cuttlefish's per-layer ranks) are applied and
  recorded as the model's reconstruction arguments, so timm's ``save_for_hf`` / ``push_to_hf_hub`` export them.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import torch
from safetensors import safe_open
from timm.models import build_model_with_cfg, resolve_pretrained_cfg
from timm.models._input import update_model_args  # as timm's own model files record reconstruction args

from . import hub
from ._registry import (
    UnknownModelError,
    check_model_name,
    config_args,
    get_weights,
    list_weights,
    read_config,
    split_tag,
    timm_source_fields,
)
from .hub import CONFIG_NAME, WEIGHTS_NAME, ConfigError, Weights, WeightsError, WeightsShapeError
from .hub_config import MAX_MODEL_ELEMENTS, WEIGHT_SOURCE_KEYS
from .io import refuse_special_file
from .layers import factorize_

__all__ = ['build_zoo_model', 'check_weights_fit', 'create_model']

# build_model_with_cfg arguments that shape the wrapper or the cache, not the architecture.
_WRAPPER_KWARGS = ('features_only', 'out_indices', 'feature_cls', 'pretrained_model_args')
_PICKLE_SUFFIXES = ('.bin', '.pth', '.pt', '.tar', '.pkl', '.ckpt')
# Clears every source timm would otherwise prefer over the in-memory, verified state dict.
_NO_SOURCE = dict(source=None, file=None, url=None, hf_hub_id=None, hf_hub_filename=None, custom_load=False)


@dataclass
class _Located:
    """Weights a call names: the file, the sha256 they were published with (``None``: not recorded), the
    architecture arguments and facts published with them, and the document that says so (``where``)."""

    path: Path
    sha256: str | None
    name: str
    model_args: Mapping[str, Any] = field(default_factory=dict)
    input_domain: str | None = None
    microns_per_pixel: float | None = None
    where: str | None = None

    def shapes(self) -> dict[str, tuple]:
        try:
            with safe_open(str(self.path), framework='pt') as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for malformed headers
            raise WeightsError(f'{self.name}: {self.path} is not a readable safetensors file ({e})') from e

    def load(self) -> dict[str, torch.Tensor]:
        data = hub.read_verified(self.path, self.sha256, self.name)
        if self.sha256 is None:
            warnings.warn(
                f'{self.name}: {self.path} has no sha256 recorded next to it (no {CONFIG_NAME} with "sha256"); '
                f'it is loaded unverified. `zoo publish` records one.',
                stacklevel=4,
            )
        try:
            return safetensors.torch.load(data)
        except Exception as e:
            raise WeightsError(f'{self.name}: {self.path} is not a readable safetensors file ({e})') from e


def _folder_source(cfg: dict) -> hub.Source:
    """The folder timm parsed for a ``local-dir:`` or ``hf-hub:`` name."""
    if cfg.get('source') == 'local-dir':
        return hub.Source('local', str(Path(cfg['file']).expanduser().resolve()))
    return hub.parse_source(f'hf-hub:{cfg["hf_hub_id"]}')


def _folder_config(cfg: dict, cache_dir) -> Path:
    """The validated config.json of the folder timm parsed (its path)."""
    path = hub.fetch(_folder_source(cfg), CONFIG_NAME, cache_dir=cache_dir)
    read_config(path)
    return path


def _with_config(path: Path, config_path: Path, name: str) -> _Located:
    """Weights described by a published folder's config.json (its sha256 is that of the folder's
    model.safetensors, so another file name in the folder is not verified by it)."""
    config = read_config(config_path)
    sha256 = config.get('sha256') if path.name == WEIGHTS_NAME else None
    return _Located(
        path,
        sha256,
        name,
        config.get('model_args', {}),
        config.get('input_domain'),
        config.get('microns_per_pixel'),
        str(config_path),
    )


def _from_folder(source: hub.Source, filename: str, name: str, cache_dir) -> _Located:
    """Weights of a published folder (local or a Hugging Face repo), verified by its own config.json."""
    config_path = hub.fetch(source, CONFIG_NAME, cache_dir=cache_dir)
    return _with_config(hub.fetch(source, filename, cache_dir=cache_dir), config_path, name)


def _from_weights(weights: Weights, name: str, cache_dir) -> _Located:
    path = hub.fetch_weights(weights, name, cache_dir)
    return _Located(
        path, weights.sha256, name, weights.model_args, weights.input_domain, weights.microns_per_pixel, name
    )


def _from_file(path: Path, name: str) -> _Located:
    """A file a user named: verified by the config.json beside it, if there is one."""
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise WeightsError(
            f'{name}: {path} is a pickle checkpoint, which the zoo never loads; save the weights as safetensors '
            f'(safetensors.torch.save_file(model.state_dict(), "model.safetensors"))'
        )
    if path.is_dir():
        raise WeightsError(
            f'{name}: {path} is a folder; name its {WEIGHTS_NAME} (checkpoint_path={str(path / WEIGHTS_NAME)!r}), '
            f'or load the folder as "local-dir:{path}"'
        )
    refuse_special_file(path)
    if not path.is_file():
        raise WeightsError(f'{name}: {path} does not exist')
    if (path.parent / CONFIG_NAME).is_file():
        return _with_config(path, path.parent / CONFIG_NAME, name)
    return _Located(path, None, name)


def _locate(variant: str, cfg: dict, weights: Weights | None, cache_dir) -> _Located | None:
    """The weights ``cfg`` (timm's resolved pretrained cfg) names, or ``None`` when it names none."""
    key = f'{variant}.{cfg["tag"]}' if cfg.get('tag') else variant
    if weights is not None:
        return _from_weights(weights, key, cache_dir)
    if cfg.get('source') in ('local-dir', 'hf-hub'):
        source = _folder_source(cfg)
        return _from_folder(source, cfg.get('hf_hub_filename') or WEIGHTS_NAME, str(source), cache_dir)
    registered = get_weights(key)
    if registered is not None and _names_registered(cfg, registered):
        return _from_weights(registered, key, cache_dir)
    if cfg.get('file'):
        return _from_file(Path(cfg['file']).expanduser(), key)
    if cfg.get('hf_hub_id'):
        source = hub.parse_source(f'hf-hub:{cfg["hf_hub_id"]}')
        return _from_folder(source, cfg.get('hf_hub_filename') or WEIGHTS_NAME, str(source), cache_dir)
    if cfg.get('url'):
        raise WeightsError(
            f'{key}: refusing to download {cfg["url"]} without a sha256 to check it against; pass '
            f'weights=zoo.Weights(sources=URL, sha256=...)'
        )
    if cfg.get('state_dict') is not None:
        raise WeightsError(
            f'{key}: build the model with pretrained=False and call load_state_dict on tensors you '
            f'hold in memory; pretrained=True loads published files only'
        )
    return None


def _names_registered(cfg: dict, weights: Weights) -> bool:
    """Whether ``cfg`` still points at the registered weights (not at a file the caller named instead)."""
    return all(cfg.get(k) == v for k, v in timm_source_fields(weights).items())


def _ranks_to_factorize(requested: Mapping[str, int], published: Mapping[str, int], name: str) -> dict[str, int]:
    """The requested ranks of layers the weights hold dense; a layer they hold factorized keeps its rank."""
    changed = sorted(k for k, rank in published.items() if requested.get(k) != rank)
    if changed:
        asked = {k: requested.get(k) for k in changed}
        raise WeightsShapeError(
            f'{name}: these weights hold {", ".join(f"{k} at rank {published[k]}" for k in changed)}; ranks can '
            f'factorize the layers they hold dense, not change those (asked: {asked})'
        )
    return {k: rank for k, rank in requested.items() if k not in published}


def check_weights_fit(model: torch.nn.Module, path: Path, name: str, ignore: tuple[str, ...] = ()) -> None:
    """Compare a safetensors file's tensor names and shapes with ``model``'s; raise listing every problem."""
    _check_shapes(_Located(Path(path), None, name).shapes(), model, name, path, ignore)


def _check_shapes(found: Mapping[str, tuple], model: torch.nn.Module, name: str, path, ignore=()) -> None:
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


def _build_on_meta(model_cls, variant: str, cfg: dict, kwargs: Mapping[str, Any], where: str | None):
    """The architecture on the meta device (no memory). With published arguments (``where`` names their
    document), arguments that do not build it, or build an absurdly large model, are a one-line error."""
    try:
        with torch.device('meta'):
            model = build_model_with_cfg(model_cls, variant, False, pretrained_cfg=cfg, **kwargs)
    except (ValueError, TypeError, KeyError) as e:
        if where is None:
            raise
        raise ConfigError(f'{where}: its model_args do not build {variant}: {" ".join(str(e).split())}') from None
    size = sum(t.numel() for t in model.state_dict().values())
    if where is not None and size > MAX_MODEL_ELEMENTS:
        raise ConfigError(
            f'{where}: its model_args build {variant} with {size:,} parameters and buffers, more than the '
            f'{MAX_MODEL_ELEMENTS:,} a published model may have'
        )
    return model


def check_weight_values(tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], name: str, path):
    """Weights are data: a floating tensor of ``expected`` (the architecture's state dict) needs floating values
    in ``tensors``, all of them finite; otherwise :class:`WeightsError` names ``name``, ``path`` and the tensor."""
    for key, tensor in tensors.items():
        model_tensor = expected.get(key)
        if model_tensor is not None and model_tensor.is_floating_point() and not tensor.is_floating_point():
            raise WeightsError(
                f'{name}: {path}: {key} holds {tensor.dtype} values where the architecture has {model_tensor.dtype}; '
                f'these are not trained weights of this model'
            )
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise WeightsError(
                    f'{name}: {path}: {key} holds {bad:,} NaN or infinite values of {tensor.numel():,}; the weights '
                    f'are damaged (or their training diverged)'
                )


def _as_names(value) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _adaptable(cfg: dict, kwargs: Mapping[str, Any], published_args: Mapping[str, Any]) -> tuple[str, ...]:
    """Layers timm may adapt instead of loading: the classifier when the caller asks for another
    ``num_classes`` (or a feature extractor), the stem when the caller asks for another ``in_chans``.
    Values that came with the weights (their config.json) must fit them."""

    def asked(key: str, published_value) -> bool:
        value = kwargs.get(key, published_value)
        return value != published_value and not (key in published_args and published_args[key] == value)

    ignore = ()
    if asked('num_classes', cfg['num_classes']) or kwargs.get('features_only'):
        ignore += _as_names(cfg.get('classifier'))
    if asked('in_chans', cfg['input_size'][0]):
        ignore += _as_names(cfg.get('first_conv'))
    return ignore


def build_zoo_model(
    model_cls: type[torch.nn.Module] | Callable,
    variant: str,
    pretrained: bool = False,
    weights: Weights | None = None,
    **kwargs,
) -> torch.nn.Module:
    """Build ``variant`` as timm's ``build_model_with_cfg`` does, with the zoo's weights handling (see the
    module docstring). ``weights`` names verified weights directly (e.g. ``Weights(sources=URL, sha256=...)``).
    ``device`` / ``dtype`` place the parameters, as for timm's own models."""
    if not isinstance(pretrained, bool):  # a string such as 'no' is true: it would load weights nobody asked for
        raise TypeError(f'pretrained must be True or False, got {pretrained!r}')
    requested = kwargs.pop('pretrained_cfg', None)
    overlay = kwargs.pop('pretrained_cfg_overlay', None)
    cache_dir = kwargs.pop('cache_dir', None)
    device, dtype = kwargs.pop('device', None), kwargs.pop('dtype', None)
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=requested, pretrained_cfg_overlay=overlay).to_dict()
    # The architecture arguments published with the weights (a folder's config.json model_args, which timm
    # has already merged into kwargs, or a manifest entry's) apply whenever those weights are loaded or named.
    published_args: Mapping[str, Any] = kwargs.get('pretrained_model_args') or {}
    where = None  # the document the published arguments come from
    located = None
    if pretrained:
        located = _locate(variant, cfg, weights, cache_dir)
        if located is None:
            tags = [split_tag(k)[1] for k in list_weights(variant)]
            raise WeightsError(
                f'No pretrained weights for {variant}; published tags: {tags or "none"}. Use pretrained=False for '
                f'a randomly initialised model.'
            )
        published_args, where = located.model_args, located.where
    elif weights is not None or isinstance(requested, str):
        named = weights or get_weights(f'{variant}.{cfg.get("tag")}')
        published_args = named.model_args if named is not None else {}
        where = f'{variant}.{cfg.get("tag")}' if weights is None else f'weights from {weights.sources[0]}'
    elif cfg.get('source') in ('local-dir', 'hf-hub'):
        where = str(_folder_config(cfg, cache_dir))  # validated as data even when no weights are loaded
    for key, value in published_args.items():
        kwargs.setdefault(key, value)

    state_dict = None
    svd_ranks = {}
    if pretrained:
        # Layers the weights hold dense that the caller asks to factorize load dense, then become the truncated
        # SVD of their weights: how a trained network is compressed (zoo.compress) and rebuilt to fine-tune it.
        asked_ranks = dict(kwargs.get('ranks') or {})
        svd_ranks = _ranks_to_factorize(asked_ranks, published_args.get('ranks') or {}, located.name)
        if svd_ranks:
            kwargs['ranks'] = {k: v for k, v in asked_ranks.items() if k not in svd_ranks}
    if pretrained or published_args:
        model_kwargs = {k: v for k, v in kwargs.items() if k not in _WRAPPER_KWARGS}
        reference = _build_on_meta(model_cls, variant, cfg, model_kwargs, where if published_args else None)
    if pretrained:
        found = located.shapes()
        _check_shapes(found, reference, located.name, located.path, _adaptable(cfg, kwargs, published_args))
        state_dict, expected = located.load(), reference.state_dict()
        check_weight_values(state_dict, expected, located.name, located.path)
        # timm drops the classifier whenever num_classes differs from the cfg's; a file whose head already fits
        # (e.g. a fine-tuned checkpoint of another class count) keeps it.
        head = {
            k: tuple(v.shape)
            for k, v in expected.items()
            if any(k.startswith(c + '.') for c in _as_names(cfg.get('classifier')))
        }
        if head and all(found.get(k) == shape for k, shape in head.items()):
            cfg = dict(cfg, num_classes=getattr(reference, 'num_classes', cfg['num_classes']))
    # timm adapts the head / stem and wraps feature extractors; it loads the verified tensors and nothing else.
    load_cfg = cfg if state_dict is None else dict(cfg, state_dict=state_dict, **_NO_SOURCE)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = build_model_with_cfg(model_cls, variant, pretrained, pretrained_cfg=load_cfg, **kwargs)
    if dtype is not None:
        model.to(dtype=dtype)
    # Where the weights came from, not a second copy of them.
    model.pretrained_cfg = model.default_cfg = {
        **model.pretrained_cfg,
        **{k: cfg.get(k) for k in WEIGHT_SOURCE_KEYS if k in cfg},
    }
    arch_args = {k: v for k, v in published_args.items() if k in config_args(variant)}
    if svd_ranks:
        factorize_(model, svd_ranks, init='svd')
        arch_args['ranks'] = asked_ranks
    update_model_args(model, **arch_args)  # what timm.models.save_for_hf exports as model_args
    model.input_domain = located.input_domain if located else None
    model.microns_per_pixel = located.microns_per_pixel if located else None
    return model


def create_model(
    name: str, pretrained: bool = False, checkpoint_path: str | Path | None = None, **kwargs: Any
) -> torch.nn.Module:
    """Create a zoo model: a registered name (``'cf_resnet18'``, ``'cf_resnet18_fmnist.cuttlefish'``) or a
    published folder (``'local-dir:/path'``, ``'hf-hub:org/name@rev'``), as ``timm.create_model`` does.

    ``checkpoint_path`` loads a safetensors file into the named architecture, verified against the sha256
    of the ``config.json`` beside it (the same as ``pretrained_cfg_overlay=dict(file=...)``). Unknown names
    raise ``UnknownModelError`` suggesting close matches; a malformed ``config.json`` raises ``ConfigError``
    before anything is built from it.
    """
    if not isinstance(name, str):
        raise TypeError(f"a model name is a string such as 'cf_resnet18' (see zoo.list_models()), got {name!r}")
    if name.startswith(('local-dir:', 'hf-hub:')):
        if checkpoint_path is not None:
            raise WeightsError(f'{name} names its own weights; do not pass checkpoint_path as well')
        folder = name.partition(':')[2]
        if name.startswith('local-dir:'):
            read_config(Path(folder).expanduser())  # names an architecture the zoo knows, and is valid data
        else:
            read_config(hub.fetch(hub.parse_source(name), CONFIG_NAME, cache_dir=kwargs.get('cache_dir')))
    else:
        check_model_name(name)
    if checkpoint_path is not None:
        kwargs['pretrained_cfg_overlay'] = dict(kwargs.get('pretrained_cfg_overlay') or {}, file=str(checkpoint_path))
        pretrained = True
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as e:
        if str(e).startswith('Unknown model'):
            raise UnknownModelError(f'{e}; see `zoo list` or zoo.list_models()') from None
        raise
