"""The trainer's parts: a resumed run repeats an uninterrupted one step for step (losses,
weights, optimiser), the typed run checkpoint round-trips the on-disk dict, export reads
the typed record, the one resume merge, the schedule, and the re-exported names."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from vostool.errors import VostoolError
from vostool.models import build_model, load_model, read_checkpoint
from vostool.train import RunCheckpoint, TrainConfig, Trainer, export_run, load_run
from vostool.train.config import _jsonable, config_from_dict, merge_resumed

from synthetic import make_davis


class _Recording(Trainer):
    """A trainer that keeps every step's exact loss."""

    losses: list[float]

    def _step(self, frames: torch.Tensor, masks: torch.Tensor) -> float:
        lr = super()._step(frames, masks)
        self.losses.append(self.last_loss)
        return lr


def _run(cfg: TrainConfig) -> tuple[list[float], dict]:
    trainer = _Recording(cfg)
    trainer.losses = []
    summary = trainer.run()
    return trainer.losses, summary


def _cfg(root: Path, out: str, iters: int, **kw) -> TrainConfig:
    return TrainConfig(
        model="crvos", backbone="mobilenet_v2", pretrained=False, stage="video", data=[str(root / "davis")],
        size=(32, 48), clip_len=3, batch=2, iters=iters, lr=1e-3, precision="fp32", device="cpu", threads=1,
        out=str(root / out), log_every=1, progress=False, seed=5, command="vostool train (test)", **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A 3-iteration run straight through (``straight``) and the same run stopped after 2
    and resumed (``split``), both with weight averaging; returns their root."""
    root = tmp_path_factory.mktemp("runs")
    make_davis(root / "davis")
    straight, _ = _run(_cfg(root, "straight", 3, ema_decay=0.9))
    first, _ = _run(_cfg(root, "split", 2, ema_decay=0.9))
    rest, summary = _run(dataclasses.replace(_cfg(root, "split", 3, ema_decay=0.9), resume=True))
    assert summary["iteration"] == 3
    (root / "losses.json").write_text(json.dumps({"straight": straight, "split": first + rest}))
    return root


def test_resumed_run_repeats_the_losses_and_weights_exactly(runs):
    losses = json.loads((runs / "losses.json").read_text())
    assert len(losses["straight"]) == 3
    assert losses["split"] == losses["straight"]  # bit-identical floats, step by step
    a, b = RunCheckpoint.load(runs / "straight/last.pt"), RunCheckpoint.load(runs / "split/last.pt")
    assert a.iteration == b.iteration == 3 and a.ema_updates == b.ema_updates == 3
    for weights in ("model", "train_model"):
        wa, wb = getattr(a, weights), getattr(b, weights)
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), weights
    assert a.loss_ema == b.loss_ema
    for k, st in a.optimizer["state"].items():
        assert torch.equal(st["exp_avg_sq"], b.optimizer["state"][k]["exp_avg_sq"])


def test_run_checkpoint_round_trips_the_on_disk_dict(runs):
    raw = load_run(runs / "split/last.pt")
    ck = RunCheckpoint.from_dict(raw)
    assert isinstance(ck.config, TrainConfig) and ck.config.ema_decay == 0.9 and ck.config.size == (32, 48)
    assert ck.raw_weights is ck.train_model
    back = ck.to_dict()
    assert list(back) == list(raw)  # same keys, same order as the loop has always written
    for key, value in raw.items():
        if key in ("model", "train_model"):
            assert all(torch.equal(value[k], back[key][k]) for k in value)
        elif key not in ("optimizer", "rng"):
            assert back[key] == value, key
    assert [s["stage"] for s in ck.stages] == ["video"] and ck.commands == ["vostool train (test)"]
    # save is atomic and what it writes loads as the same record
    ck.save(runs / "copy/last.pt")
    assert not (runs / "copy/last.pt.tmp").exists()
    again = RunCheckpoint.load(runs / "copy/last.pt")
    assert again.iteration == ck.iteration and again.config == ck.config and again.best == ck.best


def test_run_checkpoint_without_averaging_and_older_files(tmp_path):
    model = build_model("crvos", "mobilenet_v2", pretrained=False)
    state = model.state_dict()
    ck = RunCheckpoint(config=TrainConfig(), model=state, iteration=7)
    d = ck.to_dict()
    assert "train_model" not in d and "ema_updates" not in d and ck.raw_weights is state
    # a file holding only some keys (as older runs did) loads with defaults
    old = RunCheckpoint.from_dict({"model": state, "config": _jsonable(TrainConfig(model="rgmp"))})
    assert old.config.model == "rgmp" and old.iteration == 0 and old.stages == [] and old.best is None
    with pytest.raises(VostoolError, match="not a vostool training checkpoint"):
        RunCheckpoint.from_dict({"weights": {}})
    torch.save({"nothing": 1}, tmp_path / "x.pt")
    with pytest.raises(VostoolError, match="not a vostool training checkpoint"):
        export_run(tmp_path / "x.pt", tmp_path / "w.safetensors")


def test_export_reads_the_typed_record(tmp_path):
    """A record written by hand (no training): the card comes from its fields."""
    torch.manual_seed(0)
    model = build_model("crvos", "mobilenet_v2", pretrained=False)
    cfg = TrainConfig(model="crvos", backbone="mobilenet_v2", size=(48, 64), stage="video")
    stages = [{"stage": "pretrain", "iterations": 5, "wall_s": 10.0},
              {"stage": "video", "iterations": 4, "wall_s": 2.5}]
    ck = RunCheckpoint(config=cfg, model={k: v.clone() for k, v in model.state_dict().items()}, iteration=4,
                       elapsed=2.54, commands=["a", "", "b"], stages=stages, hardware="test cpu", precision="fp32",
                       model_config=dict(model.config), data={"sequences": 9}, best={"JF": 0.5, "iteration": 2})
    ck.save(tmp_path / "run/best.pt")
    dst = tmp_path / "w/crvos.safetensors"
    card = export_run(tmp_path / "run/best.pt", dst, fp16=False)
    assert card["commands"] == ["a", "b"] and card["iterations"] == 4 and card["total_iterations"] == 9
    assert card["wall_time_s"] == 2.5 and card["total_wall_time_s"] == 12.5
    assert card["hardware"] == "test cpu" and card["data"] == {"sequences": 9} and card["inference_size"] == 48
    assert card["dev_split"]["best"] == {"JF": 0.5, "iteration": 2} and card["dev_split"]["JF"] is None
    assert read_checkpoint(dst)[1]["size"] == "48"
    shipped = load_model("crvos", weights=dst)
    assert all(torch.equal(v, ck.model[k]) for k, v in shipped.state_dict().items())


def test_one_resume_merge():
    stored = TrainConfig(lr=1e-3, iters=10, size=(32, 48))
    merged = merge_resumed(stored, iters=20, threads=None, size=[32, 48], lr=1e-3)
    assert merged.iters == 20 and merged.threads is None and merged.lr == 1e-3
    with pytest.raises(VostoolError, match="--lr differs"):
        merge_resumed(stored, lr=0.5)
    assert config_from_dict(_jsonable(stored)) == stored


def test_schedule_warmup_and_names_still_importable():
    from vostool.train.loop import (  # noqa: F401  (the names the module held before the split)
        ClipLoss, Dist, WeightAverage, build_dataset, clip_loss, freeze_backbones, init_distributed, lr_at,
        objects_per_sample, resume_config, set_train_mode, to_channels_last_clip, train, train_only, validate)

    cfg = TrainConfig(lr=1.0, lr_schedule="constant", warmup=4)
    assert [lr_at(cfg, i) for i in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cos = dataclasses.replace(cfg, lr_schedule="cosine", warmup=0, iters=10)
    assert lr_at(cos, 0) == 1.0 and lr_at(cos, 10) == pytest.approx(0.01)
    assert lr_at(dataclasses.replace(cfg, lr_schedule="exp", lr_gamma=0.5, lr_step=2, warmup=0), 4) == 0.25


def test_lr_scales_give_gates_their_own_rate(tmp_path, monkeypatch):
    """A model's ``lr_scales`` put those parameters in a group of their own whose rate is
    the schedule's times the scale: the same first step moves GAM's CAM gate 300 x as far
    as it does without the scale (Adam's step is proportional to its rate), and every
    other weight exactly as far."""
    from vostool.models.gam import GAM
    from vostool.train.freeze import param_groups

    make_davis(tmp_path / "davis")
    model = build_model("gam", backbone="mobilenet_v2", pretrained=False)
    groups = param_groups(model)
    assert [g["lr_scale"] for g in groups] == [1.0, 300.0]
    assert len(groups[1]["params"]) == 1 and groups[1]["params"][0] is model.cam.alpha_raw
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)

    def one_step(out: str) -> dict[str, torch.Tensor]:
        trainer = Trainer(dataclasses.replace(_cfg(tmp_path, out, 1, freeze_backbone=True), model="gam", lr=1e-4))
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        trainer.run()
        return {n: (p.detach() - before[n]).abs() for n, p in trainer.model.named_parameters()}

    scaled = one_step("scaled")
    monkeypatch.setattr(GAM, "lr_scales", {})
    assert [g["lr_scale"] for g in param_groups(model)] == [1.0]
    plain = one_step("plain")
    assert float(plain["cam.alpha_raw"]) > 0
    assert float(scaled["cam.alpha_raw"]) == pytest.approx(300 * float(plain["cam.alpha_raw"]), rel=1e-2)  # a ~ -6 in float32
    assert torch.equal(scaled["pred.weight"], plain["pred.weight"])


def test_resume_with_other_parameter_groups_is_one_clear_error(tmp_path):
    """A run whose optimiser was saved with other parameter groups (before a model's
    ``lr_scales`` changed) cannot --resume: one VostoolError saying what to do."""
    make_davis(tmp_path / "davis")
    cfg = dataclasses.replace(_cfg(tmp_path, "gam", 1, freeze_backbone=True), model="gam")
    Trainer(cfg).run()
    path = tmp_path / "gam" / "last.pt"
    ck = torch.load(path, map_location="cpu", weights_only=False)
    groups = ck["optimizer"]["param_groups"]
    ck["optimizer"]["param_groups"] = [{**groups[0], "params": [i for g in groups for i in g["params"]]}]
    torch.save(ck, path)
    with pytest.raises(VostoolError, match="parameter group.*--init"):
        Trainer(dataclasses.replace(cfg, iters=2, resume=True)).run()


def test_init_may_lack_only_what_the_backbone_declares_new(tmp_path):
    """``--init`` from a file of the dilated backbone into ``mobilenet_v2_s32_lateral``: the
    lateral connection (declared new, zero) is filled in and everything else is loaded; a file
    that lacks anything else is still one clear error."""
    from safetensors.torch import save_file

    from vostool.models import save_checkpoint
    from vostool.train.factory import load_init_weights

    torch.manual_seed(0)
    src = build_model("crvos")
    path = tmp_path / "crvos.safetensors"
    save_checkpoint(src, path)
    model = build_model("crvos", "mobilenet_v2_s32_lateral")
    load_init_weights(model, path)
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in src.state_dict().items())
    assert not got["encoder.lateral.weight"].any() and not got["encoder.lateral.bias"].any()

    state = {k: v for k, v in src.state_dict().items() if k != "refine4.deconv.bias"}
    bad = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(bad))
    with pytest.raises(VostoolError, match="missing"):
        load_init_weights(build_model("crvos", "mobilenet_v2_s32_lateral"), bad)
