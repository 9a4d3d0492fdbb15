"""Image encoders shared by every model, behind one small registry.

A backbone maps a normalised image ``B x C_in x H x W`` to a dict of feature maps at
strides 4, 8 and 16 (``"s4"``, ``"s8"``, ``"s16"``); ``channels`` gives their widths.
Every backbone returns ``s16`` on the 1/16 grid: the last stage is dilated rather than
strided, as CRVOS and RGMP use ResNet-50, except in the ``mobilenet_v2_s32*`` backbones
(strided at 1/32, upsampled).

``extra_in_channels`` widens the first convolution (RGMP's image + mask input): the RGB
filters keep their ImageNet weights, the extra ones are initialised randomly.

ImageNet weights are loaded through torchvision's weights enums (``pretrained=True``),
so they come from ``$TORCH_HOME`` like any torchvision model. Inference never needs
them: a shipped checkpoint holds every weight.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from vostool.errors import VostoolError

BackboneBuilder = Callable[..., "Backbone"]
_BACKBONES: dict[str, BackboneBuilder] = {}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    def wrap(fn: BackboneBuilder) -> BackboneBuilder:
        _BACKBONES[name] = fn
        return fn

    return wrap


def list_backbones() -> list[str]:
    return sorted(_BACKBONES)


def build_backbone(name: str, pretrained: bool = False, extra_in_channels: int = 0) -> "Backbone":
    """Build a registered backbone; unknown names raise ``VostoolError``."""
    if name not in _BACKBONES:
        raise VostoolError(f"unknown backbone '{name}'; choose one of: {', '.join(list_backbones())}")
    return _BACKBONES[name](pretrained=pretrained, extra_in_channels=extra_in_channels)


class Backbone(nn.Module):
    """Base class: ``forward(x: B x C_in x H x W) -> {"s4", "s8", "s16"}`` feature maps."""

    channels: dict[str, int]
    # Parameter names (relative to the backbone) of parts that start at zero, so that the
    # network computes the same function with or without them: a training stage may start
    # (``--init``) from the weights of the same backbone without these parts.
    new_at_init: tuple[str, ...] = ()

    def stages(self) -> dict[str, list[nn.Module]]:
        """The modules that compute each output, by stride name, input side first."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


def _widen_first_conv(conv: nn.Conv2d, extra: int) -> nn.Conv2d:
    """Return a copy of ``conv`` with ``extra`` more input channels (random init)."""
    if extra == 0:
        return conv
    new = nn.Conv2d(
        conv.in_channels + extra, conv.out_channels, conv.kernel_size, conv.stride,
        conv.padding, conv.dilation, conv.groups, conv.bias is not None,
    )
    with torch.no_grad():
        nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
        new.weight[:, : conv.in_channels] = conv.weight
        new.weight[:, conv.in_channels :] *= 0.1  # a new input should not swamp the RGB ones
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _load_imagenet(model: nn.Module, weights: object) -> None:
    try:
        state = weights.get_state_dict(progress=False)  # type: ignore[attr-defined]
    except Exception as exc:  # network or cache problem
        raise VostoolError(
            f"cannot load ImageNet weights {weights} ({exc}); set TORCH_HOME to a folder that has them"
        ) from exc
    model.load_state_dict(state)


class ResNetBackbone(Backbone):
    """torchvision ResNet trunk; layer4 dilated so that ``s16`` is layer4's output."""

    def __init__(self, depth: int, pretrained: bool, extra_in_channels: int) -> None:
        super().__init__()
        if depth == 50:
            net = torchvision.models.resnet50(replace_stride_with_dilation=[False, False, True])
            weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
            widths = (256, 512, 2048)
        elif depth == 18:
            # BasicBlock cannot dilate in torchvision: drop layer4 and use layer3 as s16.
            net = torchvision.models.resnet18()
            weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
            widths = (64, 128, 256)
        else:  # pragma: no cover
            raise ValueError(depth)
        if pretrained:
            _load_imagenet(net, weights)
        self.depth = depth
        self.conv1 = _widen_first_conv(net.conv1, extra_in_channels)
        self.bn1, self.relu, self.maxpool = net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        self.layer4 = net.layer4 if depth == 50 else nn.Identity()
        self.channels = {"s4": widths[0], "s8": widths[1], "s16": widths[2]}

    def stages(self) -> dict[str, list[nn.Module]]:
        return {"s4": [self.conv1, self.bn1, self.layer1], "s8": [self.layer2], "s16": [self.layer3, self.layer4]}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        s4 = self.layer1(x)
        s8 = self.layer2(s4)
        s16 = self.layer4(self.layer3(s8))
        return {"s4": s4, "s8": s8, "s16": s16}


class MobileNetV2Backbone(Backbone):
    """torchvision MobileNetV2; the stride-32 blocks (14-17) are dilated to keep stride 16.

    ``s4`` = block 3 (24 ch), ``s8`` = block 6 (32 ch), ``s16`` = block 17 (320 ch).
    The final 1280-channel 1x1 convolution is not used.

    ``lateral=True`` (``mobilenet_v2_s32_lateral``, with ``dilate_last=False``) adds block 13's
    1/16 output (96 ch) through a 1x1 convolution to the upsampled s16, as a feature pyramid's
    lateral connection does, to give the 1/16 grid its detail back for about 50 M multiply-adds
    at 480x864; it starts at zero (``new_at_init``), so a training stage started from a file
    without it (``--init``, either other MobileNetV2 backbone) starts as ``mobilenet_v2_s32``
    with those weights. Measured (crvos-s32l, ``references/README.md``): 0.754 dev J&F at 512
    against the shipped file's 0.759, 75-84 ms a frame against 106 ms at 480 (AVX2, 2 threads).

    ``dilate_last=False`` (the ``mobilenet_v2_s32`` backbone) runs blocks 14-17 as ImageNet
    trained them, strided at 1/32, and returns their output bilinearly upsampled to the
    1/16 grid as ``s16``: the same parameters (weights load either way), about a quarter of
    those blocks' computation (they and the last 960 -> 320 projection are about half of the
    dilated encoder's time on AVX2 CPUs; README, issue 17), a coarser ``s16``. Measured on
    2026-12-07 (``references/README.md``, crvos-s32): crvos fine-tuned into it from its shipped
    file for 600 iterations takes 20-35% less time a frame at 480 on an AVX2 CPU (ONNX Runtime,
    one thread) and scores 0.730 dev J&F at its best size (512) against 0.759; not shipped.
    """

    def __init__(self, pretrained: bool, extra_in_channels: int, dilate_last: bool = True,
                 lateral: bool = False) -> None:
        super().__init__()
        if lateral and dilate_last:
            raise ValueError("the lateral connection is for the strided last blocks (dilate_last=False)")
        self.dilate_last = dilate_last
        net = torchvision.models.mobilenet_v2()
        if pretrained:
            _load_imagenet(net, torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1)
        feats = net.features
        first = feats[0]
        first[0] = _widen_first_conv(first[0], extra_in_channels)
        for block in feats[14:18] if dilate_last else []:
            for m in block.modules():
                if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                    m.stride, m.dilation, m.padding = (1, 1), (2, 2), (2, 2)
        self.stage4 = feats[0:4]
        self.stage8 = feats[4:7]
        self.stage16 = feats[7:18]
        self.channels = {"s4": 24, "s8": 32, "s16": 320}
        self.lateral: nn.Conv2d | None = None
        if lateral:
            self.lateral = nn.Conv2d(96, 320, 1)
            nn.init.zeros_(self.lateral.weight)
            nn.init.zeros_(self.lateral.bias)
            self.new_at_init = ("lateral.weight", "lateral.bias")

    def stages(self) -> dict[str, list[nn.Module]]:
        s16: list[nn.Module] = [self.stage16] + ([self.lateral] if self.lateral is not None else [])
        return {"s4": [self.stage4], "s8": [self.stage8], "s16": s16}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        s4 = self.stage4(x)
        s8 = self.stage8(s4)
        if self.lateral is None:
            s16 = self.stage16(s8)
        else:
            x13 = self.stage16[:7](s8)  # blocks 7-13, the last ones at 1/16
            s16 = self.stage16[7:](x13)
        if not self.dilate_last:
            # 1/32 -> the 1/16 grid of a stride-2 3x3 convolution over s8: ceil(h8 / 2)
            h, w = s8.shape[-2:]
            s16 = F.interpolate(s16, scale_factor=2.0, mode="bilinear", align_corners=False)
            s16 = s16[:, :, : (h + 1) // 2, : (w + 1) // 2]
            if self.lateral is not None:
                s16 = s16 + self.lateral(x13)
        return {"s4": s4, "s8": s8, "s16": s16}


@register_backbone("mobilenet_v2")
def mobilenet_v2(pretrained: bool = False, extra_in_channels: int = 0) -> Backbone:
    return MobileNetV2Backbone(pretrained, extra_in_channels)


@register_backbone("mobilenet_v2_s32")
def mobilenet_v2_s32(pretrained: bool = False, extra_in_channels: int = 0) -> Backbone:
    return MobileNetV2Backbone(pretrained, extra_in_channels, dilate_last=False)


@register_backbone("mobilenet_v2_s32_lateral")
def mobilenet_v2_s32_lateral(pretrained: bool = False, extra_in_channels: int = 0) -> Backbone:
    return MobileNetV2Backbone(pretrained, extra_in_channels, dilate_last=False, lateral=True)


@register_backbone("resnet50")
def resnet50(pretrained: bool = False, extra_in_channels: int = 0) -> Backbone:
    return ResNetBackbone(50, pretrained, extra_in_channels)


@register_backbone("resnet18")
def resnet18(pretrained: bool = False, extra_in_channels: int = 0) -> Backbone:
    return ResNetBackbone(18, pretrained, extra_in_channels)
