"""What learns: BatchNorm modes (:func:`set_train_mode`), ``--train-only`` heads
(:func:`train_only`), ``--freeze-backbone`` (:func:`freeze_backbones`) and at what rate
(:func:`param_groups`: a model's ``lr_scales``)."""

from __future__ import annotations

from typing import Any, Sequence

import torch.nn as nn

from vostool.errors import VostoolError
from vostool.models.base import VOSModel


def set_train_mode(model: nn.Module, freeze_bn: bool = True, train_only: Sequence[str] = ()) -> None:
    """``model.train()``, with the backbone's BatchNorm layers kept in eval mode (their
    ImageNet statistics frozen; their affine parameters still learn) when ``freeze_bn``.
    With ``train_only``, every BatchNorm outside those modules is kept in eval mode too."""
    from vostool.models.backbones import Backbone

    model.train()
    if freeze_bn:
        for mod in model.modules():
            if isinstance(mod, Backbone):
                for bn in mod.modules():
                    if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                        bn.eval()
    if train_only:
        for name, mod in model.named_modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and not _under(name, train_only):
                mod.eval()


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def train_only(model: nn.Module, modules: Sequence[str]) -> int:
    """Freeze every parameter outside the named submodules (``decoder_zero``,
    ``decoder.cells``...): only those learn, so a stage can fit one head to a fixed
    network. Returns the number of parameters left learning."""
    names = {n for n, _ in model.named_modules()}
    unknown = [m for m in modules if m not in names]
    if unknown:
        tops = ", ".join(n for n, _ in model.named_children())
        raise VostoolError(f"--train-only: no module {', '.join(map(repr, unknown))} in {model.__class__.__name__}; "
                           f"its top-level modules: {tops}")
    learning = 0
    for name, p in model.named_parameters():
        if _under(name, modules):
            learning += p.numel() if p.requires_grad else 0
        else:
            p.requires_grad_(False)
    if learning == 0:
        raise VostoolError(f"--train-only {','.join(modules)}: no parameter left to learn")
    return learning


def freeze_backbones(model: nn.Module, keep: Sequence[str] = ()) -> int:
    """Stop gradients at every ImageNet backbone whose input needs none (the frame
    encoders); a backbone that also takes a mask channel keeps learning. ``keep`` names
    stages that still learn (``"s16"``: the low-resolution blocks, cheap to back-propagate
    through). Returns the number of parameters frozen. Without gradients through the
    encoder, a CPU training step costs about the forward pass alone."""
    from vostool.models.backbones import Backbone

    frozen = 0
    for mod in model.modules():
        if isinstance(mod, Backbone):
            first = next(m for m in mod.modules() if isinstance(m, nn.Conv2d))
            if first.in_channels != 3:
                continue
            kept = {id(p) for name in keep for m in mod.stages()[name] for p in m.parameters()}
            for p in mod.parameters():
                if p.requires_grad and id(p) not in kept:
                    p.requires_grad_(False)
                    frozen += p.numel()
    return frozen


def param_groups(model: VOSModel) -> list[dict[str, Any]]:
    """The optimiser's parameter groups: every parameter that learns, those named in the
    model's ``lr_scales`` (:class:`~vostool.models.base.VOSModel`) in groups of their own
    with ``lr_scale`` (the training loop multiplies the scheduled rate by it). A name
    that matches no parameter that learns is skipped (e.g. frozen by ``--train-only``)."""
    scales = type(model).lr_scales
    plain: list[nn.Parameter] = []
    scaled: dict[float, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = next((float(v) for k, v in scales.items() if _under(name, [k])), 1.0)
        (plain if scale == 1.0 else scaled.setdefault(scale, [])).append(p)
    groups: list[dict[str, Any]] = [{"params": plain, "lr_scale": 1.0}] if plain else []
    groups += [{"params": ps, "lr_scale": s} for s, ps in sorted(scaled.items())]
    return groups
