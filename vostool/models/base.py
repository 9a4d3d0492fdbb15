"""The interface every vostool model implements, so one engine can drive them all.

A model is a propagation network run one frame at a time. Objects are a batch: the
frame's features are computed once (batch 1) and expanded to the K objects, and every
tensor of the recurrent state has the K objects as its first dimension, so states of
several objects can be concatenated and selected.

Per frame the engine calls::

    feats = model.encode(image)                     # image: 1 x 3 x H x W, normalised
    feats = model.expand_features(feats, K)
    logits = model.predict(image_k, feats, state)   # K x 2 x H x W (bg, fg) logits
    ... merge the K probabilities (soft aggregation) ...
    state = model.update(image_k, feats, state, merged_fg)   # merged_fg: K x 1 x H x W

and ``model.init_state(image_k, feats, masks)`` when objects are given (first frame, or
objects added/corrected at a later frame). ``H`` and ``W`` are multiples of ``stride``.
Training drives the same methods through :meth:`VOSModel.forward_clip`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from vostool.errors import VostoolError

if TYPE_CHECKING:
    from vostool.models.weights import WeightsInfo

Features = dict[str, torch.Tensor]
State = dict[str, torch.Tensor]


class VOSModel(nn.Module):
    """Base class of the five models. Subclasses set the class attributes and implement
    ``encode``, ``init_state``, ``predict`` and ``update``."""

    #: registry name
    name: ClassVar[str] = ""
    #: input sides must be multiples of this
    stride: ClassVar[int] = 16
    #: the model can decode the objects of a frame jointly (each reads the others' state:
    #: RVOS's spatial recurrence); the trainer gives such models several objects per sample
    can_decode_jointly: ClassVar[bool] = False
    #: merge objects with RGMP soft aggregation (False: the model handles objects jointly
    #: and the engine merges with ``1 - max_k p_k``); a model with ``can_decode_jointly``
    #: sets it per instance from its config (a checkpoint trained on one object per sample
    #: decodes them independently)
    uses_soft_aggregation: bool = True
    #: soft aggregation's background term is one minus the network's output on the merged
    #: foreground (RGMP: the engine runs the union of the objects as one more object);
    #: False: ``1 - max_k p_k`` (no extra run)
    background_from_union: ClassVar[bool] = False
    #: can segment without a first-frame mask (RVOS zero-shot)
    supports_zero_shot: ClassVar[bool] = False
    #: zero-shot models: the number of object slots the engine decodes when the caller
    #: gives none (the number the model was trained with; 0 for other models)
    zero_shot_slots: int = 0
    #: a decision threshold on a confidence in [0, 1] that callers may set at run time
    #: (DTN's ``theta_c``: box propagation above it); None: the model has none
    theta_c: float | None = None
    #: the engine's search window for this model by default (margin as a multiple of the
    #: previous box's longer side, :mod:`vostool.engine.window`); None: no window. Callers
    #: override it (``--window``); the value is measured per model (README).
    search_window: float | None = None
    #: with the search window on, also drop the parts of an object's new mask that do not
    #: touch its previous mask (:func:`vostool.engine.window.keep_connected`); measured per
    #: model (README), off where it was not measured
    window_connected: bool = False
    #: the state tensors :meth:`predict` reads, when ``predict`` ignores its image and is a
    #: pure tensor function of the features and these tensors (no branches on values, no
    #: state written): the engine may then run it as one exported graph (ONNX Runtime,
    #: :class:`~vostool.engine.backends.OrtPredict`). None: predict always runs in torch.
    graph_state_keys: ClassVar[tuple[str, ...] | None] = None
    #: parameters that learn at a multiple of the run's learning rate: a parameter's name
    #: (as in ``named_parameters``) or a module's (everything under it) -> multiplier.
    #: For scalar gates that start near zero (GAM's CAM ``alpha``):
    #: Adam moves a parameter by about the learning rate per step whatever its gradient's
    #: size, so a fine-tuning rate cannot take a gate far. Empty: one rate for all.
    lr_scales: ClassVar[dict[str, float]] = {}
    #: the checkpoint :func:`~vostool.models.load_model` loaded (path, metadata, inference
    #: size, normalisation, card); None for a model built without one
    weights_info: "WeightsInfo | None" = None

    def __init__(self, backbone: str, **config: Any) -> None:
        super().__init__()
        #: everything needed to rebuild the architecture (saved in checkpoints)
        self.config: dict[str, Any] = {"backbone": backbone, **config}

    # -- the four steps -------------------------------------------------------------
    def encode(self, image: torch.Tensor) -> Features:
        """image: ``B x 3 x H x W`` normalised. Returns named feature maps, batch B."""
        raise NotImplementedError

    def init_state(self, image: torch.Tensor, feats: Features, masks: torch.Tensor) -> State:
        """Start K objects. image: ``K x 3 x H x W``; feats: batch K; masks: ``K x 1 x H x W``
        probabilities in [0, 1]. Returns a state whose tensors all have K first."""
        raise NotImplementedError

    def init_state_zero_shot(self, image: torch.Tensor, feats: Features, k: int) -> State:
        """Start ``k`` empty object slots without masks (models with ``supports_zero_shot``).
        image: ``1 x 3 x H x W``; feats: batch 1 (or k). Default: an error."""
        raise VostoolError(f"model '{self.name}' needs a first-frame mask; it cannot segment without one")

    def predict(self, image: torch.Tensor, feats: Features, state: State) -> torch.Tensor:
        """Segment the current frame. Returns ``K x 2 x H x W`` logits (background, object).
        ``state`` is read, never changed: :meth:`update` makes the next state."""
        raise NotImplementedError

    def update(
        self, image: torch.Tensor, feats: Features, state: State, probs: torch.Tensor
    ) -> State:
        """Feed back the merged probabilities ``K x 1 x H x W`` of the current frame."""
        raise NotImplementedError

    # -- helpers with sensible defaults ---------------------------------------------
    def expand_features(self, feats: Features, k: int) -> Features:
        """Expand batch-1 features to K objects without copying."""
        return {n: f.expand(k, *f.shape[1:]) if f.shape[0] == 1 else f for n, f in feats.items()}

    @staticmethod
    def cat_states(a: State, b: State) -> State:
        """Concatenate the objects of two states (``a`` first)."""
        if not a:
            return dict(b)
        return {n: torch.cat([a[n], b[n]], dim=0) for n in a}

    @staticmethod
    def select_state(state: State, index: torch.Tensor | list[int]) -> State:
        """Keep the objects at ``index`` (in that order)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return {n: t.index_select(0, idx.to(t.device)) for n, t in state.items()}

    def keep_objects(self, state: State, index: torch.Tensor | list[int]) -> State:
        """Keep the objects at ``index`` of a state that :meth:`predict` has just run on,
        before :meth:`update` (the engine's path when objects are corrected at a frame).
        Default: :meth:`select_state`; models that carry work from ``predict`` to ``update``
        select it too."""
        return self.select_state(state, index)

    # -- runtime statistics (bench) -------------------------------------------------------
    def reset_stream_counts(self) -> None:
        """Zero the model's per-frame stream statistics. Default: the model keeps none."""

    def propagation_share(self) -> float | None:
        """Share of frames since :meth:`reset_stream_counts` that took the model's
        propagation stream (DTN: box propagation), or None (no streams, or no frame)."""
        return None

    def forward_clip(self, frames: torch.Tensor, first_mask: torch.Tensor) -> torch.Tensor:
        """Propagate through a clip with back-propagation through time.

        frames: ``B x T x 3 x H x W`` normalised; first_mask: ``B x 1 x H x W`` in [0, 1].
        Each sample is one object; the model is fed its own soft predictions.
        Returns logits ``B x (T - 1) x 2 x H x W`` for frames 1..T-1.
        """
        b, t = frames.shape[:2]
        feats_all = self.encode(frames.flatten(0, 1))
        feats_t = [{n: f.view(b, t, *f.shape[1:])[:, i] for n, f in feats_all.items()} for i in range(t)]
        state = self.init_state(frames[:, 0], feats_t[0], first_mask)
        outs = []
        for i in range(1, t):
            logits = self.predict(frames[:, i], feats_t[i], state)
            outs.append(logits)
            if i < t - 1:
                state = self.update(frames[:, i], feats_t[i], state, torch.softmax(logits, 1)[:, 1:2])
        return torch.stack(outs, dim=1)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Training loss. logits: ``B x T x 2 x H x W``; target: ``B x T x H x W`` long in
        {0, 1} (255 ignored). Default: negative log-likelihood of the 2-way softmax."""
        return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(0, 1), ignore_index=255)

    def appearance_features(self, feats: Features) -> torch.Tensor | None:
        """Image-only features of a frame for the target model ``--adapt`` learns at
        inference (:mod:`vostool.engine.adapt`), from :meth:`encode`'s output (batch B):
        ``B x C x H/16 x W/16``, or None when the model has none (its per-frame features
        depend on the mask). Default: ``s16`` with ``s8`` average-pooled onto its grid."""
        s16 = feats.get("s16")
        if s16 is None:
            return None
        s8 = feats.get("s8")
        if s8 is None or s8.shape[-2:] != tuple(2 * n for n in s16.shape[-2:]):
            return s16
        return torch.cat([s16, F.avg_pool2d(s8, 2).to(s16.dtype)], dim=1)

    def training_loss_zero_shot(self, frames: torch.Tensor, masks: torch.Tensor,
                                slots: int | None = None) -> torch.Tensor:
        """Zero-shot training loss (models with ``supports_zero_shot``): ``slots`` empty slots
        (default :attr:`zero_shot_slots`) matched to the instances of ``masks``.
        frames: ``B x T x 3 x H x W`` normalised; masks: ``B x T x H x W`` long ids. Default: an error."""
        raise VostoolError(f"model '{self.name}' has no zero-shot mode")

    def training_loss(self, frames: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The model's own training loss over clips (what ``vostool train`` and ``--adapt``
        minimise). frames: ``B x T x 3 x H x W`` normalised; masks: ``B x T x H x W`` long in
        {0, 1} (255 ignored), one object per sample, frame 0's mask given. Default:
        :meth:`forward_clip` from frame 0's mask, then :meth:`loss` on frames 1..T-1.
        Models with several loss terms override this."""
        first = (masks[:, :1] == 1).to(frames.dtype)
        logits = self.forward_clip(frames, first)
        return self.loss(logits, masks[:, 1:])
