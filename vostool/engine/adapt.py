"""``--adapt``: learn each video's objects from their given mask, so that propagation stops
drifting onto look-alikes.

A propagation network segments frame ``t`` from frame ``t``'s image and what it carries
from frame ``t - 1``; nothing in it knows what *this* video's object looks like, so a
region that resembles the object next to where it was (the demo's trees next to the
ball, a red balloon beside a dancer's red dress) is taken over. FRTM-VOS (Robinson et
al., CVPR 2020) adds a light *target model* learnt at inference: a linear classifier on
frozen encoder features, fitted to the first frame and its mask in a fraction of a
second. vostool does the same for every model whose per-frame features are image-only
(:meth:`VOSModel.appearance_features`):

1. the given frame and its id mask (all objects) are moved by ``augmentations - 1``
   random transforms (:func:`vostool.data.synth.still_clip`, RGMP's strategy 1 centred
   on the objects: zoom, rotation, shear, shift, flip, brightness/contrast) and encoded once each, frozen, at the engine's
   inference size (the engine's own inference copies, precision and channels_last);
2. one linear classifier per object (1 x 1 convolution over the standardised features,
   ``K`` outputs) is fitted for ``steps`` Adam steps with a binary cross-entropy loss
   against the masks area-pooled to the feature grid;
3. at every frame its score ``s`` (a logit at 1/16, bilinearly upsampled) corrects the
   model's logits where it is confident that a pixel is *not* the object:
   ``fg - bg += min(0, s + margin)`` (margin 1). The propagated mask's own boundary is
   left to the model (a coarse score added everywhere blurs it and lost 0.026 J&F on the
   dev split); only confident look-alikes are pushed back.

The model's weights are never changed (the classifier is held here, per object id), so
a folder of videos adapts each video from the shipped weights, and without ``--adapt``
(or with ``steps=0``) the engine runs exactly as before. Memory: the ``augmentations``
encoded feature maps of one frame, whatever the video length.

Variants measured on the dev split (fine-tuning the decoder on two-copy clips, on
clips with strongly deformed previous masks, gating, adding the score everywhere):
``references/adapt.md``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from vostool.data.synth import Augment, still_clip
from vostool.errors import VostoolError
from vostool.models.base import Features

if TYPE_CHECKING:  # pragma: no cover
    from vostool.engine.propagator import Propagator

#: the measured default number of optimisation steps (``--adapt-steps``)
DEFAULT_STEPS = 100

#: progress callback: (step done, steps in all, current loss); the steps are the
#: augmented frames encoded (loss NaN) then the optimisation steps
ProgressFn = Callable[[int, int, float], None]


@dataclass(frozen=True)
class AdaptConfig:
    """How ``--adapt`` learns a video's objects.

    steps: Adam steps of the target model (0: no adaptation at all).
    augmentations: frames the classifier learns from (the given frame and
        ``augmentations - 1`` random transforms of it), each encoded once.
    lr: Adam learning rate. weight_decay: L2 penalty on the classifier's weights.
    margin: logit margin: the correction is ``min(0, score + margin)``, so only pixels the
        classifier calls background with more than ``margin`` confidence are pushed back.
    strength: multiplies the correction.
    seed: the augmentations' random seed (a video adapts the same way every time).
    motion: shift of the augmentations (fraction of +-25% of the frame).
    on_objects: centre the augmented views on the objects (else the scene stays in place,
        zoomed, rotated and shifted around the frame centre).
    """

    steps: int = DEFAULT_STEPS
    augmentations: int = 8
    lr: float = 0.01
    weight_decay: float = 1e-3
    margin: float = 1.0
    strength: float = 1.0
    seed: int = 0
    motion: float = 0.3
    on_objects: bool = True

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise VostoolError(f"--adapt-steps must be 0 or more, got {self.steps}")
        if self.augmentations < 1:
            raise VostoolError("adaptation needs at least one frame (augmentations >= 1)")


def parse_steps(text: str | int | None, default: int = DEFAULT_STEPS) -> int:
    """``--adapt-steps`` value -> int, or a one-line :class:`VostoolError`."""
    if text is None:
        return default
    try:
        value = int(str(text).strip())
    except ValueError:
        raise VostoolError(f"--adapt-steps must be a whole number of steps, got '{text}'") from None
    if value < 0:
        raise VostoolError(f"--adapt-steps must be 0 or more, got {value}")
    return value


class Adaptation:
    """The per-video target model of one :class:`~vostool.engine.Propagator`.

    The propagator calls :meth:`fit` whenever objects are given (first frame, and each
    ``--mask-at`` frame: those objects' classifiers are re-learnt on that frame), and
    :meth:`correct` on the model's logits of every frame. :meth:`reset` forgets all
    objects (a new video).

    Attributes after a fit: ``seconds`` (wall time of the last fit), ``losses`` (loss per
    step of the last fit), ``total_seconds`` (all fits since construction).
    """

    def __init__(self, config: AdaptConfig | None = None, progress: ProgressFn | None = None) -> None:
        self.config = config or AdaptConfig()
        self.progress = progress
        #: object id -> (weight ``C``, bias) of its classifier on the raw features
        self.heads: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.losses: list[float] = []
        self.seconds = 0.0
        self.total_seconds = 0.0
        #: True when a fit found no image-only features (the model has none): nothing adapted
        self.unsupported = False
        self._stack: tuple[tuple[int, ...], torch.Tensor, torch.Tensor] | None = None  # per row
        self._videos = 0

    # -- lifecycle ------------------------------------------------------------------------
    def reset(self) -> None:
        """A new video: forget every object's classifier."""
        self.heads.clear()
        self._stack = None
        self._videos += 1

    @property
    def active(self) -> bool:
        return bool(self.heads)

    # -- learning -------------------------------------------------------------------------
    def fit(self, prop: Propagator, image: np.ndarray, masks: np.ndarray, ids: list[int]) -> None:
        """Learn the classifiers of objects ``ids`` from ``image`` (``H x W x 3`` uint8)
        and its id mask ``masks`` (``H x W``). Other objects keep theirs."""
        cfg = self.config
        if cfg.steps == 0 or not ids:
            return
        gov = prop.governor  # the thread count the engine's frames run with (a shared CPU)
        caller = torch.get_num_threads()
        if gov is not None and gov.threads != caller:
            torch.set_num_threads(gov.threads)
        try:
            self._fit(prop, image, masks, ids)
        finally:
            if torch.get_num_threads() != caller:
                torch.set_num_threads(caller)

    def _fit(self, prop: Propagator, image: np.ndarray, masks: np.ndarray, ids: list[int]) -> None:
        cfg = self.config
        t0 = time.perf_counter()
        feats = prop.model.appearance_features  # declared on VOSModel; None: not image-only
        with torch.no_grad():  # encoded as the engine encodes (in inference mode: far faster)
            x, y = self._training_set(prop, image, masks, ids, feats)
        if x is None:
            self.unsupported = True
            self.seconds = time.perf_counter() - t0
            return
        with torch.inference_mode(False):  # the engine runs in inference mode; this learns
            x, y = x.clone(), y.clone()  # normal tensors, usable by autograd
            report = None
            if self.progress is not None:
                done, total, progress = cfg.augmentations, cfg.augmentations + cfg.steps, self.progress

                def report(step: int, _steps: int, loss: float) -> None:
                    progress(done + step, total, loss)

            w, b, losses = _fit_linear(x, y, cfg.steps, cfg.lr, cfg.weight_decay, report)
        for j, oid in enumerate(ids):
            self.heads[oid] = (w[j], b[j])
        self._stack = None
        self.losses = losses
        self.seconds = time.perf_counter() - t0
        self.total_seconds += self.seconds

    def _training_set(
        self, prop: Propagator, image: np.ndarray, masks: np.ndarray, ids: list[int],
        appearance: Callable[[Features], torch.Tensor | None],
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Features ``N x C x h x w`` (float32) of the augmented frames, and targets
        ``N x K x h x w`` (area fractions of each object on the feature grid)."""
        cfg = self.config
        h, w = masks.shape
        lane = prop._make_lane(h, w, 1.0)
        rng = np.random.default_rng([cfg.seed, self._videos, *ids])
        aug = Augment(flip=True, rotation=15.0, shear=5.0, scale=(0.8, 1.2))
        ids_u8 = np.zeros(masks.shape, np.uint8)
        for j, oid in enumerate(ids):
            ids_u8[masks == oid] = j + 1
        xs, ys = [], []
        for n in range(cfg.augmentations):
            if n == 0:
                img, idm = image, ids_u8
            else:
                imgs, idms = still_clip(image, ids_u8, rng, aug, (h, w), 1, motion=cfg.motion, reflect=True,
                                        on_objects=cfg.on_objects)
                img, idm = _jitter(imgs[0], rng), idms[0]
            _, f = prop._encode(np.ascontiguousarray(img), lane)
            if self.progress is not None:
                self.progress(n + 1, cfg.augmentations + cfg.steps, float("nan"))
            a = appearance(f)
            if a is None:
                return None, torch.empty(0)
            a = a[:1].float()
            onehot = torch.from_numpy(np.stack([idm == j + 1 for j in range(len(ids))]).astype(np.float32))
            onehot = prop._pad(prop._to_lane(onehot[:, None].to(prop.device), lane), lane)  # K x 1 x ph x pw
            target = F.adaptive_avg_pool2d(onehot, a.shape[-2:])[:, 0]  # K x h x w
            xs.append(a)
            ys.append(target[None])
        return torch.cat(xs), torch.cat(ys)

    # -- applying -------------------------------------------------------------------------
    def correct(self, logits: torch.Tensor, feats: Features, object_ids: list[int],
                appearance: Callable[[Features], torch.Tensor | None]) -> torch.Tensor:
        """logits ``R x 2 x H x W`` (background, object) whose first rows are the objects
        ``object_ids`` (further rows, e.g. a union row, are left alone) -> corrected
        logits (the same tensor when no object has a classifier)."""
        if not self.heads or not any(o in self.heads for o in object_ids):
            return logits
        a = appearance(feats)
        if a is None:
            return logits
        key = (*object_ids, -logits.shape[0])
        if self._stack is None or self._stack[0] != key:
            c = next(iter(self.heads.values()))[0].shape[0]
            w = torch.zeros(logits.shape[0], c)
            b = torch.full((logits.shape[0],), 1e4)  # no classifier: never corrected
            for j, oid in enumerate(object_ids):
                if oid in self.heads:
                    w[j], b[j] = self.heads[oid]
            self._stack = (key, w.to(a.device), b.to(a.device))
        _, w, b = self._stack
        score = torch.einsum("chw,kc->khw", a[0].float(), w) + b.view(-1, 1, 1)
        score = F.interpolate(score[:, None], logits.shape[-2:], mode="bilinear", align_corners=False)
        d = self.config.strength * (score + self.config.margin).clamp(max=0)
        out = logits.float()
        return torch.cat([out[:, :1] - d / 2, out[:, 1:2] + d / 2], dim=1)


def _jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness/contrast change of a uint8 frame."""
    a = img.astype(np.float32) * float(rng.uniform(0.8, 1.2)) + float(rng.uniform(-20, 20))
    m = a.mean()
    a = (a - m) * float(rng.uniform(0.8, 1.2)) + m
    return np.clip(a, 0, 255).astype(np.uint8)


def _fit_linear(
    x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, weight_decay: float,
    progress: ProgressFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Fit ``K`` logistic classifiers on standardised features.

    x: ``N x C x h x w``; y: ``N x K x h x w`` in [0, 1]. Returns weights ``K x C`` and
    biases ``K`` on the *raw* features (standardisation folded in), and the loss per step.
    """
    n, c = x.shape[:2]
    k = y.shape[1]
    feats = x.permute(0, 2, 3, 1).reshape(-1, c)
    target = y.permute(0, 2, 3, 1).reshape(-1, k)
    mu = feats.mean(0)
    sd = feats.std(0) + 1e-3
    z = (feats - mu) / sd
    w = torch.zeros(k, c, device=z.device, requires_grad=True)
    b = torch.zeros(k, device=z.device, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    losses: list[float] = []
    with torch.enable_grad():
        for i in range(steps):
            logit = z @ w.t() + b
            loss = F.binary_cross_entropy_with_logits(logit, target) + weight_decay * w.pow(2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(i + 1, steps, losses[-1])
    with torch.no_grad():
        w_raw = w.detach() / sd
        b_raw = b.detach() - (w_raw * mu).sum(1)
    return w_raw, b_raw, losses
