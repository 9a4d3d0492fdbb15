"""The model contract, run over every registered model (``list_models()``) and backbone.

What the engine, CLI, bench and trainer may call is declared on :class:`VOSModel`; these tests
check that each registered model keeps it: options are explicit, registration is unique, a clip
trains (every parameter that should learn gets a gradient), the recurrent state does not grow,
objects can be added later, ``predict`` leaves its state alone and checkpoints round-trip.
"""

from __future__ import annotations

import json

import pytest
import torch

from vostool.errors import VostoolError
from vostool.models import build_model, list_models, load_model, read_checkpoint, register_model, save_checkpoint
from vostool.models.base import VOSModel
from vostool.models.registry import get_spec, model_options

NAMES = [s.name for s in list_models()]


@pytest.mark.parametrize("name", NAMES)
def test_unknown_config_key_is_rejected(name: str) -> None:
    with pytest.raises(VostoolError, match=f"model '{name}' has no option 'no_such_option'"):
        build_model(name, no_such_option=1)


@pytest.mark.parametrize("name", NAMES)
def test_saved_config_keys_are_constructor_options(name: str) -> None:
    model = build_model(name)
    assert set(model.config) - {"backbone"} <= set(model_options(get_spec(name)))


def test_misspelt_key_in_a_checkpoint_is_one_clear_error(tmp_path, one_thread) -> None:
    torch.manual_seed(0)
    path = save_checkpoint(build_model("crvos", channels=[16, 8, 8]), tmp_path / "c.safetensors")
    state, meta = read_checkpoint(path)
    config = json.loads(meta["config"])
    config["chanels"] = config.pop("channels")
    from safetensors.torch import save_file

    save_file(state, str(path), metadata={**meta, "config": json.dumps(config)})
    with pytest.raises(VostoolError, match="model 'crvos' has no option 'chanels'; its options: channels"):
        load_model("crvos", path)


def test_registering_a_name_twice_is_an_error() -> None:
    with pytest.raises(VostoolError, match="model name 'crvos' is registered twice"):
        @register_model("crvos", title="t", paper="p", published="-")
        class Again(VOSModel):
            pass
    assert get_spec("crvos").cls.__name__ == "CRVOS"


# -- the contract over every registered model and two backbones ----------------------------
BACKBONES = ["mobilenet_v2", "resnet18"]
H, W = 64, 96
#: parameters that one-shot training leaves unused by design, per model (name prefixes):
#: RVOS's zero-shot decoder is trained only by ``training_loss_zero_shot``.
ONE_SHOT_UNUSED: dict[str, tuple[str, ...]] = {"rvos": ("decoder_zero.",)}
CASES = [(n, b) for n in NAMES for b in BACKBONES]


def _clip(b: int = 2, t: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """A moving 20 x 24 box per sample: normalised frames ``B x T x 3 x H x W`` (seeded noise,
    the box brighter) and its masks ``B x T x H x W`` long in {0, 1}."""
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(b, t, 3, H, W, generator=g) * 0.5
    masks = torch.zeros(b, t, H, W, dtype=torch.long)
    for n in range(b):
        for i in range(t):
            y, x = 12 + 3 * i + 4 * n, 20 + 5 * i + 6 * n
            masks[n, i, y:y + 20, x:x + 24] = 1
            frames[n, i, :, y:y + 20, x:x + 24] += 1.5
    return frames, masks


def _box(y: int, x: int, k: int = 1) -> torch.Tensor:
    m = torch.zeros(k, 1, H, W)
    m[:, :, y:y + 20, x:x + 24] = 1.0
    return m


#: smaller options for the 200-frame run, where the default ones are slow on a CPU
#: (DTN: the mask refinement network's 112 x 112 RoIs)
LONG_RUN: dict[str, dict[str, object]] = {"dtn": {"roi_size": 32}}


def _build(name: str, backbone: str, **config: object) -> VOSModel:
    torch.manual_seed(0)
    return build_model(name, backbone=backbone, **config)


def _run(model: VOSModel, images: list[torch.Tensor], first: torch.Tensor) -> list[torch.Tensor]:
    """Propagate ``first`` (``K x 1 x H x W``) through ``images`` (``1 x 3 x H x W`` each) with
    the engine's calls (soft aggregation left out): the logits of frames 1.."""
    k = first.shape[0]
    feats = model.expand_features(model.encode(images[0]), k)
    state = model.init_state(images[0].expand(k, -1, -1, -1), feats, first)
    out = []
    for img in images[1:]:
        x = img.expand(k, -1, -1, -1)
        feats = model.expand_features(model.encode(img), k)
        logits = model.predict(x, feats, state)
        out.append(logits)
        state = model.update(x, feats, state, torch.softmax(logits.float(), 1)[:, 1:2])
    return out


def _numel(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in state.values())


@pytest.mark.parametrize(("name", "backbone"), CASES)
def test_clip_trains_every_parameter(name: str, backbone: str, one_thread) -> None:
    model = _build(name, backbone).train()
    frames, masks = _clip()
    loss = model.training_loss(frames, masks)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    unused = ONE_SHOT_UNUSED.get(name, ())
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and p.grad is None and not n.startswith(unused)]
    assert not missing, f"{name}/{backbone}: no gradient for {missing[:5]} ({len(missing)} in all)"
    grads = [p.grad for _n, p in model.named_parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    logits = model.forward_clip(frames, (masks[:, 0:1] == 1).float())
    assert logits.shape == (2, 2, 2, H, W)


@pytest.mark.parametrize(("name", "backbone"), CASES)
def test_state_size_constant_and_predict_leaves_state_alone(name: str, backbone: str, one_thread) -> None:
    model = _build(name, backbone, **LONG_RUN.get(name, {})).eval()
    k = 2
    g = torch.Generator().manual_seed(1)
    images = [torch.randn(1, 3, H, W, generator=g) for _ in range(2)]
    with torch.no_grad():
        feats = [model.expand_features(model.encode(img), k) for img in images]
        first = torch.cat([_box(10, 10), _box(30, 50)])
        state = model.init_state(images[0].expand(k, -1, -1, -1), feats[0], first)
        sizes = set()
        for t in range(1, 201):
            x, f = images[t % 2].expand(k, -1, -1, -1), feats[t % 2]
            before = {n: v.clone() for n, v in state.items()} if t <= 3 else None
            logits = model.predict(x, f, state)
            if before is not None:  # predict reads the state, never writes it
                assert set(state) == set(before)
                assert all(torch.equal(state[n], before[n]) for n in before), name
            assert logits.shape == (k, 2, H, W)
            state = model.update(x, f, state, torch.softmax(logits.float(), 1)[:, 1:2])
            assert all(v.shape[0] == k for v in state.values())
            sizes.add(_numel(state))
    assert len(sizes) == 1, f"{name}: state size changed over 200 frames: {sorted(sizes)}"


@pytest.mark.parametrize(("name", "backbone"), CASES)
def test_objects_added_later(name: str, backbone: str, one_thread) -> None:
    model = _build(name, backbone).eval()
    g = torch.Generator().manual_seed(2)
    images = [torch.randn(1, 3, H, W, generator=g) for _ in range(4)]
    with torch.no_grad():
        f0 = model.expand_features(model.encode(images[0]), 1)
        state = model.init_state(images[0], f0, _box(10, 10))
        for img in images[1:3]:
            f = model.expand_features(model.encode(img), 1)
            p = torch.softmax(model.predict(img, f, state).float(), 1)[:, 1:2]
            state = model.update(img, f, state, p)
        # a second object given at frame 3, beside the first (the engine's add_objects)
        img = images[3]
        f1, f2 = model.expand_features(model.encode(img), 1), model.expand_features(model.encode(img), 2)
        model.predict(img, f1, state)
        kept = model.keep_objects(state, [0])
        p = torch.softmax(model.predict(img, f1, kept).float(), 1)[:, 1:2]
        kept = model.update(img, f1, kept, p)
        both = VOSModel.cat_states(kept, model.init_state(img, f1, _box(30, 50)))
        assert all(v.shape[0] == 2 for v in both.values())
        x = img.expand(2, -1, -1, -1)
        logits = model.predict(x, f2, both)
        assert logits.shape == (2, 2, H, W) and torch.isfinite(logits).all()
        both = model.update(x, f2, both, torch.softmax(logits.float(), 1)[:, 1:2])
        assert all(v.shape[0] == 2 for v in both.values())
        assert all(v.shape[0] == 1 for v in VOSModel.select_state(both, [1]).values())


@pytest.mark.parametrize(("name", "backbone"), CASES)
def test_checkpoint_round_trip_gives_identical_outputs(name: str, backbone: str, tmp_path, one_thread) -> None:
    model = _build(name, backbone).eval()
    path = save_checkpoint(model, tmp_path / f"{name}.safetensors")
    loaded = load_model(name, path)
    assert loaded.config == model.config and type(loaded) is type(model)
    g = torch.Generator().manual_seed(3)
    images = [torch.randn(1, 3, H, W, generator=g) for _ in range(4)]
    first = torch.cat([_box(10, 10), _box(30, 50)])
    with torch.no_grad():
        a, b = _run(model, images, first), _run(loaded, images, first)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize(("name", "backbone"), CASES)
def test_graph_state_keys_tell_the_truth(name: str, backbone: str, one_thread) -> None:
    """A model that declares ``graph_state_keys`` (its predict may run as one exported graph)
    predicts the same without its image and from those state tensors alone."""
    model = _build(name, backbone).eval()
    keys = model.graph_state_keys
    if keys is None:
        pytest.skip(f"{name} runs predict in torch only")
    g = torch.Generator().manual_seed(2)
    images = [torch.randn(1, 3, H, W, generator=g) for _ in range(2)]
    with torch.no_grad():
        feats = [model.expand_features(model.encode(img), 2) for img in images]
        state = model.init_state(images[0].expand(2, -1, -1, -1), feats[0], torch.cat([_box(10, 10), _box(30, 50)]))
        ref = model.predict(images[1].expand(2, -1, -1, -1), feats[1], state)
        got = model.predict(torch.empty(0), feats[1], {k: state[k] for k in keys})
    assert torch.equal(ref, got)
