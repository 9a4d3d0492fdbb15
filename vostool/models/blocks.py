"""Building blocks shared by the models. Each exists once, here.

- :func:`coord_maps`: CoordConv channels (CRVOS's Clue, GAM's mask embedding).
- :func:`soft_aggregate`: RGMP's softmax aggregation of per-object probabilities (Eq. 1).
- :class:`ConvRelu`, :class:`ResBlock`: the plain layers everyone uses.
- :class:`DeconvRefine`: CRVOS's refine module (conv, deconvolution, skip connection).
- :class:`RefineModule`: the skip-connection + upsampling refinement module of RGMP/STM,
  also used by GAM's STM-style decoder and DTN's mask refinement.
- :class:`ConvLSTMCell`: RVOS's recurrent unit.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def coord_maps(
    batch: int, height: int, width: int, device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Three coordinate channels in [-1, 1]: y, x and the distance from the centre.

    Returns ``batch x 3 x height x width``. The distance channel is scaled so that the
    corners are at 1 and the centre at -1, like the two others.
    """
    ys = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    rr = torch.sqrt(yy * yy + xx * xx) * (2.0 / 2.0**0.5) - 1.0
    # .to(dtype): a no-op in eager mode; ONNX export traces linspace as double otherwise
    return torch.stack([yy, xx, rr]).to(dtype).unsqueeze(0).expand(batch, 3, height, width)


def soft_aggregate(probs: torch.Tensor, eps: float = 1e-7, background: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax aggregation of independent per-object probabilities (RGMP Eq. 1).

    probs: ``K x ... `` foreground probability of each object from a single-object network.
    background: ``1 x ...`` the background's "network output"; default ``1 - max_k p_k``.
    RGMP computes it as one minus the network's output on the merged foreground (the
    engine passes that for models with ``background_from_union``); ``1 - max_k p_k`` is
    the same with one object and the convention for the others.
    Returns ``(K + 1) x ...``: background first, then the objects; positive, sums to 1.
    """
    if probs.shape[0] == 0:
        return torch.ones((1, *probs.shape[1:]), dtype=probs.dtype, device=probs.device)
    if probs.dtype == torch.float16:  # odds reach 1 / eps = 1e7, past fp16's range: compute in fp32
        return soft_aggregate(probs.float(), eps, None if background is None else background.float()).half()
    fg = probs.clamp(eps, 1 - eps)
    if background is None:
        background = 1 - probs.max(dim=0, keepdim=True).values
    bg = background.to(fg.dtype).clamp(eps, 1 - eps)
    p = torch.cat([bg, fg], dim=0)
    # softmax over the logits log(p / (1 - p)) is the odds p / (1 - p) normalised to sum 1: the
    # same up to rounding (< 3e-7), without log and exp (2-3x faster on CPUs: 17 -> 9 ms for
    # one object at 480x854 on one AVX2 core, 39 -> 12 ms for five)
    if p.requires_grad:
        odds = p / (1 - p)
        return odds / odds.sum(dim=0, keepdim=True)
    p.div_(torch.rsub(p, 1))
    return p.div_(p.sum(dim=0, keepdim=True))


class ConvRelu(nn.Sequential):
    """``k x k`` convolution followed by ReLU, padding keeps the size."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, padding=dilation * (k // 2), dilation=dilation),
            nn.ReLU(inplace=True),
        )


class ResBlock(nn.Module):
    """Pre-activation residual block (ReLU-conv-ReLU-conv + identity), no batch norm."""

    def __init__(self, cin: int, cout: int | None = None) -> None:
        super().__init__()
        cout = cout or cin
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.conv1(F.relu(x))
        r = self.conv2(F.relu(r))
        return self.skip(x) + r


class DeconvRefine(nn.Module):
    """CRVOS refine module: skip features + the previous 2-channel output, one 3x3 conv,
    then a deconvolution with only 2 output channels.

    skip: ``B x C_skip x H x W`` encoder features; prev: ``B x C_prev x H x W``.
    Returns ``B x 2 x (H * up) x (W * up)`` (``up`` is 2 for a strided deconvolution,
    1 for the last module, as in the paper's multi-output decoder).
    """

    def __init__(self, c_skip: int, c_prev: int, mid: int, up: int = 2, reduce: int = 128) -> None:
        super().__init__()
        self.reduce = ConvRelu(c_skip, reduce, k=1)
        self.blend = ConvRelu(reduce + c_prev, mid, k=3)
        if up == 2:
            self.deconv = nn.ConvTranspose2d(mid, 2, 4, stride=2, padding=1)
        else:
            self.deconv = nn.ConvTranspose2d(mid, 2, 3, stride=1, padding=1)

    def forward(self, skip: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        u = torch.cat([self.reduce(skip), prev], dim=1)
        return self.deconv(self.blend(u))


class RefineModule(nn.Module):
    """RGMP/STM refinement module: ``ResBlock(skip) + upsample(coarse)`` then a ResBlock.

    skip: ``B x C_skip x 2H x 2W`` encoder features; coarse: ``B x C x H x W``.
    Returns ``B x C x 2H x 2W`` (upsampled to the skip's size, bilinear).
    """

    def __init__(self, c_skip: int, channels: int) -> None:
        super().__init__()
        self.skip = nn.Sequential(nn.Conv2d(c_skip, channels, 3, padding=1), ResBlock(channels))
        self.out = ResBlock(channels)

    def forward(self, skip: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(coarse, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(self.skip(skip) + up)


class ConvLSTMCell(nn.Module):
    """Convolutional LSTM cell (one 3x3 convolution computes the four gates).

    x: ``B x C_in x H x W``; state: ``(h, c)`` each ``B x C_hid x H x W`` or None (zeros).
    Returns the new ``(h, c)``.
    """

    def __init__(self, cin: int, hidden: int, k: int = 3) -> None:
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Conv2d(cin + hidden, 4 * hidden, k, padding=k // 2)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if state is None:
            z = x.new_zeros(x.shape[0], self.hidden, *x.shape[-2:])
            state = (z, z)
        h, c = state
        i, f, o, g = self.gates(torch.cat([x, h], dim=1)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c
