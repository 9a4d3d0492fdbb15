"""DTN: Fast Video Object Segmentation via Dynamic Targeting Network (Zhang et al., ICCV 2019).

Architecture, point by point against ``papers/dtn.txt``:

- Shared backbone with multi-level features (paper: ResNet-50 Res2..Res5, ``f^2..f^5``).
  vostool's backbones give three levels at output stride 16: ``s4`` (Res2), ``s8``
  (Res3) and ``s16`` (the dilated last stage). Levels 4 and 5 of the paper are both read
  from ``s16`` (at RoI sizes 28 and 14), so the four refinement stages stay four.
  **Deviation** forced by the shared backbones (their stride-32 stage is dilated).
- Dynamic targeting network with a decision module (DM), a box propagation (BP) stream
  and a box re-identification (BR) stream; the DM's confidence ``C_i`` above ``theta_c``
  (default 0.83, the paper's) sends the frame through BP, otherwise through BR.
  **Matches.** The decision is per frame: ``C_i`` is the mean of the objects' scores
  (the DM regresses each object's BP IoU; Eq. 1 averages them over the K objects).
- Box propagation: the previous mask is warped to the current frame with optical flow
  (bilinear) and the box of the warped mask (threshold 0.5) is the target RoI.
  **Matches**, with a different flow (next point).
- Optical flow: FlowNet2-S weights cannot be had here; flow comes from
  :mod:`vostool.models.flow` (default OpenCV DIS, ``fast`` preset, on the CPU; RAFT-small
  with ``model.set_flow("raft")`` when its weights are available). **Deviation.**
- Decision module inputs: the paper feeds FlowNet2-S Conv6 features to an average pool
  and two FC layers (256, 1). DIS has no features, so the DM sees, per object (all
  inputs detached, so that L_DM trains the DM only): the average-pooled 7x7 RoI-Align
  ``s16`` feature of the propagated box ``f(T_BP)``, its absolute differences to
  ``f(T_1)`` and ``f(T_{i-1})`` (the terms of Eq. 2), 6 flow statistics in the previous
  box (mean and spread of dx, dy relative to the box size, mean magnitude relative to the
  box diagonal, global mean magnitude) and 6 mask statistics (warped/previous mask mass,
  IoU of previous and propagated boxes, log width and height change, warped-mask fill of
  the propagated box, empty-warp flag). Head: FC 256, ReLU, FC 1, sigmoid. **Deviation**
  (inputs), **matches** (head).
- Conditional RPN on ``s16`` (paper: after Res4): anchors only at the 3x3 grid of
  feature cells around the previous box centre (one stride apart), scales
  ``{0.5, 1, 1.5} x s_{i-1}`` and aspect ratios ``{0.5, 1, 1.5} x r_{i-1}`` from the
  previous box: 9 x 9 = 81 anchors per object (:func:`conditional_anchors`). The RPN head
  (3x3 conv, 1x1 objectness and box-regression convs, as in Faster/Mask R-CNN) is read
  at the 9 anchor centres. **Matches.**
- Re-identification: every decoded candidate is described by ``f(B)`` = average pooling
  of its 7x7 RoI Align on ``s16`` and scored with Eq. 2, the sum of the L2 distances to
  the first-frame and previous-frame targets. The paper says to take the candidate with
  "the largest score" while defining the score as a distance; vostool takes the most
  similar candidate, which is what the text means. The CRPN's objectness (the paper's
  proposals come "like the original RPN", i.e. ranked by objectness) enters the ranking
  (:func:`reid_scores`): a candidate's cost is its Eq. 2 distance relative to the
  closest candidate's, minus its objectness probability, ``S_j / min_j S_j -
  sigmoid(o_j)`` (lowest wins), so objectness can overrule up to a doubling of the
  distance. Before, the objectness the proposal head is trained for was never used.
  Chosen on the dev split with the shipped weights, every frame forced through BR (size
  240, first 40 frames of the five dev sequences, 195 frames; ``python
  scripts/dtn_reid_probe.py ../shared/data/DAVIS2016-train
  bmx-bumps,car-turn,dance-jump,horsejump-low,kite-walk``): mean IoU of the chosen box with the ground-truth box 0.621 by distance
  alone, 0.625 by objectness alone, 0.630 / 0.619 / 0.622 for the closest of the 9 / 27
  / 40 most object-like, 0.633 / 0.644 / **0.648** with objectness weights 0.25 / 0.5 /
  1 in the cost above (the best candidate: 0.764). Dev J&F of the shipped weights with
  every default (``theta_c`` 0.83, size 480; ``vostool eval davis16 --davis-root
  ../shared/data/DAVIS2016-train --split train --sequences
  bmx-bumps,car-turn,dance-jump,horsejump-low,kite-walk --model dtn``, bf16 on the CPU):
  0.6106 by distance alone, 0.6110 with objectness (J 0.6226 / 0.6214, F 0.5986 /
  0.6006; four sequences up by 0.003-0.016, horsejump-low down by 0.029).
- Mask refinement network: RoI Align on each level at ``m_j = M / 2^(j-2)``, M = 112
  (``roi_size``), four mask refinement modules from level 5 to level 2. Eq. 3
  (``f^U = Conv^2(f_j + Up(f^M_{j+1}))``) is the shared
  :class:`~vostool.models.blocks.RefineModule` (a 3x3 conv + residual block adapts the
  RoI feature's width, then a residual block after the sum: ``Conv^2`` with an identity
  shortcut); Eq. 4 (``f^M = Conv^2(f^U) * Y + f^U``) is implemented as written, ``Y``
  being the warped previous mask RoI-aligned to ``m_j``. A 3x3 conv and a sigmoid give
  the ``M x M`` RoI mask, pasted back into the frame (:func:`paste_masks`). **Matches**,
  except the residual form of ``Conv^2`` in Eq. 3 and the channel widths:
  ``mrn_channels`` default ``[128, 64, 64, 32]`` for levels 5..2 (paper: 256 everywhere,
  pass ``mrn_channels=[256, 256, 256, 256]``), with a 1x1 conv between levels whose
  widths differ, so that a 112 x 112 RoI stays affordable on CPUs.
- Losses (Eq. 5): MSE between the DM score and the Eq. 1 IoU of the BP box with the
  ground-truth box; CRPN objectness (binary cross-entropy, IoU >= 0.7 positive or the
  best anchor, < 0.3 negative) and smooth-L1 box regression as in Mask R-CNN; cross
  entropy of the pasted masks. **Matches.** See :meth:`DTN.training_losses`.

Choices where the paper is silent:

- The guidance mask is the warped *soft* previous mask (the engine's merged
  probabilities; the paper warps the binary mask): it keeps the gradient for BPTT.
  Boxes are always taken at 0.5.
- The target RoI is enlarged by ``box_margin`` (default 0.1 of its size per side,
  clipped to the frame, at least 8 px) before the MRN, so that a growing object is not
  cut by a tight propagated box.
- ``T_{i-1}`` (CRPN condition, Eq. 2 second term) is the box of the mask fed back for
  frame i-1; if that mask is empty the previous box is kept.
- Multi-object: objects are a batch; their masks are merged with RGMP's soft
  aggregation in the engine, background term ``1 - max_k p_k`` (the paper does not say
  how it merges objects).
- No engine search window by default (:mod:`vostool.engine.window`): DTN already confines
  each object to its propagated or re-identified box, and the window changed nothing
  measurable (shipped weights, size 480, fp32 on an AVX2 CPU, ``vostool eval ... --window
  M``, 2026-12-07: dev split J&F 0.611 off, 0.611 at 1.0; two-object dev pairs 0.667 at
  both, identical to four decimals).

Runtime options (plain attributes, not saved in checkpoints): ``theta_c`` (float) and
the flow (``set_flow(name)``, see :func:`vostool.models.flow.get_flow`). Per-frame stream
statistics for ``bench``: ``model.stream_counts`` = ``{"propagation": n,
"reidentification": m}`` counts frames (predict calls in eval mode; one per input scale),
``model.propagation_share()`` gives ``n / (n + m)``, ``reset_stream_counts()`` zeroes them,
``last_confidence`` / ``last_stream`` describe the latest frame.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import roi_align

from vostool.errors import VostoolError
from vostool.models.backbones import build_backbone
from vostool.models.base import Features, State, VOSModel
from vostool.models.blocks import ConvRelu, RefineModule
from vostool.models.flow import FlowEstimator, get_flow, to_gray_uint8, warp
from vostool.models.registry import register_model

STREAMS = ("propagation", "reidentification")
_FEAT_STRIDE = {"s4": 4, "s8": 8, "s16": 16}
_MATCH_SIZE = 7  # RoI Align size for matching features (paper: 7x7)
_N_STATS = 12  # flow (6) + mask (6) statistics fed to the decision module
_FLOWS: dict[tuple[str, str], FlowEstimator] = {}  # estimators are not module state (cv2 objects)


# -- boxes --------------------------------------------------------------------------------
# Boxes are (x1, y1, x2, y2) in pixels of the (padded) input; pixel i covers [i, i + 1),
# the convention of roi_align(aligned=True).
def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise IoU of boxes ``... x 4`` and ``... x 4`` (broadcast). Returns ``...``."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a + area_b - inter).clamp(min=1e-6)


def mask_boxes(masks: torch.Tensor, threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Tight boxes of masks ``K x 1 x H x W`` (or ``K x H x W``) above ``threshold``.

    Returns ``(boxes K x 4 float, valid K bool)``; an empty mask gives a zero box, invalid.
    """
    m = masks.reshape(masks.shape[0], *masks.shape[-2:]) > threshold
    k, h, w = m.shape
    rows, cols = m.any(2), m.any(1)
    valid = rows.any(1)
    ar_h = torch.arange(h, device=m.device)
    ar_w = torch.arange(w, device=m.device)
    y1 = torch.where(rows, ar_h, h).amin(1)
    y2 = torch.where(rows, ar_h, -1).amax(1) + 1
    x1 = torch.where(cols, ar_w, w).amin(1)
    x2 = torch.where(cols, ar_w, -1).amax(1) + 1
    boxes = torch.stack([x1, y1, x2, y2], 1).float()
    return boxes * valid[:, None], valid


def conditional_anchors(
    prev_box: torch.Tensor, grid: int = 3, per_cell: int = 9, stride: float = 16.0
) -> torch.Tensor:
    """CRPN anchors conditioned on the previous target box (DTN Sec. 3.2, Fig. 5b).

    prev_box: ``K x 4`` (or ``4``) previous RoIs ``(x1, y1, x2, y2)``.
    Anchors are centred on a ``grid x grid`` lattice of feature cells (``stride`` pixels
    apart) around the previous box centre; each cell has ``per_cell = n^2`` anchors with
    scales ``{j/2 * s}`` and aspect ratios (h/w) ``{j/2 * r}``, ``j = 1..n``, where
    ``s = sqrt(w h)`` and ``r = h / w`` of the previous box.
    Returns ``K x (grid^2 * per_cell) x 4`` (``81 x 4`` for a single box), ordered cell
    (row-major) then scale then ratio; ``.flatten(0, 1)`` gives the ``N x 4`` list.
    """
    single = prev_box.dim() == 1
    b = prev_box.reshape(-1, 4).float()
    n = int(round(math.sqrt(per_cell)))
    if n * n != per_cell:
        raise ValueError(f"per_cell must be a square (scales x ratios), got {per_cell}")
    factors = 0.5 * torch.arange(1, n + 1, device=b.device, dtype=b.dtype)
    w = (b[:, 2] - b[:, 0]).clamp(min=1.0)
    h = (b[:, 3] - b[:, 1]).clamp(min=1.0)
    cx = (b[:, 0] + b[:, 2]) / 2
    cy = (b[:, 1] + b[:, 3]) / 2
    scales = torch.sqrt(w * h)[:, None] * factors  # K x n
    ratios = (h / w)[:, None] * factors  # K x n
    aw = (scales[:, :, None] / ratios[:, None, :].sqrt()).flatten(1)  # K x n^2 (scale-major)
    ah = (scales[:, :, None] * ratios[:, None, :].sqrt()).flatten(1)
    off = (torch.arange(grid, device=b.device, dtype=b.dtype) - (grid - 1) / 2) * stride
    oy, ox = torch.meshgrid(off, off, indexing="ij")
    ccx = cx[:, None] + ox.flatten()  # K x grid^2
    ccy = cy[:, None] + oy.flatten()
    x1 = ccx[:, :, None] - aw[:, None, :] / 2
    y1 = ccy[:, :, None] - ah[:, None, :] / 2
    x2 = ccx[:, :, None] + aw[:, None, :] / 2
    y2 = ccy[:, :, None] + ah[:, None, :] / 2
    anchors = torch.stack([x1, y1, x2, y2], -1).flatten(1, 2)  # K x grid^2*n^2 x 4
    return anchors[0] if single else anchors


_DELTA_CLIP = math.log(1000.0 / 16)


def encode_boxes(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Faster R-CNN box deltas ``(dx, dy, dw, dh)`` of ``boxes`` w.r.t. ``anchors`` (``... x 4``)."""
    aw = (anchors[..., 2] - anchors[..., 0]).clamp(min=1e-3)
    ah = (anchors[..., 3] - anchors[..., 1]).clamp(min=1e-3)
    bw = (boxes[..., 2] - boxes[..., 0]).clamp(min=1e-3)
    bh = (boxes[..., 3] - boxes[..., 1]).clamp(min=1e-3)
    dx = ((boxes[..., 0] + boxes[..., 2]) - (anchors[..., 0] + anchors[..., 2])) / (2 * aw)
    dy = ((boxes[..., 1] + boxes[..., 3]) - (anchors[..., 1] + anchors[..., 3])) / (2 * ah)
    return torch.stack([dx, dy, torch.log(bw / aw), torch.log(bh / ah)], -1)


def decode_boxes(anchors: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode_boxes`: anchors and deltas ``... x 4`` -> boxes ``... x 4``."""
    aw = anchors[..., 2] - anchors[..., 0]
    ah = anchors[..., 3] - anchors[..., 1]
    cx = (anchors[..., 0] + anchors[..., 2]) / 2 + deltas[..., 0] * aw
    cy = (anchors[..., 1] + anchors[..., 3]) / 2 + deltas[..., 1] * ah
    w = aw * torch.exp(deltas[..., 2].clamp(max=_DELTA_CLIP))
    h = ah * torch.exp(deltas[..., 3].clamp(max=_DELTA_CLIP))
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def clip_boxes(boxes: torch.Tensor, height: int, width: int, min_size: float = 1.0) -> torch.Tensor:
    """Clip ``... x 4`` boxes to the frame and make them at least ``min_size`` wide and high."""
    x1 = boxes[..., 0].clamp(0, width)
    y1 = boxes[..., 1].clamp(0, height)
    x2 = boxes[..., 2].clamp(0, width)
    y2 = boxes[..., 3].clamp(0, height)
    ms_w, ms_h = min(min_size, width), min(min_size, height)
    cx = ((x1 + x2) / 2).clamp(ms_w / 2, width - ms_w / 2)
    cy = ((y1 + y2) / 2).clamp(ms_h / 2, height - ms_h / 2)
    hw = torch.maximum((x2 - x1) / 2, torch.full_like(x1, ms_w / 2))
    hh = torch.maximum((y2 - y1) / 2, torch.full_like(y1, ms_h / 2))
    return torch.stack([(cx - hw).clamp(0, width), (cy - hh).clamp(0, height),
                        (cx + hw).clamp(0, width), (cy + hh).clamp(0, height)], -1)


def paste_masks(roi_probs: torch.Tensor, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Paste RoI masks back into the frame (bilinear), zero outside each box.

    roi_probs: ``K x C x m x m`` (values of the RoI grid, e.g. sigmoid probabilities);
    boxes: ``K x 4`` ``(x1, y1, x2, y2)`` in frame pixels. A pixel belongs to the box when
    its centre ``(x + 0.5, y + 0.5)`` lies in it. Returns ``K x C x height x width``.
    Inverse of ``roi_align(..., aligned=True)``; differentiable in ``roi_probs``.
    """
    k = roi_probs.shape[0]
    b = boxes.float()
    dev = roi_probs.device
    xs = torch.arange(width, device=dev, dtype=torch.float32) + 0.5
    ys = torch.arange(height, device=dev, dtype=torch.float32) + 0.5
    u = (xs[None] - b[:, 0:1]) / (b[:, 2:3] - b[:, 0:1]).clamp(min=1e-6)  # K x W, box units
    v = (ys[None] - b[:, 1:2]) / (b[:, 3:4] - b[:, 1:2]).clamp(min=1e-6)  # K x H
    grid = torch.stack([(2 * u - 1)[:, None, :].expand(k, height, width),
                        (2 * v - 1)[:, :, None].expand(k, height, width)], -1)
    out = F.grid_sample(roi_probs.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    inside = ((u >= 0) & (u <= 1))[:, None, :] & ((v >= 0) & (v <= 1))[:, :, None]
    return out * inside[:, None].to(out.dtype)


def _is_shared(x: torch.Tensor) -> bool:
    """True when every row of ``x`` is the same frame (batch 1, or an engine expansion)."""
    return x.shape[0] == 1 or x.stride(0) == 0


def roi_features(
    feat: torch.Tensor, boxes: torch.Tensor, size: int, stride: float, owner: torch.Tensor | None = None
) -> torch.Tensor:
    """RoI Align (aligned, sampling ratio 2) of ``boxes N x 4`` on ``feat B x C x h x w``.

    owner: ``N`` row of ``feat`` for each box (default ``arange(N)``); ignored when ``feat``
    is one frame expanded to K rows. Returns ``N x C x size x size`` float32.
    """
    n = boxes.shape[0]
    if _is_shared(feat):
        src, idx = feat[:1], torch.zeros(n, device=boxes.device)
    else:
        src = feat
        idx = (owner if owner is not None else torch.arange(n, device=boxes.device)).float()
    if src.dtype != torch.float32:
        src = src.float()
    rois = torch.cat([idx[:, None].to(boxes.device), boxes.float()], 1).to(src.device)
    return roi_align(src, rois, size, spatial_scale=1.0 / stride, sampling_ratio=2, aligned=True)


def reid_scores(dist: torch.Tensor, obj: torch.Tensor) -> torch.Tensor:
    """Re-identification cost of each candidate (lowest wins): the Eq. 2 distance
    relative to the closest candidate's, minus the objectness probability.

    dist: ``K x A`` Eq. 2 distances; obj: ``K x A`` CRPN objectness logits. Returns ``K x A``.
    """
    rel = dist.float() / dist.float().amin(1, keepdim=True).clamp(min=1e-6)
    return rel - torch.sigmoid(obj.float())


def _conv2(c: int) -> nn.Sequential:
    """``Conv^2`` of Eq. 4: two 3x3 convolutions (ReLU between)."""
    return nn.Sequential(ConvRelu(c, c, 3), nn.Conv2d(c, c, 3, padding=1))


@register_model(
    "dtn",
    title="Fast Video Object Segmentation via Dynamic Targeting Network",
    paper="Zhang, Lin, Zhang, Lu, He. ICCV 2019",
    published="DAVIS-2016 val J&F 83.6 (J 83.7, F 83.5) at 14 FPS on a GTX 1080 Ti; DAVIS-2017 val J&F 67.4",
)
class DTN(VOSModel):
    """DTN + MRN with a configurable backbone.

    encode: image ``B x 3 x H x W`` -> ``{"s4", "s8", "s16"}`` backbone features.
    State (K objects first)::

        prev_mask  K x 1 x H x W   mask fed back for the previous frame (probabilities)
        prev_box   K x 4           T_{i-1}, box of that mask (pixels)
        first_feat K x C16         f(T_1), matching feature of the first-frame target
        prev_feat  K x C16         f(T_{i-1})
        prev_gray  K x 1 x H x W   previous frame, uint8 grayscale, on the CPU (for flow)

    predict -> ``K x 2 x H x W`` logits ``[0, z]`` (softmax = sigmoid of the pasted mask).
    """

    def __init__(
        self, backbone: str = "mobilenet_v2", pretrained: bool = False, roi_size: int = 112,
        mrn_channels: tuple[int, ...] | list[int] = (128, 64, 64, 32), rpn_channels: int = 256,
        dm_hidden: int = 256, box_margin: float = 0.1, theta_c: float = 0.83, flow: str = "dis",
    ) -> None:
        roi_size = int(roi_size)
        if roi_size % 8 or roi_size < 8:
            raise VostoolError(f"dtn: roi_size must be a positive multiple of 8, got {roi_size}")
        mrn = [int(c) for c in mrn_channels]
        if len(mrn) != 4:
            raise VostoolError(f"dtn: mrn_channels needs 4 widths (levels 5, 4, 3, 2), got {mrn}")
        super().__init__(backbone, roi_size=roi_size, mrn_channels=mrn, rpn_channels=int(rpn_channels),
                         dm_hidden=int(dm_hidden), box_margin=float(box_margin))
        self.encoder = build_backbone(backbone, pretrained=pretrained)
        c = self.encoder.channels
        c16 = c["s16"]

        # Decision module: avg-pooled inputs -> FC 256 -> FC 1 (sigmoid).
        self.decision = nn.Sequential(
            nn.Linear(3 * c16 + _N_STATS, int(dm_hidden)), nn.ReLU(inplace=True), nn.Linear(int(dm_hidden), 1))
        # Conditional RPN head on s16: 9 anchor slots (3 scales x 3 ratios) per location.
        self.rpn_conv = ConvRelu(c16, int(rpn_channels), 3)
        self.rpn_cls = nn.Conv2d(int(rpn_channels), 9, 1)
        self.rpn_reg = nn.Conv2d(int(rpn_channels), 36, 1)
        # Mask refinement network, levels 5, 4, 3, 2 (coarse to fine).
        m = roi_size
        self._levels = [("s16", m // 8), ("s16", m // 4), ("s8", m // 2), ("s4", m)]
        self.refine = nn.ModuleList()
        self.guide = nn.ModuleList()
        self.lateral = nn.ModuleList()
        for j, (name, _size) in enumerate(self._levels):
            self.refine.append(RefineModule(c[name], mrn[j]))  # Eq. 3
            self.guide.append(_conv2(mrn[j]))  # Eq. 4
            prev_w = mrn[j - 1] if j else mrn[0]
            self.lateral.append(nn.Conv2d(prev_w, mrn[j], 1) if prev_w != mrn[j] else nn.Identity())
        self.mask_out = nn.Conv2d(mrn[-1], 1, 3, padding=1)

        self.theta_c = float(theta_c)
        self.flow_name = flow
        self.stream_counts: dict[str, int] = {s: 0 for s in STREAMS}
        self.last_confidence: float | None = None
        self.last_stream: str | None = None
        self._record: list[dict[str, torch.Tensor]] | None = None
        self._clip_aux: list[dict[str, torch.Tensor]] | None = None

    # -- runtime options --------------------------------------------------------------
    def set_flow(self, name: str) -> None:
        """Choose the flow estimator (``dis``, ``dis-ultrafast``, ``dis-medium``, ``raft``)."""
        self._flow_estimator(name)  # fail now on a bad name or missing weights
        self.flow_name = name

    def _flow_estimator(self, name: str | None = None) -> FlowEstimator:
        name = name or self.flow_name
        dev = "cuda" if name == "raft" and torch.cuda.is_available() else "cpu"
        key = (name, dev)
        if key not in _FLOWS:
            _FLOWS[key] = get_flow(name, device=dev)
        return _FLOWS[key]

    def reset_stream_counts(self) -> None:
        """Zero :attr:`stream_counts`."""
        self.stream_counts = {s: 0 for s in STREAMS}

    def propagation_share(self) -> float | None:
        """Share of counted frames that went through box propagation (None if none)."""
        n = sum(self.stream_counts.values())
        return self.stream_counts["propagation"] / n if n else None

    # -- the four steps -------------------------------------------------------------
    def encode(self, image: torch.Tensor) -> Features:
        return self.encoder(image)

    def init_state(self, image: torch.Tensor, feats: Features, masks: torch.Tensor) -> State:
        k, _, h, w = masks.shape
        boxes, valid = mask_boxes(masks)
        if not bool(valid.all()):  # faint (resized) masks: take half of their maximum
            peak = masks.detach().flatten(1).amax(1).clamp(min=1e-6)
            alt, alt_valid = mask_boxes(masks / peak.view(k, 1, 1, 1))
            whole = torch.tensor([0.0, 0.0, w, h], device=masks.device).expand(k, 4)
            boxes = torch.where(valid[:, None], boxes, torch.where(alt_valid[:, None], alt, whole))
        f = self._pool(feats["s16"], boxes).detach()  # only compared (Eq. 2, DM): no gradient needed
        return {"prev_mask": masks, "prev_box": boxes, "first_feat": f, "prev_feat": f,
                "prev_gray": self._gray(image)}

    def update(self, image: torch.Tensor, feats: Features, state: State, probs: torch.Tensor) -> State:
        boxes, valid = mask_boxes(probs.detach())
        boxes = torch.where(valid[:, None], boxes, state["prev_box"])
        return {"prev_mask": probs, "prev_box": boxes, "first_feat": state["first_feat"],
                "prev_feat": self._pool(feats["s16"], boxes).detach(), "prev_gray": self._gray(image)}

    def predict(self, image: torch.Tensor, feats: Features, state: State) -> torch.Tensor:
        k, _, h, w = image.shape
        recording = self._record is not None
        flow = self._flow(state["prev_gray"], image)  # N x H x W x 2, N in {1, K}
        prev_mask = state["prev_mask"]
        warped = warp(prev_mask, flow)  # Y_{(i-1)->i}
        prev_box = state["prev_box"]
        bp_box, bp_valid = mask_boxes(warped.detach())
        bp_box = torch.where(bp_valid[:, None], bp_box, prev_box)

        # Decision module.
        s16 = feats["s16"]
        f_bp = self._pool(s16, bp_box)
        dm_in = torch.cat([
            f_bp, (f_bp - state["first_feat"]).abs(), (f_bp - state["prev_feat"]).abs(),
            self._flow_stats(flow, prev_box, h, w),
            self._mask_stats(prev_mask, warped, prev_box, bp_box, bp_valid),
        ], 1).detach()
        conf = torch.sigmoid(self.decision(dm_in).float()).squeeze(1)  # K
        if recording:  # training: every sample is its own video
            use_bp = conf.detach() > self.theta_c
        else:
            frame_conf = float(conf.mean())
            take_bp = frame_conf > self.theta_c
            use_bp = torch.full((k,), take_bp, dtype=torch.bool, device=conf.device)
            stream = STREAMS[0] if take_bp else STREAMS[1]
            if not self.training:
                self.stream_counts[stream] += 1
            self.last_confidence, self.last_stream = frame_conf, stream

        # Box re-identification (only when needed, or always when training).
        boxes = bp_box
        aux: dict[str, torch.Tensor] = {}
        if recording or not bool(use_bp.all()):
            anchors, obj, deltas = self._crpn(s16, prev_box, h, w)
            cand = clip_boxes(decode_boxes(anchors, deltas.detach().float()), h, w, min_size=2.0)
            br_box = self._reidentify(s16, cand, obj.detach(), state["first_feat"], state["prev_feat"])
            boxes = torch.where(use_bp[:, None], bp_box, br_box)
            aux = {"anchors": anchors, "obj": obj, "deltas": deltas}

        roi_boxes = self._roi_boxes(boxes, h, w)
        roi_logits = self._refine(feats, roi_boxes, warped)  # K x 1 x M x M
        probs = paste_masks(torch.sigmoid(roi_logits.float()), roi_boxes, h, w)
        z = torch.logit(probs.clamp(1e-4, 1 - 1e-4))
        if recording:
            self._record.append({"conf": conf, "bp_box": bp_box, **aux})  # type: ignore[union-attr]
        return torch.cat([torch.zeros_like(z), z], 1)

    # -- pieces -------------------------------------------------------------------------
    def _gray(self, image: torch.Tensor) -> torch.Tensor:
        """``K x 1 x H x W`` uint8 grayscale of each row's frame, on the CPU."""
        k = image.shape[0]
        if _is_shared(image):
            g = torch.from_numpy(to_gray_uint8(image[0]))
            return g[None, None].expand(k, 1, *g.shape)
        return torch.stack([torch.from_numpy(to_gray_uint8(x)) for x in image])[:, None]

    def _flow(self, prev_gray: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Backward flow previous -> current: ``1 x H x W x 2`` (one frame) or ``K x H x W x 2``."""
        est = self._flow_estimator()
        cur = self._gray(image)
        rows = [0] if _is_shared(image) else range(image.shape[0])
        flows = [torch.from_numpy(est(prev_gray[i, 0].numpy(), cur[i, 0].numpy())) for i in rows]
        return torch.stack(flows).to(image.device)

    def _pool(self, feat: torch.Tensor, boxes: torch.Tensor, owner: torch.Tensor | None = None) -> torch.Tensor:
        """f(B): average pooling of the 7x7 RoI Align of ``boxes N x 4`` -> ``N x C``."""
        return roi_features(feat, boxes, _MATCH_SIZE, _FEAT_STRIDE["s16"], owner).mean((2, 3))

    @staticmethod
    def _flow_stats(flow: torch.Tensor, box: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """6 flow statistics per object in its previous box -> ``K x 6``."""
        k = box.shape[0]
        u, v = flow[..., 0], flow[..., 1]
        mag = torch.sqrt(u * u + v * v)
        maps = torch.stack([u, v, u * u, v * v, mag], 1)  # N x 5 x H x W, N in {1, K}
        s = roi_features(maps, box, _MATCH_SIZE, 1.0).mean((2, 3))  # K x 5
        bw = (box[:, 2] - box[:, 0]).clamp(min=1)
        bh = (box[:, 3] - box[:, 1]).clamp(min=1)
        sd_u = (s[:, 2] - s[:, 0] ** 2).clamp(min=0).sqrt()
        sd_v = (s[:, 3] - s[:, 1] ** 2).clamp(min=0).sqrt()
        glob = mag.flatten(1).mean(1).expand(k) / math.hypot(h, w)
        return torch.stack([s[:, 0] / bw, s[:, 1] / bh, sd_u / bw, sd_v / bh,
                            s[:, 4] / torch.hypot(bw, bh), glob], 1)

    @staticmethod
    def _mask_stats(prev: torch.Tensor, warped: torch.Tensor, prev_box: torch.Tensor,
                    bp_box: torch.Tensor, bp_valid: torch.Tensor) -> torch.Tensor:
        """6 statistics of the propagated mask and box -> ``K x 6``."""
        prev_mass = prev.float().flatten(1).sum(1)
        warped_mass = warped.float().flatten(1).sum(1)
        ratio = (warped_mass / prev_mass.clamp(min=1.0)).clamp(0, 4)
        pw = (prev_box[:, 2] - prev_box[:, 0]).clamp(min=1)
        ph = (prev_box[:, 3] - prev_box[:, 1]).clamp(min=1)
        bw = (bp_box[:, 2] - bp_box[:, 0]).clamp(min=1)
        bh = (bp_box[:, 3] - bp_box[:, 1]).clamp(min=1)
        fill = roi_features(warped.float(), bp_box, _MATCH_SIZE, 1.0).mean((1, 2, 3))
        return torch.stack([ratio, box_iou(prev_box, bp_box), torch.log(bw / pw).clamp(-2, 2),
                            torch.log(bh / ph).clamp(-2, 2), fill, (~bp_valid).float()], 1)

    def _crpn(self, s16: torch.Tensor, prev_box: torch.Tensor, h: int, w: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Conditional RPN: anchors ``K x 81 x 4``, objectness logits ``K x 81``, deltas ``K x 81 x 4``."""
        k = prev_box.shape[0]
        src = s16[:1] if _is_shared(s16) else s16
        head = self.rpn_conv(src)
        cls, reg = self.rpn_cls(head), self.rpn_reg(head)  # N x 9, N x 36
        if cls.shape[0] != k:
            cls, reg = cls.expand(k, *cls.shape[1:]), reg.expand(k, *reg.shape[1:])
        anchors = conditional_anchors(prev_box, grid=3, per_cell=9, stride=_FEAT_STRIDE["s16"])
        centres = anchors.view(k, 9, 9, 4)[:, :, 0]  # K x 9 cells x 4 (first slot of each cell)
        cx = (centres[..., 0] + centres[..., 2]) / 2
        cy = (centres[..., 1] + centres[..., 3]) / 2
        grid = torch.stack([2 * cx / w - 1, 2 * cy / h - 1], -1)[:, None].to(cls.dtype)  # K x 1 x 9 x 2
        s_cls = F.grid_sample(cls, grid, mode="bilinear", padding_mode="border", align_corners=False)
        s_reg = F.grid_sample(reg, grid, mode="bilinear", padding_mode="border", align_corners=False)
        obj = s_cls[:, :, 0].transpose(1, 2).reshape(k, 81).float()  # cell-major, slot-minor
        deltas = s_reg[:, :, 0].view(k, 9, 4, 9).permute(0, 3, 1, 2).reshape(k, 81, 4).float()
        return anchors, obj, deltas

    def _reidentify(self, s16: torch.Tensor, cand: torch.Tensor, obj: torch.Tensor, first: torch.Tensor,
                    prev: torch.Tensor) -> torch.Tensor:
        """The best candidate of ``K x A x 4`` by :func:`reid_scores` (Eq. 2 distances to
        f(T_1) and f(T_{i-1}) and the CRPN objectness logits ``obj`` ``K x A``) -> ``K x 4``."""
        k, a = cand.shape[:2]
        owner = torch.arange(k, device=cand.device).repeat_interleave(a)
        f = self._pool(s16, cand.reshape(-1, 4), owner).view(k, a, -1)
        dist = (f - first[:, None]).norm(dim=-1) + (f - prev[:, None]).norm(dim=-1)
        best = reid_scores(dist, obj.to(dist.device)).argmin(1)
        return cand[torch.arange(k, device=cand.device), best]

    def _roi_boxes(self, boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Target RoIs enlarged by ``box_margin`` per side, clipped, at least 8 px."""
        m = self.config["box_margin"]
        bw = (boxes[:, 2] - boxes[:, 0]).clamp(min=1)
        bh = (boxes[:, 3] - boxes[:, 1]).clamp(min=1)
        grown = boxes + torch.stack([-m * bw, -m * bh, m * bw, m * bh], 1)
        return clip_boxes(grown, h, w, min_size=8.0)

    def _refine(self, feats: Features, boxes: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """MRN: four mask refinement modules (Eq. 3, 4) -> RoI mask logits ``K x 1 x M x M``."""
        k = boxes.shape[0]
        f: torch.Tensor | None = None
        for j, (name, size) in enumerate(self._levels):
            r = roi_features(feats[name], boxes, size, _FEAT_STRIDE[name])
            y = roi_features(guide.float(), boxes, size, 1.0)  # warped mask at m_j x m_j
            coarse = (self.lateral[j](f) if f is not None
                      else r.new_zeros(k, self.config["mrn_channels"][0], 1, 1))
            u = self.refine[j](r, coarse)  # Eq. 3
            f = self.guide[j](u) * y + u  # Eq. 4
        return self.mask_out(f)

    # -- training -------------------------------------------------------------------------
    def forward_clip(self, frames: torch.Tensor, first_mask: torch.Tensor) -> torch.Tensor:
        """As :meth:`VOSModel.forward_clip` (one object per sample, ``B x (T-1) x 2 x H x W``
        logits); also records, per frame, the DM scores, propagated boxes and CRPN outputs
        that :meth:`loss` turns into L_DM and L_CRPN. Each sample picks its own stream."""
        self._record = []
        try:
            out = super().forward_clip(frames, first_mask)
        finally:
            self._clip_aux, self._record = self._record, None
        return out

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Eq. 5: L_MRN (cross entropy of the pasted masks) + L_DM + L_CRPN. The last two use
        what the preceding :meth:`forward_clip` recorded (only L_MRN without it).
        logits ``B x T x 2 x H x W``; target ``B x T x H x W`` long, 1 = object, 255 ignored."""
        return self._losses(logits, target)["total"]

    def training_loss(self, frames: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The trainer's hook: ``training_losses(frames, masks)["total"]`` (Eq. 5)."""
        return self.training_losses(frames, masks)["total"]

    def training_losses(self, frames: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run a clip and return every loss term.

        frames: ``B x T x 3 x H x W`` normalised; masks: ``B x T x H x W`` long ground truth
        of one object per sample (frame 0 starts it). Returns ``{"mask", "dm", "rpn_cls",
        "rpn_reg", "total"}`` scalars.
        """
        logits = self.forward_clip(frames, (masks[:, 0:1] == 1).float())
        return self._losses(logits, masks[:, 1:])

    def _losses(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"mask": super().loss(logits, target)}
        aux, self._clip_aux = self._clip_aux, None
        zero = out["mask"].new_zeros(())
        out.update(dm=zero, rpn_cls=zero, rpn_reg=zero)
        if aux is not None and len(aux) == target.shape[1]:
            dm, cls, reg = [], [], []
            for i, rec in enumerate(aux):
                gt_box, gt_valid = mask_boxes((target[:, i] == 1).float())
                gt_box = gt_box.to(rec["bp_box"].device)
                iou = box_iou(rec["bp_box"], gt_box) * gt_valid  # Eq. 1 with one object per sample
                dm.append(F.mse_loss(rec["conf"], iou.float()))
                c, r = self._rpn_loss(rec["anchors"], rec["obj"], rec["deltas"], gt_box, gt_valid)
                cls.append(c)
                reg.append(r)
            out.update(dm=torch.stack(dm).mean(), rpn_cls=torch.stack(cls).mean(), rpn_reg=torch.stack(reg).mean())
        out["total"] = out["mask"] + out["dm"] + out["rpn_cls"] + out["rpn_reg"]
        return out

    @staticmethod
    def _rpn_loss(anchors: torch.Tensor, obj: torch.Tensor, deltas: torch.Tensor, gt: torch.Tensor,
                  valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask R-CNN RPN losses over the conditional anchors ``B x A x 4`` for GT boxes ``B x 4``."""
        iou = box_iou(anchors, gt[:, None]) * valid[:, None]  # B x A
        best = iou.amax(1, keepdim=True)
        pos = ((iou >= 0.7) | ((iou == best) & (best > 0))) & valid[:, None]
        neg = (iou < 0.3) & ~pos
        lab = (pos | neg)
        cls = F.binary_cross_entropy_with_logits(obj[lab], pos[lab].float()) if lab.any() else obj.sum() * 0
        if pos.any():
            tgt = encode_boxes(anchors, gt[:, None].expand_as(anchors))
            reg = F.smooth_l1_loss(deltas[pos], tgt[pos], beta=1.0 / 9)
        else:
            reg = deltas.sum() * 0
        return cls, reg
