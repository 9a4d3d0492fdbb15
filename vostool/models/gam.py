"""GAM: Real-time High-Resolution Video Object Segmentation (Wang, Chen, Yang, Wu):
a global attention module over a fixed-size memory, channel-wise attention and a mask
embedding, with an STM-style decoder.

Architecture, point by point against ``papers/gam-realtime-highres.txt``:

- Two independent encoders (Sec. 3.2.2): a frame encoder (paper: ResNet-50; vostool's
  default ``mobilenet_v2``, ``--backbone resnet50`` gives the paper's) and a lighter
  mask encoder ``M_E(F_T, M)`` fed the frame's features and the mask (paper:
  ResNet-18-based; vostool's default a small strided convolution stack,
  ``mask_backbone="resnet18"`` gives the paper's). Every frame is encoded **once**
  (:meth:`GAM.encode`, shared by all objects); the query features of the current frame
  are reused as the memory frame features when the frame is added to the memory. **Matches.**
- Global attention module (Sec. 3.2.3-3.2.4), per object:
  ``A_T = F_T^T M_T`` (Eq. 1, ``C_N x C_M``, :func:`global_context`);
  ``G_T = A_T / T + (T - 1) / T G_{T-1}`` (Eq. 2, the running mean, :func:`update_global`;
  every past frame, the first one with its ground truth included, weighs equally);
  ``D_T = L_F G_{T-1}`` (Eq. 3, :func:`distribute`) summed at each pixel with the current
  frame's value ``V_L``. The memory is ``G`` (``K x C_N x C_M``) and a counter ``T``:
  its size never changes with the video's length. **Matches.**
- Channel-wise attention module (Eq. 4-7, :class:`ChannelAttention`): ``R = f1 f2``,
  ``R' = softmax`` over ``i`` (Eq. 5), ``f_R = f_in R'``, ``f_out = alpha f_R + f_in``
  with a learned ``alpha >= 0``. **Matches**, with ``R`` scaled by ``1/N`` (below).
- Mask embedding module (Sec. 3.4, Eq. 8, :class:`MaskEmbedding`): the three previous
  estimated masks (2 channels each: background, object; soft) and three coordinate
  channels (height, width, distance from the centre) concatenated, through four
  convolution + ReLU layers, into the decoder. **Matches.**
- Decoder "the same structure as STM": a 3x3 convolution and a residual block at 1/16
  over [CAM output, mask embedding], two refinement modules
  (:class:`~vostool.models.blocks.RefineModule`, 1/16 -> 1/8 -> 1/4, skip connections
  from the frame encoder), ReLU, a 3x3 convolution to 2 channels, bilinear upsampling
  to the input size. **Matches.**
- Training: :meth:`VOSModel.forward_clip` runs the clip recurrently (the first frame
  with its mask starts the memory, every later frame is added with the model's own
  soft prediction) with back-propagation through time; the paper trains on 10-frame
  clips. Loss: 2-way cross-entropy (the paper names none; STM's). **Matches** as far
  as the paper says.

Choices where the paper is silent (or deviations):

- Keys and values: ``F`` and ``L_F`` are one 3x3 key projection (``key_dim`` = C_N,
  default 64) of the frame encoder's 1/16 features; ``V_L`` is a 3x3 value projection
  (``value_dim`` = C_M, default 128) of the same features; ``M`` is the mask encoder's
  output (C_M channels). The paper uses STM's widths (128/512); ours are smaller for speed.
- Normalisation (as in the global context module of GC [14] that GAM builds on): the
  memory keys are softmax-normalised over positions and the query keys over channels
  before Eq. 1 and Eq. 3. Eq. 1-3 are applied exactly to the normalised keys. Without
  it ``A_T`` grows with the number of pixels, so a model trained at 384x384 would not
  transfer to 480p or to the engine's other scales.
- ``G`` and ``T`` are kept in float32 whatever the autocast precision (a running mean
  over thousands of frames in fp16 would stop changing). Eq. 4-6 run in float32 too:
  ``R`` sums ``H x W`` products and overflows fp16.
- ``alpha = softplus(a)`` with ``a`` learned and initialised to -6 (``alpha`` ~ 0.0025):
  non-negative, never stuck at 0, and CAM starts close to identity like DANet's
  ``gamma = 0``.
- Eq. 4 is scaled by ``1/N`` (N = H x W positions at 1/16): ``R`` becomes the channels'
  second-moment matrix, the same at every input size (as the keys' normalisation makes
  Eq. 1 size-independent). As written, ``R = f f^T`` sums ``N`` products: on the
  shipped model's CAM input (a bmx-bumps frame at 480p, N = 30 x 54, features of std
  0.6) the softmax of Eq. 5 was one-hot (mean over columns of the largest weight 0.983,
  largest 1.0), so ``f_R`` copied the strongest channel, nothing in Eq. 5 could learn and
  ``alpha`` stayed at its initial 0.0023 in the shipped weights. With ``1/sqrt(N)`` it
  stays size-dependent and still peaky there (0.53, largest 0.9998); with ``1/N`` the
  weights are soft (0.012, largest 0.021) and scale with the features, so Eq. 5 and
  ``alpha`` get gradients. The shipped weights were trained without the scaling; they
  load unchanged (no parameter changed) and, with alpha at 0.0023, their output barely
  moves: dev J&F 0.64269 before, 0.64267 after (J 0.64076 / 0.64076, F 0.64462 /
  0.64458; ``vostool eval davis16 --davis-root ../shared/data/DAVIS2016-train --split
  train --sequences bmx-bumps,car-turn,dance-jump,horsejump-low,kite-walk --model gam``,
  shipped size 480, bf16 on the CPU). Retraining with the scaling is issue 12 section 2.
  The file retrained on 2026-12-07 (1000 Adam steps at lr <= 1e-4 from the previous file,
  with the scaling) still has ``alpha`` 0.00232 (before: 0.00233): Adam moves ``a`` by about
  the learning rate per step, so from -6 it cannot reach a useful ``alpha`` in a run of that
  length. So ``a`` now has its own rate: ``GAM.lr_scales`` makes it learn at 300x the run's
  (:func:`vostool.train.freeze.param_groups`; on a first Adam step it moves 300x as far,
  ``tests/test_train_parts.py``). Measured: 600 steps from that file with it (lr 1e-4 cosine,
  so ``a`` could move by up to ~9; ``runs/gam-cam``, ``references/README.md``) took ``alpha``
  *down*, 0.00232 -> 0.00097 (``a`` -6.06 -> -6.94, steadily: -6.15, -6.68, -6.91 at steps
  111, 202, 406): free to grow, the gate is closed by the gradient, i.e. in a network whose
  decoder was trained without CAM, mixing channels by Eq. 4-6 only hurts the loss. CAM as
  the paper means it would have to be trained in from the first stage with ``alpha`` well
  above 0 (not done on the CPU); the shipped model's CAM is close to identity.
- Mask encoder: ``mask_backbone="small"`` (default) is four stride-2 3x3 convolutions
  + ReLU over the object's soft probability (16/32/64/64 channels, 1/16), concatenated
  with the frame's 1/16 features ``F_T`` and fused by a 3x3 convolution and a residual
  block into C_M channels. Any registered backbone name (the paper: ``resnet18``) runs
  that backbone over image + mask (one extra input filter, random) and fuses its 1/16
  features with ``F_T`` the same way (as STCN's value encoder).
- The three previous masks are kept at 1/16 (average-pooled), where the embedding
  (``embed_dim`` channels, default 32) joins the decoder; at the first frame the three
  slots all hold the given mask.
- Decoder widths ``decoder_channels`` at 1/16, 1/8, 1/4 default to 128/64/32 (STM:
  256 everywhere) for speed; a 1x1 convolution projects between unequal widths.
- Multi-object: objects run as one batch (one memory each), merged by RGMP's soft
  aggregation in the engine (background term ``1 - max_k p_k``: the paper does not say
  how it merges objects); each object's mask encoder sees its merged probability.
- Search window (the engine's, :mod:`vostool.engine.window`; not in the paper) on by default,
  margin 1.0: each object's foreground is kept within its previous box grown by 1.0 x the
  box's longer side. Measured with the shipped weights at size 480, fp32 on an AVX2 CPU
  (``vostool eval ... --window M``, 2026-12-07): dev split J&F 0.643 off, 0.646 at 1.0;
  two-object dev pairs 0.544 off, 0.661 at 1.0 (global attention matches the other
  object's look-alike pixels anywhere in the frame; the window keeps them out).
- Connected to where it was (``window_connected``, the engine's
  :func:`~vostool.engine.window.keep_connected`): with the window on, only the parts of an
  object's new mask that touch its previous mask (grown by 5% of the frame's longer side) are
  kept. Measured with the weights shipped since 2026-12-07's third session, size 480, fp32 on
  an AVX2 CPU (``vostool eval`` with every default, before and after the rule): dev split J&F
  0.697 -> 0.710 (dance-jump 0.457 -> 0.516, the others within 0.003), two-object dev pairs
  0.747 -> 0.749.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from vostool.errors import VostoolError
from vostool.models.backbones import build_backbone, list_backbones
from vostool.models.base import Features, State, VOSModel
from vostool.models.blocks import ConvRelu, RefineModule, ResBlock, coord_maps
from vostool.models.registry import register_model


# -- the global attention module's math (Eq. 1-3) ------------------------------------
def global_context(keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Eq. 1, ``A_T = F^T M``.

    keys: ``K x C_N x N`` (``F`` with channels first, N = H x W positions);
    values: ``K x C_M x N``. Returns ``K x C_N x C_M``.
    """
    return torch.bmm(keys, values.transpose(1, 2))


def update_global(
    context: torch.Tensor, count: torch.Tensor, a: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 2, ``G_T = A_T / T + (T - 1) / T G_{T-1}``.

    context: ``G_{T-1}``, ``K x C_N x C_M``; count: ``T - 1`` per object, ``K`` float;
    a: ``A_T``, ``K x C_N x C_M``. Returns ``(G_T, T)``, float32. With ``count`` = 0 the
    result is ``A_T`` itself.
    """
    t = count.float() + 1
    w = (1.0 / t).view(-1, 1, 1)
    return a.float() * w + context.float() * (1.0 - w), t


def distribute(query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Eq. 3, ``D_T = L_F G_{T-1}``.

    query: ``L_F`` with channels first, ``K x C_N x N``; context: ``K x C_N x C_M``.
    Returns ``D_T`` with channels first, ``K x C_M x N``.
    """
    return torch.bmm(context.transpose(1, 2).to(query.dtype), query)


# -- modules ---------------------------------------------------------------------------
class ChannelAttention(nn.Module):
    """Channel-wise attention module (Eq. 4-7).

    ``R = f1 f2 / N`` (``C x C``, N = H x W positions), ``R'(i, j) = exp R(i, j) / sum_i
    exp R(i, j)``, ``f_R = f_in R'``, ``f_out = alpha f_R + f_in`` with
    ``alpha = softplus(a) >= 0``.

    x: ``B x C x H x W`` -> ``B x C x H x W``. Computed in float32.
    """

    def __init__(self, alpha_init: float = -6.0) -> None:
        super().__init__()
        self.alpha_raw = nn.Parameter(torch.tensor(float(alpha_init)))

    @property
    def alpha(self) -> torch.Tensor:
        return F.softplus(self.alpha_raw)

    @staticmethod
    def attention(f: torch.Tensor) -> torch.Tensor:
        """Eq. 4-5 with the 1/N scaling: f ``B x C x N`` float -> ``R'`` ``B x C x C``
        (each column ``j`` a distribution over ``i``)."""
        r = torch.bmm(f, f.transpose(1, 2)) / f.shape[-1]          # Eq. 4, scaled: B x C x C
        return torch.softmax(r, dim=1)                              # Eq. 5: over i

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        with torch.autocast(device_type=x.device.type, enabled=False):
            f = x.float().reshape(b, c, h * w)                      # f1: B x C x N
            r = self.attention(f)                                   # Eq. 4-5
            f_r = torch.bmm(r.transpose(1, 2), f)                   # Eq. 6 (channels first)
            out = self.alpha * f_r + f                              # Eq. 7
        return out.reshape(b, c, h, w).to(x.dtype)


class MaskEmbedding(nn.Module):
    """Mask embedding module (Eq. 8): ``E^{i-3} + E^{i-2} + E^{i-1} + P`` (concatenated)
    through four 3x3 convolution + ReLU layers.

    masks: ``B x 6 x h x w`` (three 2-channel masks, oldest first) -> ``B x C x h x w``.
    """

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            ConvRelu(6 + 3, channels), ConvRelu(channels, channels),
            ConvRelu(channels, channels), ConvRelu(channels, channels),
        )

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        b, _, h, w = masks.shape
        pos = coord_maps(b, h, w, masks.device, masks.dtype)
        return self.layers(torch.cat([masks, pos], dim=1))


class SmallMaskEncoder(nn.Module):
    """The default light mask encoder: four stride-2 3x3 conv + ReLU layers.

    mask: ``B x 1 x H x W`` -> ``B x 64 x H/16 x W/16``.
    """

    out_channels = 64

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            ConvRelu(1, 16, stride=2), ConvRelu(16, 32, stride=2),
            ConvRelu(32, 64, stride=2), ConvRelu(64, 64, stride=2),
        )

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return self.layers(mask)


def _project(cin: int, cout: int) -> nn.Module:
    """1x1 projection between decoder widths (identity when they are equal)."""
    return nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)


@register_model(
    "gam",
    title="GAM: Real-time High-Resolution Video Object Segmentation",
    paper="Wang, Chen, Yang, Wu (Global Attention Module, NUIST / University of Macau)",
    published="DAVIS-2016 val J&F 90.2 (J 91.0, F 89.4) at 28 FPS (0.04 s per frame); "
              "DAVIS-2017 val J&F 84.9 (J 82.4, F 87.4); 25 FPS on 2K video",
)
class GAM(VOSModel):
    """GAM with a configurable frame encoder and mask encoder.

    encode: image ``B x 3 x H x W`` -> ``{"s4", "s8", "s16"`` backbone features,
    ``"key": B x C_N x H/16 x W/16``, ``"value": B x C_M x H/16 x W/16}``.
    State (fixed size): ``{"context": K x C_N x C_M`` (G, float32), ``"count": K``
    (T, float32), ``"masks": K x 6 x H/16 x W/16`` (three previous masks)``}``.
    predict -> ``K x 2 x H x W`` logits.

    Args:
        backbone: frame encoder (``mobilenet_v2``, ``resnet18``, ``resnet50``).
        pretrained: load ImageNet weights into the encoders (training).
        key_dim: C_N. value_dim: C_M. embed_dim: mask embedding width.
        decoder_channels: decoder widths at 1/16, 1/8, 1/4.
        mask_backbone: ``"small"`` or a registered backbone name (paper: ``resnet18``).
    """

    stride = 16
    search_window = 1.0  # measured: see the module docstring
    window_connected = True  # measured: see the module docstring
    lr_scales = {"cam.alpha_raw": 300.0}  # CAM's gate learns at 300x the rate: see the module docstring

    def __init__(
        self, backbone: str = "mobilenet_v2", pretrained: bool = False, key_dim: int = 64,
        value_dim: int = 128, embed_dim: int = 32,
        decoder_channels: tuple[int, int, int] | list[int] = (128, 64, 32),
        mask_backbone: str = "small",
    ) -> None:
        decoder_channels = [int(c) for c in decoder_channels]
        if len(decoder_channels) != 3 or min(decoder_channels) <= 0:
            raise VostoolError(f"gam: decoder_channels must be three positive widths, got {decoder_channels}")
        if mask_backbone != "small" and mask_backbone not in list_backbones():
            raise VostoolError(f"gam: unknown mask_backbone '{mask_backbone}'; choose 'small' or one of: "
                               f"{', '.join(list_backbones())}")
        super().__init__(backbone, key_dim=int(key_dim), value_dim=int(value_dim), embed_dim=int(embed_dim),
                         decoder_channels=decoder_channels, mask_backbone=mask_backbone)
        self.encoder = build_backbone(backbone, pretrained=pretrained)
        c = self.encoder.channels
        self.key_proj = nn.Conv2d(c["s16"], key_dim, 3, padding=1)
        self.value_proj = nn.Conv2d(c["s16"], value_dim, 3, padding=1)
        if mask_backbone == "small":
            self.mask_encoder: nn.Module = SmallMaskEncoder()
            cm = SmallMaskEncoder.out_channels
        else:
            self.mask_encoder = build_backbone(mask_backbone, pretrained=pretrained, extra_in_channels=1)
            cm = self.mask_encoder.channels["s16"]
        self.mask_fuse = nn.Sequential(nn.Conv2d(c["s16"] + cm, value_dim, 3, padding=1), ResBlock(value_dim))
        self.cam = ChannelAttention()
        self.mem = MaskEmbedding(embed_dim)
        d16, d8, d4 = decoder_channels
        self.dec_in = nn.Sequential(nn.Conv2d(value_dim + embed_dim, d16, 3, padding=1), ResBlock(d16))
        self.proj8 = _project(d16, d8)
        self.refine8 = RefineModule(c["s8"], d8)
        self.proj4 = _project(d8, d4)
        self.refine4 = RefineModule(c["s4"], d4)
        self.pred = nn.Conv2d(d4, 2, 3, padding=1)

    # -- encoders ------------------------------------------------------------------------
    def encode(self, image: torch.Tensor) -> Features:
        """Frame encoder + key/value projections, once per frame (batch B)."""
        feats = self.encoder(image)
        feats["key"] = self.key_proj(feats["s16"])
        feats["value"] = self.value_proj(feats["s16"])
        return feats

    def _memory_value(self, image: torch.Tensor, feats: Features, probs: torch.Tensor) -> torch.Tensor:
        """``M_E(F_T, M)``: probs ``K x 1 x H x W`` -> ``K x C_M x H/16 x W/16``."""
        f16 = feats["s16"]
        probs = probs.to(f16.dtype)
        if isinstance(self.mask_encoder, SmallMaskEncoder):
            m = self.mask_encoder(probs)
        else:
            m = self.mask_encoder(torch.cat([image.to(f16.dtype), probs], dim=1))["s16"]
        if m.shape[-2:] != f16.shape[-2:]:
            m = F.interpolate(m, size=f16.shape[-2:], mode="bilinear", align_corners=False)
        return self.mask_fuse(torch.cat([f16, m], dim=1))

    def _context(self, image: torch.Tensor, feats: Features, probs: torch.Tensor) -> torch.Tensor:
        """``A_T`` of the current frame for K objects: ``K x C_N x C_M`` (float32)."""
        key = feats["key"].flatten(2)                                  # K x C_N x N
        keys = torch.softmax(key.float(), dim=2)                       # over positions
        values = self._memory_value(image, feats, probs).flatten(2)    # K x C_M x N
        return global_context(keys.to(values.dtype), values).float()

    def _pooled_mask(self, probs: torch.Tensor) -> torch.Tensor:
        p = F.avg_pool2d(probs.float(), self.stride)
        return torch.cat([1 - p, p], dim=1)

    # -- the four steps ------------------------------------------------------------------
    def init_state(self, image: torch.Tensor, feats: Features, masks: torch.Tensor) -> State:
        """Start the memory with the given masks ``K x 1 x H x W``: ``G_1 = A_1``, ``T = 1``."""
        a = self._context(image, feats, masks)
        k = a.shape[0]
        context, count = update_global(torch.zeros_like(a), a.new_zeros(k), a)
        pooled = self._pooled_mask(masks)
        return {"context": context, "count": count, "masks": torch.cat([pooled] * 3, dim=1)}

    def update(self, image: torch.Tensor, feats: Features, state: State, probs: torch.Tensor) -> State:
        """Add the current frame (its features, the merged ``probs`` ``K x 1 x H x W``) to
        the running mean and shift the three previous masks."""
        a = self._context(image, feats, probs)
        context, count = update_global(state["context"], state["count"], a)
        masks = torch.cat([state["masks"][:, 2:], self._pooled_mask(probs)], dim=1)
        return {"context": context, "count": count, "masks": masks}

    def predict(self, image: torch.Tensor, feats: Features, state: State) -> torch.Tensor:
        """Read the memory, CAM, MEM, decoder. Returns logits ``K x 2 x H x W``."""
        key = feats["key"]
        k, _, h, w = key.shape
        query = torch.softmax(key.flatten(2).float(), dim=1)           # over channels
        d = distribute(query, state["context"]).view(k, -1, h, w)      # K x C_M x h x w
        f_in = d.to(feats["value"].dtype) + feats["value"]
        f_out = self.cam(f_in)
        emb = self.mem(state["masks"].to(f_out.dtype))
        x = self.dec_in(torch.cat([f_out, emb], dim=1))                # 1/16
        x = self.refine8(feats["s8"], self.proj8(x))                   # 1/8
        x = self.refine4(feats["s4"], self.proj4(x))                   # 1/4
        out = self.pred(F.relu(x))
        return F.interpolate(out, size=image.shape[-2:], mode="bilinear", align_corners=False)
