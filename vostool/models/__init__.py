"""The model zoo: registry, shared backbones and blocks, one module per paper."""

from vostool.models.backbones import build_backbone, list_backbones
from vostool.models.base import Features, State, VOSModel
from vostool.models.registry import (
    ModelSpec,
    build_model,
    default_weights,
    get_spec,
    list_models,
    load_model,
    load_weights_strict,
    read_checkpoint,
    recommended_size,
    register_model,
    save_checkpoint,
    weights_dir,
)
from vostool.models.weights import Weights, WeightsInfo, WeightsRecord, resolve_weights

__all__ = [
    "build_backbone", "list_backbones",
    "Features", "State", "VOSModel", "ModelSpec", "build_model", "default_weights", "get_spec",
    "list_models", "load_model", "load_weights_strict", "read_checkpoint", "recommended_size", "register_model",
    "save_checkpoint", "weights_dir", "Weights", "WeightsInfo", "WeightsRecord", "resolve_weights",
]
