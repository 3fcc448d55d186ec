"""Cohorts: many slides over the processes and machines that torchrun and SLURM give (:func:`segment_slides`).

The same call runs in one process, under ``torchrun`` and as a SLURM job array, or a job array of torchruns:
worker ``k`` of ``n`` (:func:`worker_shard`) takes slides ``k, k + n, k + 2n...`` of the list. Nothing but the
output folder coordinates the workers, and only with files that are written whole:

* ``cohort.json``: the model (the sha256 of its weights) and the parameters; a run with others is refused.
* ``<stem>.slide.json``, a slide's record, written after its outputs: its figures (or its failure and the
  reason) and the sha256 of its outputs. A slide whose record says finished and whose outputs still match is
  skipped, so rerunning the same call after a crash, a preemption or with slides added does only what is
  missing; a slide cut off half-way resumes from its ``<stem>.tiles.sqlite``.
* ``cohort.csv``, the table (:func:`write_cohort_summary`), written by whichever worker records the last slide.
"""

from __future__ import annotations

import csv
import errno
import inspect
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .._arguments import check_count
from ..hub import sha256_file
from ..inference import model_sha256
from ..io import ImageReadError, atomic_write_bytes, refuse_special_file
from .errors import SlideError
from .reading import SLIDE_SUFFIXES
from .summary import RECORD_SUFFIX, SUMMARY_NAME, slide_figures, write_cohort_summary
from .whole_slide import _type_names, check_slide_arguments, segment_slide

COHORT_RECORD = 'cohort.json'
LIST_SUFFIXES = ('.txt', '.csv')
# segment_slide's options that say how a slide is run, not what comes out: they may differ between workers.
RUN_OPTIONS = ('workers', 'device', 'progress')


@dataclass
class CohortResult:
    """What one worker of :func:`segment_slides` did, and the cohort's table when it recorded the last slide.

    Attributes:
        shard: this worker's ``(index, count)``.
        slides: how many slides the cohort's list holds.
        share: this worker's slides; ``skipped`` those of them already finished.
        records: the records of the slides this worker segmented now (finished or failed).
        summary, summary_rows: ``cohort.csv`` and its rows when this worker recorded the last slide, else ``None``.
    """

    shard: tuple[int, int]
    slides: int
    share: list[Path]
    skipped: list[Path]
    records: list[dict]
    summary: Path | None
    summary_rows: list[dict] | None


def list_slides(sources: Sequence[str | Path], exclude: str | Path | None = None) -> list[Path]:
    """The slides of ``sources``, in their order and each once.

    A file is a slide whatever its name, except lists: ``.txt`` (a path per line; blank lines and ``#`` comments
    skipped) and ``.csv`` (a ``slide`` or ``path`` column), whose relative paths start from the list's folder.
    A folder gives every file in it and its subfolders named like a slide format :func:`open_slide` reads,
    hidden files and anything under ``exclude`` (the output folder) left out.
    """
    exclude = Path(exclude).resolve() if exclude is not None else None
    slides: dict[Path, Path] = {}
    for source in map(Path, sources):
        refuse_special_file(source)
        if source.is_dir():
            found = sorted(
                path
                for path in source.rglob('*')
                if path.suffix.lower() in SLIDE_SUFFIXES
                and not any(part.startswith('.') for part in path.relative_to(source).parts)
                and not (exclude and path.resolve().is_relative_to(exclude))
                and path.is_file()
            )
        elif source.suffix.lower() in LIST_SUFFIXES and source.is_file():
            found = _read_list(source)
        elif source.is_file():
            found = [source]
        else:
            raise FileNotFoundError(errno.ENOENT, 'no such slide, folder or list of slides', str(source))
        for path in found:
            slides.setdefault(path.resolve(), path)
    return list(slides.values())


def _read_list(path: Path) -> list[Path]:
    text = path.read_text(encoding='utf-8-sig')
    if path.suffix.lower() == '.txt':
        lines = (line.strip() for line in text.splitlines())
        entries = [line for line in lines if line and not line.startswith('#')]
    else:
        table = csv.DictReader(text.splitlines())
        column = next((name for name in table.fieldnames or () if name.strip().lower() in ('slide', 'path')), None)
        if column is None:
            raise SlideError(f'{path}: no "slide" or "path" column in its header ({table.fieldnames}); add one')
        entries = [row[column].strip() for row in table if (row[column] or '').strip()]
    return [path.parent / entry for entry in entries]


def _check_names(slides: Sequence[Path]) -> None:
    """Outputs are named after the slide's stem: two slides of one stem would write over each other."""
    seen: dict[str, Path] = {}
    for slide in slides:
        if slide.stem == Path(SUMMARY_NAME).stem:
            raise SlideError(f'{slide}: its nuclei table would overwrite the cohort table {SUMMARY_NAME}; rename it')
        first = seen.setdefault(slide.stem, slide)
        if first is not slide:
            raise SlideError(
                f'{first} and {slide} share the name {slide.stem!r}, so their outputs would overwrite each other; '
                'rename one, or segment them into separate output folders'
            )


def _environment_number(environ: Mapping[str, str], name: str, default: int | None, minimum: int) -> int:
    """The whole number in ``environ[name]``, ``default`` when it is not set (``None``: it must be set)."""
    text = environ.get(name)
    if text is None and default is not None:
        return default
    try:
        value = int(text)
    except (TypeError, ValueError):  # not set, or not a number
        value = None
    if value is None or value < minimum:
        got = 'it is not set' if text is None else f'got {text!r}'
        launcher = 'a SLURM job array' if name.startswith('SLURM') else 'torchrun'
        raise SlideError(
            f'${name} must be a whole number >= {minimum}, {got} (as {launcher} sets it); unset it to segment in '
            'one process'
        )
    return value


def worker_shard(environ: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """This process's place among a cohort's workers, ``(index, count)``: rank ``RANK`` of ``WORLD_SIZE``
    (torchrun) within task ``(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP`` of the
    ``SLURM_ARRAY_TASK_COUNT`` tasks of a SLURM job array; ``(0, 1)`` for a process on its own. A variable that
    is not a whole number in its range (or ``SLURM_ARRAY_TASK_COUNT`` missing beside ``SLURM_ARRAY_TASK_ID``)
    raises :class:`SlideError` naming it."""
    rank = _environment_number(environ, 'RANK', 0, 0)
    ranks = _environment_number(environ, 'WORLD_SIZE', 1, 1)
    if rank >= ranks:
        raise SlideError(f'$RANK must be below $WORLD_SIZE ({ranks}), got {rank}; both are set by torchrun')
    if 'SLURM_ARRAY_TASK_ID' not in environ:
        return rank, ranks
    task = _environment_number(environ, 'SLURM_ARRAY_TASK_ID', None, 0)
    first = _environment_number(environ, 'SLURM_ARRAY_TASK_MIN', 0, 0)
    step = _environment_number(environ, 'SLURM_ARRAY_TASK_STEP', 1, 1)
    tasks = _environment_number(environ, 'SLURM_ARRAY_TASK_COUNT', None, 1)
    position, gap = divmod(task - first, step)
    if gap or not 0 <= position < tasks:
        raise SlideError(
            f'SLURM array task {task} is not one of {tasks} tasks from {first} in steps of {step}; '
            'submit the array as a range, e.g. --array=0-9 or --array=0-9%4'
        )
    return position * ranks + rank, tasks * ranks


def _with_defaults(options: Mapping) -> dict:
    """segment_slide's keyword options, its defaults filled in; an option it does not take is refused."""
    defaults = {
        name: p.default for name, p in inspect.signature(segment_slide).parameters.items() if p.kind is p.KEYWORD_ONLY
    }
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f'segment_slides() takes the options of segment_slide ({", ".join(defaults)}), not {unknown}')
    return {**defaults, **options}


def _parameters(options: Mapping) -> dict:
    """What decides a slide's outputs: every option of segment_slide but ``RUN_OPTIONS``, as JSON reads it back."""
    chosen = {name: value for name, value in options.items() if name not in RUN_OPTIONS}
    return json.loads(json.dumps(chosen, default=str))  # as they read back from JSON (tuples as lists...)


def _claim_folder(out_dir: Path, identity: dict) -> None:
    """Record the cohort's model and parameters in ``cohort.json`` (once, by the first worker), or check that
    the recorded ones are these."""
    path = out_dir / COHORT_RECORD
    if not path.exists():
        fd, staging = tempfile.mkstemp(dir=out_dir, prefix=f'.{COHORT_RECORD}.')
        try:
            with os.fdopen(fd, 'w', encoding='utf-8') as file:
                json.dump(identity, file, indent=1, sort_keys=True)
                file.flush()
                os.fsync(file.fileno())
            os.link(staging, path)  # unlike a rename, fails if another worker created it meanwhile: first wins
        except FileExistsError:
            pass
        finally:
            os.unlink(staging)
    stored = json.loads(path.read_text(encoding='utf-8'))
    recorded = {'model_sha256': stored.get('model_sha256'), **stored.get('parameters', {})}
    for key, value in {'model_sha256': identity['model_sha256'], **identity['parameters']}.items():
        if recorded.get(key, 'not set') != value:
            raise SlideError(
                f'{out_dir} holds a cohort segmented with other settings ({key} was {recorded.get(key, "not set")}, '
                f'now {value}); choose another output folder, or the same model and options to continue that cohort'
            )


def _slide_file(slide: Path) -> dict | None:
    """What tells a slide file from another of the same name (as the tile store checks it)."""
    try:
        return {'name': slide.name, 'bytes': slide.stat().st_size}
    except OSError:
        return None


def _record_path(out_dir: Path, slide: Path) -> Path:
    return out_dir / f'{slide.stem}{RECORD_SUFFIX}'


def _is_finished(out_dir: Path, slide: Path, identity: dict) -> bool:
    """Its record says finished, by this model with these parameters, for this file, and its outputs are intact."""
    try:
        record = json.loads(_record_path(out_dir, slide).read_text(encoding='utf-8'))
        return (
            record['status'] == 'finished'
            and record['model_sha256'] == identity['model_sha256']
            and record['parameters'] == identity['parameters']
            and record['file'] == _slide_file(slide)
            and all(sha256_file(out_dir / name) == digest for name, digest in record['outputs'].items())
        )
    except (OSError, ValueError, KeyError):  # no record, a missing output, a record from another version
        return False


def _failure(error: Exception) -> str | None:
    """The one-line reason of a slide's failure that is not the zoo's fault; ``None`` for a bug."""
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return f'out of memory ({" ".join(str(error).split()) or "no detail"}); try a smaller batch size or tile'
    if isinstance(error, (SlideError, ImageReadError)) or (isinstance(error, OSError) and error.errno is not None):
        return ' '.join(str(error).split())
    return None


def _segment_one(model, slide: Path, out_dir: Path, options: dict, identity: dict) -> dict:
    """Segment one slide and return its record (a failure recorded with its reason, never raised)."""
    start = time.perf_counter()
    record = dict(slide=str(slide), file=_slide_file(slide), **identity)
    try:
        result = segment_slide(model, slide, out_dir, **options)
        if not result.tissue_tiles:
            raise SlideError(
                f'{slide}: no tissue found on its thumbnail; check the slide, or segment every tile '
                '(detect_tissue=False, --all-tiles)'
            )
        figures = slide_figures(slide, result, _type_names(model, options.get('type_names')))
    except Exception as error:  # one slide's failure must not stop the cohort
        status, reason = 'failed', _failure(error)
        if reason is None:  # a bug: its traceback goes to the log, the table gets its one line
            traceback.print_exc()
            status, reason = 'error', f'{type(error).__name__}: {" ".join(str(error).split())}'
        return dict(record, status=status, reason=reason, seconds=round(time.perf_counter() - start, 2))
    seconds = time.perf_counter() - start
    outputs = [result.geojson, result.csv, result.label_image, figures.pop('qc')]
    return dict(
        record,
        status='finished',
        reason='',
        **figures,
        seconds=round(seconds, 2),
        megapixels_per_s=round(result.megapixels / seconds, 4),
        outputs={path.name: sha256_file(path) for path in outputs if path is not None},
    )


def _model_name(model: torch.nn.Module) -> str:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return '.'.join(filter(None, (cfg.get('architecture'), cfg.get('tag')))) or type(model).__name__


def _log(line: str) -> None:
    """A line of the log, beside the bar on a terminal, at once (a killed worker's finished slides are in it)."""
    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


def _run_device(device):
    """``'cuda'`` means this process's GPU: the one of its ``LOCAL_RANK`` on the node."""
    if str(device) == 'cuda' and torch.cuda.is_available():
        local_rank = _environment_number(os.environ, 'LOCAL_RANK', 0, 0)
        return torch.device('cuda', local_rank % torch.cuda.device_count())
    return device


def segment_slides(
    model: torch.nn.Module | str,
    slides: Sequence[str | Path],
    out_dir: str | Path,
    *,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    **options,
) -> CohortResult:
    """Segment this worker's share of a cohort of slides with :func:`segment_slide`, skipping finished ones.

    Args:
        model: a segmentation net or the name of published weights, loaded once per process.
        slides: slide files, folders and lists of slides (see :func:`list_slides`).
        out_dir: the cohort's folder: each slide's outputs, record and QC thumbnail, and ``cohort.csv``.
        shard: ``(index, count)`` of this worker; default :func:`worker_shard` (torchrun's and SLURM's variables).
        progress: a bar per cohort and per slide, on a terminal only; a line per finished slide is always printed.
        options: those of :func:`segment_slide` (``mpp``, ``tile``, ``batch_size``...), passed to it as they are;
            ``device='cuda'`` takes the GPU of the process's ``LOCAL_RANK``. Under torchrun, the processes of a
            machine share its cores (``torch.set_num_threads``).

    Every precondition is checked before any slide is touched: the options (as segment_slide checks them), the
    sources exist, no two slides share a stem, the folder holds no cohort of another model or other parameters
    (``SlideError``). A slide that fails (unreadable,
    no tissue, out of memory) is recorded with its one-line reason and the others go on; a failure that is a bug
    is recorded as ``error`` and its traceback printed. Finished and failed records both count as recorded: the
    worker that records the last slide of the list writes ``cohort.csv``.
    """
    chosen = _with_defaults(options)
    arguments = ('tile', 'overlap', 'batch_size', 'workers', 'mpp', 'slide_mpp', 'backend', 'precision', 'device')
    check_slide_arguments(model, *(chosen[k] for k in arguments))
    out_dir = Path(out_dir)
    if isinstance(slides, (str, Path)):
        slides = [slides]
    if not isinstance(slides, Iterable):
        raise TypeError(f'slides must be a slide, a folder, a list of slides or a sequence of them, got {slides!r}')
    if shard is None:
        index, count = worker_shard()
    elif not (isinstance(shard, Sequence) and len(shard) == 2):
        raise TypeError(f'shard must be a pair (index, count) with 0 <= index < count, got {shard!r}')
    else:
        index, count = shard
        check_count('the count of shard', count)
        check_count('the index of shard', index, 0, count - 1)
    all_slides = list_slides(slides, exclude=out_dir)
    _check_names(all_slides)
    parameters = _parameters(chosen)
    local_processes = _environment_number(os.environ, 'LOCAL_WORLD_SIZE', 1, 1)
    if local_processes > 1:  # torchrun's default OMP_NUM_THREADS=1 would leave most cores idle
        cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // local_processes))
    if isinstance(model, str):
        import zoo  # the package, for create_model (zoo does not import zoo.slide)

        name, model = model, zoo.create_model(model, pretrained=True)
    else:
        name = _model_name(model)
    identity = dict(model=name, model_sha256=model_sha256(model), parameters=parameters)
    out_dir.mkdir(parents=True, exist_ok=True)
    _claim_folder(out_dir, identity)

    share = all_slides[index::count]
    finished = [_is_finished(out_dir, slide, identity) for slide in share]
    skipped = [slide for slide, done in zip(share, finished) if done]
    todo = [slide for slide, done in zip(share, finished) if not done]
    for slide in todo:  # an old failure is not a result while this worker retries it
        _record_path(out_dir, slide).unlink(missing_ok=True)
    on_terminal = progress and sys.stderr.isatty()
    options = dict(options, device=_run_device(options.get('device')), progress=on_terminal)
    prefix = f'worker {index} of {count}: ' if count > 1 else ''
    if skipped:
        _log(f'{prefix}{len(skipped)} of {len(share)} slides already finished in {out_dir}')
    records, spent = [], 0.0
    for position, slide in enumerate(tqdm(todo, unit='slide', disable=not on_terminal, dynamic_ncols=True), 1):
        record = _segment_one(model, slide, out_dir, options, identity)
        atomic_write_bytes(_record_path(out_dir, slide), json.dumps(record, indent=1).encode('utf-8'))
        records.append(record)
        spent += record['seconds']
        outcome = (
            f'{record["nuclei"]} nuclei'
            if record['status'] == 'finished'
            else f'{record["status"]}: {record["reason"]}'
        )
        eta = tqdm.format_interval(spent / position * (len(todo) - position))
        _log(f'{prefix}[{position}/{len(todo)}] {slide}: {outcome}, {record["seconds"]:.1f} s, ETA {eta}')
    summary = rows = None
    if all(_record_path(out_dir, slide).exists() for slide in all_slides):
        summary, rows = write_cohort_summary(out_dir)
    return CohortResult((index, count), len(all_slides), share, skipped, records, summary, rows)
