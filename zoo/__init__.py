"""Cuttlefish low-rank and MRL vision models with a verified safetensors weight hub.

``import zoo`` registers every architecture with timm (names prefixed ``cf_`` and ``mrl_``), so both
``zoo.create_model(name)`` and ``timm.create_model(name)`` work.
"""
from . import models  # noqa: F401  (registers the architectures)
from . import hub
from ._builder import create_model
from ._registry import UnknownModelError, get_weights, list_models, model_info
from .hub import Weights, WeightsError, WeightsHashError, WeightsShapeError

__version__ = '0.1.0'
__all__ = ['create_model', 'list_models', 'model_info', 'get_weights', 'hub', 'Weights', 'UnknownModelError',
           'WeightsError', 'WeightsHashError', 'WeightsShapeError']
