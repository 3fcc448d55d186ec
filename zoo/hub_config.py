"""A published folder's ``config.json``: its schema, checked as a whole document before anything is built.

A ``config.json`` is data, never instructions. :class:`ConfigDocument` (pydantic, as the training recipes)
holds timm's keys (``save_config_for_hf``: the architecture, its arguments, the pretrained cfg with the
preprocessing timm reads) and the facts the zoo adds about the weights (``sha256``, input domain,
resolution). :func:`check_config` then allows only the architecture arguments of its family and bounds
every number in them. Anything that would say where weights or code come from is refused by name, and so
are values that are well-typed but meaningless (a zero ``std``, ``label_names`` that do not match the
classes, absurd sizes). Every problem is one :class:`~zoo.hub.ConfigError` line naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from timm.models import PretrainedCfg

from .hub import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, ConfigError, Sha256, WeightsError, document_error
from .io import refuse_special_file

__all__ = [
    'MAX_ARG',
    'MAX_MODEL_ELEMENTS',
    'WEIGHT_SOURCE_KEYS',
    'ConfigDocument',
    'check_config',
    'check_model_args',
    'check_pretrained_cfg',
    'load_config',
]

# pretrained_cfg entries that say where weights or code come from: a config.json may not set them.
WEIGHT_SOURCE_KEYS = ('url', 'file', 'state_dict', 'hf_hub_id', 'hf_hub_filename', 'source', 'custom_load')
# Bounds that keep a document from asking for absurd work: a 1e9-class head, a 6000x6000 input, a 1e9-wide
# layer (whole slides are streamed in tiles, zoo.slide). The model built from the arguments is bounded too,
# on the meta device before anything is allocated (zoo._builder).
_MAX_CHANNELS, _MAX_SIDE, _MAX_CLASSES = 16, 2048, 1_000_000
MAX_ARG = 65_536  # any other integer of model_args: widths, dims, depths, ranks
_MAX_ITEMS = 4096  # entries of a list or mapping in model_args (e.g. per-layer ranks)
MAX_MODEL_ELEMENTS = 2**31  # parameters and buffers of a model built from published arguments: 8 GiB in float32
_PRETRAINED_CFG_KEYS = frozenset(f.name for f in dataclasses.fields(PretrainedCfg))

Channels = Annotated[int, Field(ge=1, le=_MAX_CHANNELS)]
Side = Annotated[int, Field(ge=1, le=_MAX_SIDE)]
Classes = Annotated[int, Field(ge=0, le=_MAX_CLASSES)]


def _printable(text: str) -> str:
    if not text.isprintable():  # printed to a terminal by `zoo predict`: no escape sequences, no newlines
        raise ValueError(f'must be printable text, got {text!r} (it holds control characters)')
    return text


Label = Annotated[str, Field(max_length=1000), AfterValidator(_printable)]


class _Document(BaseModel):
    # strict: no silent conversions ('3' is not an int, 1 is not True); ints are accepted for floats.
    model_config = ConfigDict(extra='forbid', strict=True, allow_inf_nan=False)


class PretrainedCfgSection(_Document):
    """timm's pretrained cfg: the keys the zoo checks are typed, the other ``PretrainedCfg`` keys pass."""

    model_config = ConfigDict(extra='allow')
    input_size: tuple[Channels, Side, Side] | None = None
    test_input_size: tuple[Channels, Side, Side] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[Annotated[float, Field(gt=0)], ...] | None = None
    num_classes: Classes | None = None
    label_names: tuple[Label, ...] | None = None
    label_descriptions: dict[str, Label] | None = None


class ConfigDocument(_Document):
    """A published ``config.json``; :func:`check_config` adds the rules between keys and the architecture's."""

    architecture: str = Field(min_length=1)
    num_classes: Classes | None = None
    num_features: Annotated[int, Field(ge=0, le=MAX_ARG)] | None = None
    global_pool: str | None = None
    label_names: tuple[Label, ...] | None = None
    label_descriptions: dict[str, Label] | None = None
    model_args: dict[str, Any] = {}
    pretrained_cfg: PretrainedCfgSection
    sha256: Sha256 | None = None
    input_domain: str | None = None
    microns_per_pixel: Annotated[float, Field(gt=0, lt=1000)] | None = None


def check_pretrained_cfg(cfg: PretrainedCfgSection | Mapping[str, Any], where: str) -> None:
    """A pretrained cfg (a config.json's or a manifest entry's changes to the architecture's): timm's keys only,
    none that would say where weights or code come from, one mean and std per input channel."""
    if not isinstance(cfg, PretrainedCfgSection):
        try:
            cfg = PretrainedCfgSection.model_validate_json(json.dumps(cfg))
        except ValidationError as e:
            raise document_error(e, f'{where}: pretrained_cfg') from None
    unknown = sorted(set(cfg.model_extra) - _PRETRAINED_CFG_KEYS)
    if unknown:
        raise ConfigError(f"{where}: pretrained_cfg.{unknown[0]}: unknown key; timm's pretrained cfg has no such entry")
    for key in WEIGHT_SOURCE_KEYS:
        if cfg.model_extra.get(key):
            raise ConfigError(
                f'{where}: pretrained_cfg.{key} would say where weights or code come from; a published config.json '
                f'may not (the folder\'s own {WEIGHTS_NAME}, verified by "sha256", is the only source)'
            )
    if cfg.input_size is not None:
        for key in ('mean', 'std'):
            value = getattr(cfg, key)
            if value is not None and len(value) != cfg.input_size[0]:
                raise ConfigError(
                    f'{where}: pretrained_cfg.{key} = {list(value)} must be {cfg.input_size[0]} finite numbers, one '
                    f'per input channel'
                )


def _check_labels(document: ConfigDocument, where: str) -> None:
    cfg = document.pretrained_cfg
    classes = document.model_args.get('num_classes', document.num_classes)
    for key, labels, count in (
        ('label_names', document.label_names, classes),
        ('pretrained_cfg.label_names', cfg.label_names, cfg.num_classes if cfg.num_classes is not None else classes),
    ):
        if labels is not None and isinstance(count, int) and len(labels) != count:
            raise ConfigError(f'{where}: {key} has {len(labels)} names for {count} classes')


def _check_number(value: Any, key: str, where: str) -> None:
    """Bound every number of an architecture argument (nested lists and mappings included)."""
    if isinstance(value, (bool, str)) or value is None:
        return
    if isinstance(value, (int, float)):
        if not -MAX_ARG <= value <= MAX_ARG:  # False for NaN too
            raise ConfigError(f'{where}: {key} = {value!r} must be a number in [-{MAX_ARG}, {MAX_ARG}]')
        return
    items = value.items() if isinstance(value, Mapping) else enumerate(value) if isinstance(value, list) else None
    if items is None:
        raise ConfigError(f'{where}: {key} = {value!r} is not JSON data')
    if len(value) > _MAX_ITEMS:
        raise ConfigError(f'{where}: {key} has {len(value)} entries, more than {_MAX_ITEMS}')
    for k, v in items:
        _check_number(v, f'{key}[{k}]' if isinstance(k, int) else f'{key}.{k}', where)


# Architecture arguments with their own integer ranges; any other number is within +-MAX_ARG.
_INTEGER_ARGS = {'num_classes': (0, _MAX_CLASSES), 'in_chans': (1, _MAX_CHANNELS)}


def check_model_args(args: Mapping[str, Any], where: str, architecture: str, allowed_args: Collection[str]) -> None:
    """Architecture arguments of a document: only its family's, every number bounded."""
    for key, value in args.items():
        if key not in allowed_args:
            raise ConfigError(
                f'{where}: model_args.{key} is not an architecture argument of {architecture} '
                f'(allowed: {", ".join(sorted(allowed_args))})'
            )
        if key in _INTEGER_ARGS:
            low, high = _INTEGER_ARGS[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f'{where}: model_args.{key} = {value!r} must be an integer in [{low}, {high}]')
        else:
            _check_number(value, f'model_args.{key}', where)


def check_config(config: Any, where: str, allowed_args: Collection[str]) -> dict:
    """Validate a config.json's content; ``allowed_args`` are the architecture arguments of its family.

    Raises :class:`~zoo.hub.ConfigError` naming the file (``where``) and the first offending key; returns
    the config unchanged."""
    if not isinstance(config, Mapping):
        raise ConfigError(f'{where} must hold a JSON object, got {type(config).__name__}')
    try:
        document = ConfigDocument.model_validate_json(json.dumps(config))
    except (TypeError, ValueError) as e:  # not JSON data (json.dumps), or not this schema (ValidationError)
        raise (document_error(e, where) if isinstance(e, ValidationError) else ConfigError(f'{where}: {e}')) from None
    check_pretrained_cfg(document.pretrained_cfg, where)
    _check_labels(document, where)
    check_model_args(document.model_args, where, document.architecture, allowed_args)
    return dict(config)


def load_config(path: str | Path) -> tuple[Path, dict]:
    """The path and content of a ``config.json`` (``path`` is the file or its folder), not yet validated."""
    path = Path(path)
    if path.is_dir() or path.name != CONFIG_NAME:
        path = path / CONFIG_NAME
    refuse_special_file(path)
    try:
        return path, json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightsError(
            f'{path} does not exist: a published model folder holds {CONFIG_NAME}, {WEIGHTS_NAME} and {CARD_NAME}'
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f'{path} is not valid JSON: {e}') from None
