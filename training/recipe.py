"""Recipes: YAML files describing a training run, typed (pydantic) and validated before any work starts.

A recipe names the model (any ``zoo`` architecture and its arguments), the task and its data, the
schedule (epochs, optimizer, learning rate, batch-size control), the distributed settings (2D-torus
or ring all-reduce, grid, timeouts) and the optional Cuttlefish switch. ``zoo train --recipe R
key.path=value ...`` overrides single values; values are parsed as YAML (``batch.stages=[[0,128],[10,256]]``
is a list), with ``1e-3`` read as a number as YAML 1.2 does (PyYAML's YAML 1.1 reads it as a string).

:class:`Recipe` holds the types, defaults and ranges of every fixed key. The free-form sections are
checked against what will consume them, so no list of their arguments is kept here: ``task.args``
against the constructor of the task class named in ``training.registry.TASKS``, a callback section such as
``cuttlefish`` against its class in ``training.registry.CALLBACKS`` (then built once, so its own checks
run), and ``model.args`` by building the model on the meta device (no memory, no weights). Every problem
is a :class:`RecipeError` with one line naming the key path (``optim.lr: must be greater than 0, got -1``).
"""

from __future__ import annotations

import copy
import difflib
import inspect
import re
import typing
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, TypeAdapter, ValidationError

from zoo.io import refuse_special_file

from .errors import RecipeError
from .registry import CALLBACKS, MODEL_TASKS, TASKS, load

__all__ = ['Recipe', 'RecipeError', 'load_recipe', 'apply_overrides', 'validate_recipe', 'bundled_recipes']


# --------------------------------------------------------------------------------------------- schema


class _Section(BaseModel):
    # strict: no silent conversions ('3' is not an int, 1 is not True); ints are accepted for floats.
    model_config = ConfigDict(extra='forbid', strict=True, allow_inf_nan=False)


PositiveInt = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(ge=0, lt=1)]
# [start_epoch, global batch]: a list in YAML and JSON, validated as a pair (strict mode wants a tuple).
Stage = Annotated[
    tuple[Annotated[int, Field(ge=0)], PositiveInt],
    BeforeValidator(lambda value: tuple(value) if isinstance(value, list) else value),
    PlainSerializer(list),
]


class ModelSection(_Section):
    name: str = Field(min_length=1)  # a zoo architecture, or 'local-dir:...' / 'hf-hub:...'
    args: dict[str, Any] = {}  # constructor arguments, checked by building the model on the meta device


class TaskSection(_Section):
    name: str = 'classification'  # a key of training.registry.TASKS
    args: dict[str, Any] = {}  # checked against that task class's constructor


class BatchSection(_Section):
    stages: list[Stage] = Field([(0, 128)], min_length=1)  # growing the batch is Sony's batch-size control
    base: PositiveInt = 128  # the global batch at which optim.lr is given
    rule: Literal['linear', 'smith'] = 'linear'  # lr ∝ batch, or grow the batch instead of decaying lr
    max_per_rank: PositiveInt | None = None  # cap per-rank micro-batch; the rest becomes gradient accumulation


class OptimSection(_Section):
    name: Literal['sgd', 'adamw'] = 'sgd'
    lr: float = Field(0.1, gt=0)
    momentum: Fraction = 0.9
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    betas: Annotated[list[Fraction], Field(min_length=2, max_length=2)] = [0.9, 0.999]
    clip_grad_norm: float | None = Field(None, gt=0)


class ScheduleSection(_Section):
    decay: Literal['step', 'cosine', 'constant'] = 'step'
    milestones: list[PositiveInt] = []  # epochs at which 'step' multiplies the lr by gamma; within epochs
    gamma: float = Field(0.1, gt=0, le=1)
    min_factor: float = Field(0.0, ge=0, le=1)  # where 'cosine' ends, as a fraction of the lr
    warmup_epochs: float = Field(0, ge=0)
    warmup_start: float = Field(0.1, ge=0, le=1)  # warmup starts at this fraction of the lr


class DistributedSection(_Section):
    allreduce: Literal['torus', 'ring'] = 'torus'  # 2D-torus DDP hook, or DDP's default ring all-reduce
    grid: Annotated[list[PositiveInt], Field(min_length=2, max_length=2)] | None = None  # [X, Y]; null: chosen
    bucket_cap_mb: float = Field(25, gt=0, le=2**20)  # DDP hands C++ int(bucket_cap_mb * 2**20) bytes (64 bits)
    timeout_s: float = Field(300, gt=0, le=10**7)  # a timedelta; 10**7 s is 115 days


class DataSection(_Section):
    workers: int = Field(0, ge=0, le=64)  # loader processes per rank, each with its own copy of the dataset
    eval_batch: PositiveInt = 256


class LogSection(_Section):
    tensorboard: bool = True
    progress: bool = True


class CheckpointSection(_Section):
    keep: PositiveInt = 2


class Recipe(_Section):
    """A training run. Cross-field rules (batch stages in order, milestones within ``epochs``, the model fitting
    the task) and the free-form sections are checked by :func:`validate_recipe`."""

    name: str | None = None  # default: the recipe file's stem
    description: str = ''
    seed: int = Field(0, ge=0, lt=2**63)  # torch's generators take 64-bit seeds, and each rank adds its rank
    epochs: int = Field(10, ge=1, le=100_000)  # resuming compares learning rates at every epoch
    model: ModelSection
    task: TaskSection = TaskSection()
    batch: BatchSection = BatchSection()
    optim: OptimSection = OptimSection()
    schedule: ScheduleSection = ScheduleSection()
    amp: Literal['auto', 'off', 'fp16', 'bf16'] = 'auto'  # auto: fp16/bf16 on CUDA, off on CPU
    distributed: DistributedSection = DistributedSection()
    # One section per training.registry.CALLBACKS entry: a mapping enables that callback with these arguments.
    cuttlefish: dict[str, Any] | None = None  # the stable-rank switch (training.cuttlefish)
    data: DataSection = DataSection()
    log: LogSection = LogSection()
    checkpoint: CheckpointSection = CheckpointSection()


# Keys of a run's saved recipe.yaml that are not recipe settings.
_RECORD_KEYS = ('source',)


# ---------------------------------------------------------------------------------------- messages


def _dotted(loc: Sequence[str | int]) -> str:
    return ''.join(f'[{part}]' if isinstance(part, int) else f'.{part}' for part in loc).lstrip('.')


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f'; did you mean {close[0]!r}?' if close else ''


def _unknown_key(key: str, known: Sequence[str], listed_as: str = 'known here') -> str:
    return f'unknown key; {listed_as}: {sorted(known)}{_did_you_mean(key, known)}'


def _schema_at(loc: Sequence[str | int]) -> Any:
    """The annotation of the field at ``loc`` in :class:`Recipe` (``None`` when it is not a field)."""
    annotation: Any = Recipe
    for part in loc:
        if isinstance(part, int):
            args = typing.get_args(annotation)
            annotation = args[0] if args else None
            continue
        model = _model_class(annotation)
        if model is None or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
    return annotation


def _model_class(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):  # X | None
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _literal_choices(annotation: Any) -> tuple | None:
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    return None


def _describe(error: dict, path: str) -> str:
    """One line for one pydantic error of :class:`Recipe`."""
    kind, value = error['type'], error.get('input')
    if kind == 'extra_forbidden':
        parent = _model_class(_schema_at(error['loc'][:-1]))
        return f'{path}: ' + _unknown_key(error['loc'][-1], list(parent.model_fields) if parent else [])
    if kind == 'missing':
        return f'{path}: missing (required)'
    choices = _literal_choices(_schema_at(error['loc']))
    if choices is not None:
        listed = ', '.join(repr(c) for c in choices)
        return f'{path}: {value!r} is not one of {listed}{_did_you_mean(value, choices)}'
    if kind in ('too_short', 'too_long'):
        length = error['ctx']['min_length' if kind == 'too_short' else 'max_length']
        return f'{path}: must have {"at least" if kind == "too_short" else "at most"} {length} items, got {value!r}'
    message = error['msg'].replace('Input should be', 'must be')
    return f'{path}: {message[0].lower()}{message[1:]}, got {value!r}'


def _first_error(e: ValidationError) -> RecipeError:
    errors = e.errors(include_url=False)
    first = errors[0]
    message = _describe(first, _dotted(first['loc']))
    more = len({tuple(err['loc']) for err in errors}) - 1
    return RecipeError(message + (f' (and {more} more problem{"s" * (more > 1)})' if more else ''))


# ------------------------------------------------------------------------------ free-form sections


def _annotation_text(annotation: Any) -> str:
    text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    return re.sub(r'\b(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_])', '', text)  # collections.abc.Sequence -> Sequence


def _check_arguments(cls: type, args: Mapping[str, Any], where: str) -> None:
    """Check ``args`` against the constructor of ``cls``: every key a parameter (with a suggestion when
    not), every required parameter given, every value of its annotated type. Nothing is built."""
    raw = inspect.signature(cls).parameters
    try:
        evaluated = inspect.signature(cls, eval_str=True).parameters
    except NameError:  # an annotation names a type imported for type checking only: check keys alone
        evaluated = {name: p.replace(annotation=inspect.Parameter.empty) for name, p in raw.items()}
    named = {n: p for n, p in evaluated.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if not any(p.kind is p.VAR_KEYWORD for p in evaluated.values()):
        for key in args:
            if key not in named:
                raise RecipeError(f'{where}.{key}: ' + _unknown_key(key, named, f'{cls.__name__} takes'))
    for name, parameter in named.items():
        if name not in args:
            if parameter.default is parameter.empty:
                raise RecipeError(f'{where}.{name}: missing; {cls.__name__} requires it')
            continue
        if parameter.annotation is parameter.empty:
            continue
        config = ConfigDict(arbitrary_types_allowed=True, allow_inf_nan=False)  # NaN and inf: as in the schema
        adapter = TypeAdapter(parameter.annotation, config=config)
        try:
            adapter.validate_python(args[name], strict=True)
        except ValidationError:
            expected = _annotation_text(raw[name].annotation)
            raise RecipeError(f'{where}.{name}: expected {expected}, got {args[name]!r}') from None


def _check_model(section: Mapping[str, Any], task: str, task_args: Mapping[str, Any]) -> None:
    """Build the model on the meta device: unknown names and arguments fail here, not after data loading."""
    import torch

    import zoo

    name, args = section['name'], section['args']
    if name.startswith('hf-hub:'):  # would download its config; checked when the trainer builds it
        return
    try:
        with torch.device('meta'):
            model = zoo.create_model(name, **args)
    except zoo.UnknownModelError as e:
        raise RecipeError(f'model.name: {e}') from None
    except (TypeError, ValueError) as e:
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if unexpected:
            raise RecipeError(f'model.args.{unexpected[1]}: {name} takes no such argument') from e
        raise RecipeError(f'model.args of {name} ({", ".join(args) or "none given"}): {e}') from e
    architecture = model.pretrained_cfg.get('architecture', name)
    trains = MODEL_TASKS[task] or MODEL_TASKS.get(task_args.get('task'))
    if trains is not None and zoo.model_task(architecture) != trains:
        fitting = ', '.join(n for n in zoo.list_models() if zoo.model_task(n) == trains)
        raise RecipeError(
            f'model.name: {name} is a model for {zoo.model_task(architecture)}, but task {task!r} trains models '
            f'for {trains}: {fitting}'
        )


def validate_recipe(recipe: Mapping[str, Any]) -> dict:
    """A complete recipe (every section present or defaulted) as a plain dict, or a :class:`RecipeError`."""
    if not isinstance(recipe, Mapping):
        raise RecipeError(f'a recipe must be a mapping of keys (epochs: 10, model: {{name: ...}}, ...), got {recipe!r}')
    try:
        checked = Recipe.model_validate(dict(recipe)).model_dump()
    except ValidationError as e:
        raise _first_error(e) from None
    epochs = checked['epochs']
    stages = checked['batch']['stages']
    starts = [start for start, _ in stages]
    # A stage may start after the last epoch: a finished run can be resumed with more epochs (its batch
    # schedule may not change), so a recipe can train the first part of a longer schedule.
    if starts[0] != 0 or starts != sorted(set(starts)):
        raise RecipeError(f'batch.stages: must start at epoch 0 with increasing epochs, got {stages}')
    milestones = checked['schedule']['milestones']
    if milestones != sorted(set(milestones)) or (milestones and milestones[-1] >= epochs):
        raise RecipeError(
            f'schedule.milestones: must be increasing epochs between 1 and {epochs - 1} (epochs is {epochs}), '
            f'got {milestones}'
        )
    task = checked['task']['name']
    if task not in TASKS:
        raise RecipeError(f'task.name: unknown task {task!r}; available: {sorted(TASKS)}{_did_you_mean(task, TASKS)}')
    _check_arguments(load(TASKS[task]), checked['task']['args'], 'task.args')
    for section, target in CALLBACKS.items():
        if checked.get(section) is not None:
            callback = load(target)
            _check_arguments(callback, checked[section], section)
            try:
                callback(**checked[section])  # its own checks (choices, conflicts); building it does no work
            except (TypeError, ValueError) as e:
                raise RecipeError(f'{section}: {e}') from None
    _check_model(checked['model'], task, checked['task']['args'])
    return checked


# ---------------------------------------------------------------------------------- files, overrides


class _Loader(yaml.SafeLoader):
    """PyYAML implements YAML 1.1, where ``1e-3`` (no dot) is a string; recipes read it as a number (YAML 1.2)."""


_Loader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$'),
    list('-+0123456789'),
)


def _parse_yaml(text: str, what: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, 'problem_mark', None)
        where = f' (line {mark.line + 1}, column {mark.column + 1})' if mark else ''
        problem = getattr(e, 'problem', None) or str(e).splitlines()[0]
        raise RecipeError(f'{what} is not valid YAML: {problem}{where}') from None


def bundled_recipes() -> dict[str, Path]:
    folder = resources.files('training') / 'recipes'
    return {p.stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith('.yaml')}


def _resolve(path_or_name: str) -> Path:
    path = Path(path_or_name)
    refuse_special_file(path)
    if path.is_file():
        return path
    bundled = bundled_recipes()
    if path.stem in bundled and not path.suffix:
        return bundled[path.stem]
    if path.is_dir():
        raise RecipeError(f'recipe {path_or_name!r} is a directory; give a recipe file (.yaml)')
    raise RecipeError(
        f'recipe {path_or_name!r} not found{_did_you_mean(path.stem, bundled)}; '
        f'bundled recipes: {", ".join(sorted(bundled))}'
    )


def _free_form(path: Sequence[str]) -> bool:
    """Inside a section whose keys are arguments of something else (checked by :func:`validate_recipe`)."""
    return tuple(path[:2]) in (('model', 'args'), ('task', 'args')) or path[0] in CALLBACKS


def apply_overrides(recipe: Mapping[str, Any], overrides: Sequence[str]) -> dict:
    """Apply ``key.path=value`` strings to a complete recipe; a key must exist unless it is inside a
    free-form section (``model.args``, ``task.args``, ``cuttlefish``). The result is not validated yet."""
    recipe = copy.deepcopy(dict(recipe))
    for item in overrides:
        key, sep, text = item.partition('=')
        parts = key.strip().split('.')
        if not sep or not all(parts):
            raise RecipeError(f'override {item!r} must look like key.path=value (e.g. optim.lr=0.05)')
        value = _parse_yaml(text, f'override {item!r}: the value {text!r}')
        node = recipe
        for i, part in enumerate(parts):
            if not isinstance(node, dict):
                raise RecipeError(f'override {key!r}: {".".join(parts[:i])} is not a section')
            if part not in node and not _free_form(parts[: i + 1]):
                where = '' if i == len(parts) - 1 else f'{".".join(parts[: i + 1])}: '
                raise RecipeError(f'override {key!r}: {where}' + _unknown_key(part, list(node)))
            if i == len(parts) - 1:
                node[part] = value
            else:
                if node.get(part) is None and _free_form(parts[: i + 1]):
                    node[part] = {}
                node = node[part]
    return recipe


def load_recipe(path_or_name: str, overrides: Sequence[str] = ()) -> dict:
    """Read a recipe (a path, or the name of a bundled one), validate it, apply ``key.path=value`` overrides
    and validate the result. Returns a plain dict with every key (defaults filled in), plus ``source``."""
    path = _resolve(path_or_name)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f'recipe {path} cannot be read: {e}') from None
    given = _parse_yaml(text, f'recipe {path}')
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise RecipeError(
            f'recipe {path} must be a mapping of keys (epochs: 10, model: {{name: ...}}, ...), '
            f'got a {type(given).__name__}'
        )
    for key in _RECORD_KEYS:  # a run's saved recipe.yaml records where it came from
        given.pop(key, None)
    try:
        recipe = validate_recipe(given)
    except RecipeError as e:
        raise RecipeError(f'recipe {path}: {e}') from None
    if overrides:
        recipe = validate_recipe(apply_overrides(recipe, overrides))
    recipe['name'] = recipe['name'] or path.stem
    recipe['source'] = str(path)
    return recipe
