"""Pretrained-weight hub: fetch, verify, load and publish safetensors weights.

Weights are always ``model.safetensors`` files whose sha256 is known before they are read.
Three kinds of source are understood (``Weights.source``):

* ``hf-hub:ORG/NAME@REVISION`` -- a Hugging Face Hub repo at a pinned revision, fetched with
  ``huggingface_hub.hf_hub_download``; the standard cache, ``HF_HOME``/``HF_HUB_CACHE`` and
  ``HF_HUB_OFFLINE=1`` work as they do for any HF library.
* ``https://...``, ``http://...`` or ``file://...`` -- a URL, downloaded once into torch.hub's cache
  (``$TORCH_HOME/hub/checkpoints``) and re-verified on every load, not only on download.
* ``local:NAME`` -- a folder in the project's ``hub/`` directory (or ``$ZOO_HUB_DIR``), or an absolute
  path to a folder laid out like a Hugging Face model repo: ``config.json``, ``model.safetensors``,
  ``README.md``.

Nothing is ever unpickled. ``publish`` writes exactly the folder layout above, with a timm-compatible
``config.json`` and a model card whose YAML metadata is generated from measured results.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
import yaml
from safetensors.torch import save_file

from ._profile import count_macs

__all__ = [
    'Weights', 'ModelCard', 'WeightsError', 'WeightsHashError', 'WeightsShapeError',
    'hub_dir', 'local_folder', 'sha256_file', 'fetch', 'read_config', 'publish', 'render_card', 'atomic_write_bytes', 'fsync_dir',
    'WEIGHTS_NAME', 'CONFIG_NAME', 'CARD_NAME',
]

WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'
CARD_NAME = 'README.md'
_HF_PREFIX = 'hf-hub:'
_LOCAL_PREFIX = 'local:'
_URL_SCHEMES = ('https://', 'http://', 'file://')


class WeightsError(RuntimeError):
    """A weights file could not be found, read or used."""


class WeightsHashError(WeightsError):
    """A weights file's sha256 differs from the one recorded for it (corrupt, truncated or tampered)."""


class WeightsShapeError(WeightsError):
    """A weights file does not fit the architecture it is loaded into."""


@dataclass(frozen=True)
class Weights:
    """One published set of weights: where it lives, its hash, and what it was measured to do.

    The metadata follows torchvision's weights ``meta``: ``num_params`` is checked against the built
    model by the test suite, ``metrics`` maps a dataset/split name to measured figures
    (``{'Fashion-MNIST test': {'top1': 93.1}}``), ``recipe`` names the recipe file and command.
    ``model_args`` are the constructor arguments the weights were trained with (e.g. per-layer ranks),
    applied whenever the architecture is built for this tag.
    """
    source: str
    sha256: str
    model_args: Mapping[str, Any] = field(default_factory=dict)
    num_params: Optional[int] = None
    macs: Optional[int] = None
    dataset: str = ''
    metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    recipe: str = ''
    file_size_mb: Optional[float] = None
    license: str = 'apache-2.0'

    def __post_init__(self):
        if not (len(self.sha256) == 64 and all(c in '0123456789abcdef' for c in self.sha256)):
            raise ValueError(f'Weights.sha256 must be 64 lowercase hex digits, got {self.sha256!r}')
        if not self.source.startswith((_HF_PREFIX, _LOCAL_PREFIX) + _URL_SCHEMES):
            raise ValueError(
                f'Weights.source {self.source!r} must start with one of '
                f"{', '.join((_HF_PREFIX, _LOCAL_PREFIX) + _URL_SCHEMES)}")


def hub_dir() -> Path:
    """The folder holding ``local:NAME`` weights: ``$ZOO_HUB_DIR`` or the checkout's ``hub/``."""
    return Path(os.environ.get('ZOO_HUB_DIR') or Path(__file__).resolve().parent.parent / 'hub')


def sha256_file(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _split_revision(spec: str) -> tuple[str, Optional[str]]:
    repo_id, _, revision = spec.partition('@')
    return repo_id, revision or None


def local_folder(spec: str) -> Path:
    """A ``local:`` spec as a folder: absolute paths as given, names inside ``hub_dir()``."""
    folder = Path(spec)
    return folder if folder.is_absolute() else hub_dir() / spec


def _fetch_url(url: str, sha256: str, progress: bool) -> Path:
    cache = Path(torch.hub.get_dir()) / 'checkpoints'
    cache.mkdir(parents=True, exist_ok=True)
    # The hash prefix in the cached name keeps two different files with the same basename apart.
    cached = cache / f'{sha256[:12]}-{Path(url.split("?")[0]).name}'
    if not cached.exists():
        # download_url_to_file writes to a temporary file and renames it, so a killed download leaves nothing.
        try:
            torch.hub.download_url_to_file(url, str(cached), progress=progress)
        except OSError as e:  # URLError and HTTPError are OSErrors
            raise WeightsError(f'could not download {url}: {e}') from e
    return cached


def fetch(source: str, sha256: Optional[str], name: str = 'model', progress: bool = False,
          filename: str = WEIGHTS_NAME, cache_dir: Optional[Union[str, Path]] = None) -> Path:
    """Return a local path to ``filename`` from ``source``; when ``sha256`` is given the file is verified.

    Raises ``WeightsError`` (missing file, offline cache miss) or ``WeightsHashError`` naming ``name``,
    the file and the expected vs actual hash. ``cache_dir`` overrides the Hugging Face cache.
    """
    if source.startswith(_HF_PREFIX):
        from huggingface_hub import hf_hub_download
        from huggingface_hub.constants import HF_HUB_CACHE
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
        repo_id, revision = _split_revision(source[len(_HF_PREFIX):])
        try:
            path = Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir,
                                        library_name='cuttlefish-mrl-zoo'))
        except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
            raise WeightsError(
                f'{name}: could not get {filename} from {source}: {e} With HF_HUB_OFFLINE=1 the file must '
                f'already be in the Hugging Face cache ({cache_dir or HF_HUB_CACHE}).') from e
        except (HfHubHTTPError, OSError) as e:  # missing repo or revision, no network
            raise WeightsError(f'{name}: could not get {filename} from {source}: {e}') from e
    elif source.startswith(_URL_SCHEMES):
        if filename != WEIGHTS_NAME:
            raise WeightsError(f'{name}: a URL source points at one file; cannot fetch {filename} from {source}')
        if sha256 is None:
            raise WeightsError(f'{name}: refusing to download {source} without a sha256 to check it against')
        path = _fetch_url(source, sha256, progress)
    elif source.startswith(_LOCAL_PREFIX):
        path = local_folder(source[len(_LOCAL_PREFIX):]) / filename
    else:
        raise WeightsError(f'{name}: unknown weights source {source!r}')
    if not path.is_file():
        raise WeightsError(f'{name}: {path} does not exist (source {source}); a published model folder '
                           f'holds {CONFIG_NAME}, {WEIGHTS_NAME} and {CARD_NAME}')
    if sha256 is not None:
        actual = sha256_file(path)
        if actual != sha256:
            raise WeightsHashError(
                f'{name}: weights file {path} has sha256 {actual} but {sha256} was expected; the file is '
                f'corrupt, truncated or was modified. Delete it so it is fetched again, or restore it.')
    return path


def read_config(folder: Union[str, Path]) -> dict:
    """Read a published folder's ``config.json`` (clear errors for a missing or malformed file)."""
    path = Path(folder) / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise WeightsError(f'{path} not found: a published model folder holds {CONFIG_NAME}, '
                           f'{WEIGHTS_NAME} and {CARD_NAME}') from e
    except json.JSONDecodeError as e:
        raise WeightsError(f'{path} is not valid JSON: {e}') from e
    if 'architecture' not in config:
        raise WeightsError(f'{path} has no "architecture" key')
    return config


# ----------------------------------------------------------------------------------------------------------
# Publishing


@dataclass
class ModelCard:
    """What a model card says beyond what the model itself knows. Metrics must be measured, not hoped for.

    ``metrics`` maps a split name (e.g. ``'Fashion-MNIST test (10,000 images)'``) to ``{metric: value}``;
    ``figures`` are image files copied next to the card and embedded in it. ``model_id`` is the
    registered name that loads these weights (``'cf_resnet18_fmnist'``), when there is one.
    """
    title: str
    summary: str
    dataset: str
    dataset_id: Optional[str] = None
    task: str = 'image-classification'
    metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    recipe: str = ''
    command: str = ''
    training: str = ''
    intended_use: str = ''
    limitations: str = ''
    figures: Sequence[Union[str, Path]] = ()
    extra_sections: Mapping[str, str] = field(default_factory=dict)
    tags: Sequence[str] = ()
    license: str = 'apache-2.0'
    paper_ids: Sequence[str] = ()
    model_id: Optional[str] = None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix, even after
    a crash: temporary file in the same folder, fsync, rename, fsync of the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f'.{path.name}.', delete=False)
    try:
        with tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp.name, 0o666 & ~umask)  # NamedTemporaryFile creates 0600 files
        os.replace(tmp.name, path)
    except BaseException:
        Path(tmp.name).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# pretrained_cfg fields that say where weights come from: a published config.json leaves them out, since
# the folder's own model.safetensors (verified by its sha256) is the only source.
WEIGHT_SOURCE_KEYS = ('url', 'file', 'state_dict', 'hf_hub_id', 'hf_hub_filename', 'source', 'tag')


def _model_config(model: torch.nn.Module, architecture: str, model_args: Mapping[str, Any]) -> dict:
    """timm's config.json schema (``architecture``, ``num_classes``, ``model_args``, ``pretrained_cfg``)."""
    pretrained_cfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    for key in WEIGHT_SOURCE_KEYS:
        pretrained_cfg.pop(key, None)
    pretrained_cfg['architecture'] = architecture
    pretrained_cfg['num_classes'] = getattr(model, 'num_classes', pretrained_cfg.get('num_classes'))
    config = dict(architecture=architecture, num_classes=pretrained_cfg['num_classes'],
                  num_features=getattr(model, 'num_features', None))
    if isinstance(getattr(model, 'global_pool', None), str):
        config['global_pool'] = model.global_pool
    if pretrained_cfg.get('label_names'):
        config['label_names'] = list(pretrained_cfg['label_names'])
    config['model_args'] = dict(model_args)
    config['pretrained_cfg'] = pretrained_cfg
    return config


# The Hugging Face Hub's names where ours differ: its pipeline tags and metric ids.
_HF_PIPELINE = {'nuclei-segmentation': 'image-segmentation'}
_HF_METRIC = {'top1': 'accuracy', 'top5': 'top_5_accuracy'}


def _card_metadata(card: ModelCard, architecture: str) -> dict:
    pipeline = _HF_PIPELINE.get(card.task, card.task)
    meta: dict[str, Any] = dict(library_name='timm', license=card.license, pipeline_tag=pipeline,
                                tags=list(dict.fromkeys([pipeline, card.task, 'timm', 'cuttlefish-mrl-zoo', *card.tags])))
    if card.dataset_id:
        meta['datasets'] = [card.dataset_id]
    if card.metrics:
        results = []
        for split, values in card.metrics.items():
            results.append(dict(
                task=dict(type=pipeline),
                # ``type`` is a dataset id on the Hub; data without one (e.g. the stardist sample) is 'custom'.
                dataset=dict(name=card.dataset, type=card.dataset_id or 'custom', split=split),
                metrics=[dict(type=_HF_METRIC.get(k, k), value=float(v), name=k) for k, v in values.items()]))
        meta['model-index'] = [dict(name=architecture, results=results)]
    return meta


def render_card(card: ModelCard, architecture: str, config: Mapping[str, Any], num_params: int,
                macs: Optional[int], file_size_mb: float, sha256: str) -> str:
    """Render a model card (YAML front matter + Markdown body) from measured results."""
    meta = yaml.safe_dump(_card_metadata(card, architecture), sort_keys=False).strip()
    input_size = config['pretrained_cfg'].get('input_size')
    facts = [
        ('Architecture', f'`{architecture}`'),
        ('Parameters', f'{num_params:,}'),
        ('MACs (multiply-adds) per image', f'{macs / 1e6:,.1f} M at input {tuple(input_size)}' if macs else 'n/a'),
        ('Weights', f'`{WEIGHTS_NAME}`, {file_size_mb:.2f} MB, sha256 `{sha256}`'),
        ('Dataset', card.dataset),
        ('Recipe', f'`{card.recipe}`' if card.recipe else 'n/a'),
    ]
    lines = ['---', meta, '---', '', f'# {card.title}', '', card.summary.strip(), '',
             '| | |', '|---|---|', *[f'| {k} | {v} |' for k, v in facts], '']
    if card.metrics:
        lines += ['## Measured results', '', '| split | metric | value |', '|---|---|---|']
        lines += [f'| {split} | {k} | {v:.4g} |' for split, values in card.metrics.items() for k, v in values.items()]
        lines.append('')
    usage = ['import torch, timm, zoo  # importing zoo registers the architectures with timm']
    if card.model_id:
        usage += [f"model = timm.create_model('{card.model_id}', pretrained=True).eval()",
                  f"model = torch.hub.load('<path to a clone>', '{card.model_id}', source='local', pretrained=True)"]
    usage += ["model = zoo.create_model('local-dir:<path to this folder>', pretrained=True).eval()",
              "model = zoo.create_model('hf-hub:<org>/<repo>@<revision>', pretrained=True).eval()  # once uploaded"]
    lines += ['## Usage', '', '```python', *usage, '```', '']
    if card.command:
        lines += ['## Reproduce', '', '```bash', card.command.strip(), '```', '']
    for title, body in [('Training', card.training), ('Intended use', card.intended_use),
                        ('Limitations', card.limitations), *card.extra_sections.items()]:
        if body:
            lines += [f'## {title}', '', body.strip(), '']
    for figure in card.figures:
        lines += [f'![{Path(figure).stem}]({Path(figure).name})', '']
    if card.paper_ids:
        lines += ['## Papers', '', *[f'- {p}' for p in card.paper_ids], '']
    return '\n'.join(lines)


def publish(model: torch.nn.Module, folder: Union[str, Path], card: ModelCard, architecture: Optional[str] = None,
            model_args: Optional[Mapping[str, Any]] = None, dtype: Optional[torch.dtype] = None,
            macs: Optional[int] = None) -> dict:
    """Write ``config.json``, ``model.safetensors`` and ``README.md`` (plus card figures) into ``folder``.

    Each file is written atomically. ``dtype=torch.float16`` halves the file (floating-point tensors
    only). ``model_args`` default to the constructor arguments the zoo builder recorded on the model
    (``model.zoo_model_args``); ``macs`` default to a count at the model's default input size. Returns
    the fields of a ``Weights`` entry for the registry (``sha256``, ``num_params``, ``macs``,
    ``file_size_mb``, ``model_args``).
    """
    folder = Path(folder)
    architecture = architecture or model.pretrained_cfg['architecture']
    model_args = dict(model_args if model_args is not None else getattr(model, 'zoo_model_args', {}))
    if macs is None:
        macs = count_macs(model, model.pretrained_cfg['input_size'])
    state_dict = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().to('cpu').contiguous()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state_dict[key] = tensor.clone()  # clone: safetensors refuses tensors that share storage
    with tempfile.TemporaryDirectory() as tmp:
        tmp_file = Path(tmp) / WEIGHTS_NAME
        # One metadata key only: safetensors serialises metadata from a hash map, so a second key would make
        # the bytes (and the published sha256) differ from run to run. The architecture is in config.json.
        save_file(state_dict, str(tmp_file), metadata={'format': 'pt'})
        atomic_write_bytes(folder / WEIGHTS_NAME, tmp_file.read_bytes())
    sha256 = sha256_file(folder / WEIGHTS_NAME)
    file_size_mb = (folder / WEIGHTS_NAME).stat().st_size / 2 ** 20
    num_params = sum(p.numel() for p in model.parameters())
    config = _model_config(model, architecture, model_args)
    config['sha256'] = sha256
    atomic_write_bytes(folder / CONFIG_NAME, (json.dumps(config, indent=2) + '\n').encode())
    for figure in card.figures:
        atomic_write_bytes(folder / Path(figure).name, Path(figure).read_bytes())
    text = render_card(card, architecture, config, num_params, macs, file_size_mb, sha256)
    atomic_write_bytes(folder / CARD_NAME, text.encode())
    return dict(sha256=sha256, num_params=num_params, macs=macs, file_size_mb=round(file_size_mb, 3),
                model_args=model_args)

