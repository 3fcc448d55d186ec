"""torch.hub entry points: one per zoo model, e.g.

    model = torch.hub.load('<repo or local clone>', 'cf_resnet18', source='local', pretrained=True)

``zoo`` is imported lazily, on the first lookup of a model, and only once every package in
``dependencies`` is importable, so torch.hub reports a missing package by name instead of failing
inside an import.
"""

import importlib.util
import os
import sys

dependencies = ['torch', 'torchvision', 'timm', 'huggingface_hub', 'safetensors', 'yaml', 'pydantic', 'tifffile']


def _zoo():
    # torch.hub puts the repo on sys.path only while importing this file; later lookups need it too.
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    import zoo

    return zoo


def _entrypoint(name):
    zoo = _zoo()

    def entrypoint(pretrained=False, **kwargs):
        return zoo.create_model(name, pretrained=pretrained, **kwargs)

    import timm

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = timm.models.model_entrypoint(name.split('.')[0]).__doc__
    return entrypoint


def __getattr__(name):
    if name.startswith('_') or name not in __dir__():
        raise AttributeError(name)
    return _entrypoint(name)


def __dir__():
    if any(importlib.util.find_spec(dep) is None for dep in dependencies):
        return ['dependencies']  # torch.hub then names the missing packages
    zoo = _zoo()
    # Architectures, and 'architecture.tag' for each published weight (e.g. 'mrl_seg_nano.stardist').
    return ['dependencies', *zoo.list_models(), *zoo.list_models(pretrained=True, tags=True)]
