"""Model registry and checkpoints.

``register_model`` turns a :class:`VOSModel` subclass into a named entry with its paper
and published figures; ``build_model(name, backbone=...)`` builds it; checkpoints are
safetensors files whose metadata records the model name and its configuration, and they
load strictly: a missing or unexpected key is an error that names the key.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from vostool.errors import VostoolError
from vostool.models.backbones import list_backbones
from vostool.models.base import VOSModel
from vostool.models.weights import WeightsInfo


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its class, paper and the figures its authors published."""

    name: str
    cls: type[VOSModel]
    title: str
    paper: str
    published: str
    default_backbone: str = "mobilenet_v2"
    backbones: tuple[str, ...] = field(default_factory=lambda: tuple(list_backbones()))


_MODELS: dict[str, ModelSpec] = {}


def register_model(
    name: str, *, title: str, paper: str, published: str, default_backbone: str = "mobilenet_v2"
) -> Callable[[type[VOSModel]], type[VOSModel]]:
    """Class decorator: register a model under ``name``."""

    def wrap(cls: type[VOSModel]) -> type[VOSModel]:
        if name in _MODELS:
            raise VostoolError(f"model name '{name}' is registered twice ({_MODELS[name].cls.__qualname__} "
                               f"and {cls.__qualname__})")
        cls.name = name
        _MODELS[name] = ModelSpec(name, cls, title, paper, published, default_backbone)
        return cls

    return wrap


def _ensure_loaded() -> None:
    # Importing the zoo registers every model.
    import vostool.models.zoo  # noqa: F401


def list_models() -> list[ModelSpec]:
    _ensure_loaded()
    return [_MODELS[n] for n in sorted(_MODELS)]


def get_spec(name: str) -> ModelSpec:
    _ensure_loaded()
    if name not in _MODELS:
        raise VostoolError(f"unknown model '{name}'; choose one of: {', '.join(sorted(_MODELS))}")
    return _MODELS[name]


def build_model(
    name: str, backbone: str | None = None, pretrained: bool = False, **config: Any
) -> VOSModel:
    """Build a registered model. ``pretrained`` loads ImageNet weights into the backbone;
    ``config`` holds the options of the model's constructor (an unknown one is an error)."""
    spec = get_spec(name)
    backbone = backbone or spec.default_backbone
    if backbone not in list_backbones():
        raise VostoolError(f"unknown backbone '{backbone}'; choose one of: {', '.join(list_backbones())}")
    options = model_options(spec)
    unknown = sorted(set(config) - set(options))
    if unknown:
        raise VostoolError(f"model '{name}' has no option {', '.join(repr(k) for k in unknown)}; "
                           f"its options: {', '.join(options) or 'none'}")
    return spec.cls(backbone=backbone, pretrained=pretrained, **config)


def model_options(spec: ModelSpec) -> list[str]:
    """The configuration keys the constructor of ``spec``'s model takes (``backbone`` and
    ``pretrained`` aside), in signature order."""
    params = inspect.signature(spec.cls.__init__).parameters.values()
    return [p.name for p in params if p.name not in ("self", "backbone", "pretrained")
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


# -- checkpoints ----------------------------------------------------------------------
def weights_dir() -> Path:
    """The first folder searched for shipped checkpoints: ``$VOSTOOL_WEIGHTS`` when set, else
    the package's ``vostool/weights/`` (see :mod:`vostool.models.weights` for the whole order)."""
    from vostool.models.weights import search_dirs

    return search_dirs()[0][1]


def default_weights(name: str) -> Path:
    """The local shipped checkpoint of ``name`` ($VOSTOOL_WEIGHTS, package, cache; no download);
    when there is none, the path it would have in the package (which does not exist)."""
    from vostool.models.weights import Weights, find_weights, package_weights_dir

    found = find_weights(name)
    if found is not None:
        return found
    rec = Weights.for_model(name)
    return package_weights_dir() / (rec.file if rec else f"{name}.safetensors")


def save_checkpoint(
    model: VOSModel, path: str | Path, half: bool = False, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` to a safetensors file (fp16 floats if ``half``), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        if half and v.is_floating_point():
            v = v.half()
        state[k] = v
    meta = {"model": model.name, "config": json.dumps(model.config), **{k: str(v) for k, v in (extra or {}).items()}}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read tensors and metadata of a checkpoint; a missing or broken file is a VostoolError."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise VostoolError(f"weights not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise VostoolError(f"cannot read weights {path}: {exc}") from exc
    return state, meta


def load_weights_strict(model: VOSModel, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load ``state`` into ``model``; any missing or unexpected key is an error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise VostoolError(f"{source} does not fit model '{model.name}': {'; '.join(parts)}")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise VostoolError(f"{source} does not fit model '{model.name}': {k} has shape "
                               f"{tuple(v.shape)}, expected {tuple(own[k].shape)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def load_model(name: str, weights: str | Path | None = None, backbone: str | None = None) -> VOSModel:
    """Build model ``name`` and load its checkpoint strictly.

    weights: a checkpoint path; None takes the shipped checkpoint, found by
    :func:`vostool.models.weights.resolve_weights` ($VOSTOOL_WEIGHTS, the package, the cache,
    then a download).
    The architecture (backbone, sizes) comes from the checkpoint's metadata; asking for a
    different backbone than the checkpoint's is an error. The returned model (in eval
    mode) carries what was loaded in ``model.weights_info``
    (:class:`~vostool.models.weights.WeightsInfo`).
    """
    from vostool.models.weights import resolve_weights

    spec = get_spec(name)
    path = Path(weights) if weights is not None else resolve_weights(name)
    state, meta = read_checkpoint(path)
    if meta.get("model", name) != name:
        raise VostoolError(f"{path} holds weights for model '{meta['model']}', not '{name}'")
    config: dict[str, Any] = json.loads(meta.get("config", "{}"))
    ck_backbone = config.pop("backbone", spec.default_backbone)
    if backbone is not None and backbone != ck_backbone:
        raise VostoolError(f"{path} was trained with backbone '{ck_backbone}', not '{backbone}'")
    model = build_model(name, backbone=ck_backbone, pretrained=False, **config)
    load_weights_strict(model, state, source=str(path))
    stored = next((str(t.dtype).removeprefix("torch.") for t in state.values() if t.is_floating_point()),
                  "float32")
    model.weights_info = WeightsInfo.from_checkpoint(path, meta, name, ck_backbone, config, stored)
    return model.eval()


def recommended_size(model: VOSModel, default: int = 480) -> int:
    """The internal size (shorter side) a checkpoint was trained for, else ``default``."""
    info = model.weights_info
    return info.inference_size if info is not None and info.inference_size is not None else default
