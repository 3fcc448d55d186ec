"""Cuttlefish low-rank and MRL vision models with a verified safetensors weight hub.

``import zoo`` registers every architecture with timm (names prefixed ``cf_`` and ``mrl_``), so both
``zoo.create_model(name)`` and ``timm.create_model(name)`` work.
"""

from . import (
    hub,
    models,  # noqa: F401  (registers the architectures)
)
from ._builder import check_weight_values, check_weights_fit, create_model
from ._registry import UnknownModelError, get_weights, list_models, list_weights, model_info, model_task
from .compression import CompressionError, CompressionPlan, compress, plan_compression
from .hub import ConfigError, Weights, WeightsError, WeightsHashError, WeightsShapeError

__version__ = '0.1.0'
__all__ = [
    'create_model',
    'list_models',
    'model_info',
    'model_task',
    'get_weights',
    'list_weights',
    'check_weight_values',
    'check_weights_fit',
    'compress',
    'plan_compression',
    'CompressionPlan',
    'CompressionError',
    'hub',
    'Weights',
    'UnknownModelError',
    'ConfigError',
    'WeightsError',
    'WeightsHashError',
    'WeightsShapeError',
]
