"""A small published model shared by the hub, loading and publishing tests (import what you use)."""

import shutil
from pathlib import Path

import pytest
import torch

import zoo
from zoo.cards import ModelCard
from zoo.publish import publish

ARCH = 'cf_resnet18'
ARGS = dict(num_classes=10, widths=(8, 16, 32, 64))  # a small ResNet-18 keeps files tiny


def make_card(**changes) -> ModelCard:
    fields = dict(
        title='test model',
        summary='A model published by the test suite.',
        dataset='unit-test data',
        dataset_id='unit-test',
        metrics={'val': {'top1': 12.5}},
        recipe='recipes/none.yaml',
        command='zoo train --recipe recipes/none.yaml',
        model_id=ARCH,
    )
    return ModelCard(**(fields | changes))


def trained_model(seed: int = 0, **kwargs) -> torch.nn.Module:
    """The small architecture with weights moved away from any initialisation (a fresh model cannot pass)."""
    torch.manual_seed(seed)
    model = zoo.create_model(ARCH, **(ARGS | kwargs)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture
def published(tmp_path):
    """A published folder and the model that wrote it."""
    model = trained_model()
    folder = tmp_path / 'published'
    weights = publish(model, folder, make_card())
    return folder, model, weights


def same_outputs(a, b, channels: int = 3):
    x = torch.randn(2, channels, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


def populate_hf_cache(cache: Path, repo_id: str, folder: Path, commit: str = 'a' * 40) -> str:
    """The layout huggingface_hub itself writes: refs/main -> commit, snapshots/<commit>/<files>."""
    repo = cache / f'models--{repo_id.replace("/", "--")}'
    (repo / 'refs').mkdir(parents=True, exist_ok=True)
    (repo / 'refs' / 'main').write_text(commit)
    shutil.copytree(folder, repo / 'snapshots' / commit)
    return commit
