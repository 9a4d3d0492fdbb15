"""The model zoo: registry, shared backbones and blocks, one module per paper."""

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
    register_model,
    save_checkpoint,
    weights_dir,
)

__all__ = [
    "Features", "State", "VOSModel", "ModelSpec", "build_model", "default_weights", "get_spec",
    "list_models", "load_model", "load_weights_strict", "read_checkpoint", "register_model",
    "save_checkpoint", "weights_dir",
]
