"""Training loop: a few steps reduce the loss for every model, resume is exact, export
round-trips through the strict loader, the CLI runs. Tiny models and data, no downloads."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vostool.models import build_model, list_models, load_model, read_checkpoint
from vostool.train import TrainConfig, clip_loss, export_run, load_run, train
from vostool.train.loop import set_train_mode

from synthetic import make_davis

MODELS = [spec.name for spec in list_models()]


def _fixed_batch(b: int = 2, t: int = 3, h: int = 64, w: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(b, t, 3, h, w, generator=g) * 0.3
    masks = torch.zeros(b, t, h, w, dtype=torch.long)
    for i in range(b):
        for j in range(t):
            y, x = 12 + 3 * j + 4 * i, 10 + 4 * j
            masks[i, j, y:y + 24, x:x + 24] = 1
            frames[i, j, :, y:y + 24, x:x + 24] += torch.tensor([1.5, -1.0, 0.5]).view(3, 1, 1)
    return frames, masks


def test_every_model_is_tested():
    assert "crvos" in MODELS


@pytest.mark.parametrize("name", MODELS)
def test_training_steps_reduce_loss(name, one_thread):
    torch.manual_seed(0)
    model = build_model(name, "mobilenet_v2", pretrained=False)
    set_train_mode(model, freeze_bn=True)
    frames, masks = _fixed_batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with torch.no_grad():
        before = float(clip_loss(model, frames, masks))
    for _ in range(5):
        loss = clip_loss(model, frames, masks)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(clip_loss(model, frames, masks))
    assert after < before, (name, before, after)


def test_zero_shot_steps_reduce_loss_and_freeze_backbone(one_thread):
    from vostool.errors import VostoolError
    from vostool.train.loop import freeze_backbones

    torch.manual_seed(0)
    model = build_model("rvos", "mobilenet_v2", pretrained=False)
    set_train_mode(model, freeze_bn=True)
    frozen = freeze_backbones(model)
    assert frozen == sum(p.numel() for p in model.encoder.parameters()) > 0
    frames, masks = _fixed_batch()
    masks[1][masks[1] == 1] = 2  # instance ids, matched to slots whatever their values
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with torch.no_grad():
        before = float(clip_loss(model, frames, masks, zero_shot=True, slots=2))
    for _ in range(5):
        loss = clip_loss(model, frames, masks, zero_shot=True, slots=2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.grad is None for p in model.encoder.parameters())
    with torch.no_grad():
        assert float(clip_loss(model, frames, masks, zero_shot=True, slots=2)) < before
    with pytest.raises(VostoolError, match="no zero-shot mode"):
        clip_loss(build_model("crvos", "mobilenet_v2"), frames, masks, zero_shot=True)


def test_train_only_fits_one_head_and_leaves_the_rest_exactly(one_thread):
    """--train-only decoder_zero: the zero-shot decoder learns; the shared encoder, its
    skip convolutions (BatchNorm statistics included) and the one-shot decoder do not."""
    from vostool.errors import VostoolError
    from vostool.train.loop import train_only

    torch.manual_seed(0)
    model = build_model("rvos", "mobilenet_v2", pretrained=False)
    learning = train_only(model, ["decoder_zero"])
    assert learning == sum(p.numel() for p in model.decoder_zero.parameters()) > 0
    set_train_mode(model, freeze_bn=True, train_only=["decoder_zero"])
    bns = [m for m in model.skip.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    fixed = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("decoder_zero.")}
    frames, masks = _fixed_batch()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(2):
        loss = clip_loss(model, frames, masks, zero_shot=True, slots=2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in fixed.items())
    zero = [k for k in after if k.startswith("decoder_zero.")]
    assert zero and any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder_zero.parameters())
    with pytest.raises(VostoolError, match="no module 'decoder_nope'"):
        train_only(build_model("rvos", "mobilenet_v2", pretrained=False), ["decoder_nope"])


def _tiny_cfg(tmp_path: Path, out: str, iters: int) -> TrainConfig:
    return TrainConfig(
        model="crvos", backbone="mobilenet_v2", pretrained=False, stage="video",
        data=[str(tmp_path / "davis")], size=(32, 48), clip_len=3, batch=2, iters=iters, lr=1e-3,
        precision="fp32", device="cpu", threads=1, out=str(tmp_path / out), log_every=1, progress=False,
        seed=3, command="vostool train (test)",
    )


def _params(path: Path) -> dict[str, torch.Tensor]:
    return load_run(path)["model"]


def test_resume_gives_the_same_state(tmp_path):
    make_davis(tmp_path / "davis")
    straight = train(_tiny_cfg(tmp_path, "straight", 3))
    assert straight["iteration"] == 3 and not straight["interrupted"]
    first = train(_tiny_cfg(tmp_path, "split", 2))
    assert first["iteration"] == 2
    resumed = train(dataclasses.replace(_tiny_cfg(tmp_path, "split", 3), resume=True))
    assert resumed["iteration"] == 3
    a, b = _params(tmp_path / "straight/last.pt"), _params(tmp_path / "split/last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    oa = load_run(tmp_path / "straight/last.pt")["optimizer"]["state"]
    ob = load_run(tmp_path / "split/last.pt")["optimizer"]["state"]
    for k in oa:
        assert torch.equal(oa[k]["exp_avg"], ob[k]["exp_avg"])
    log = (tmp_path / "split/log.txt").read_text()
    assert "resuming" in log and "it 3/3" in log


def test_weight_average_math():
    from vostool.train.loop import WeightAverage

    lin = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    avg = WeightAverage(lin, decay=0.5)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    avg.update()  # d = min(0.5, 2/11) = 2/11: 0 -> 9/11
    assert torch.allclose(avg.state_dict()["weight"], torch.full((1, 2), 9 / 11))
    for _ in range(30):
        avg.update()
    assert torch.allclose(avg.state_dict()["weight"], torch.ones(1, 2), atol=1e-6)
    with torch.no_grad():
        lin.weight.fill_(3.0)
    with avg.swapped_in():
        assert torch.allclose(lin.weight, torch.ones(1, 2), atol=1e-6)
    assert torch.equal(lin.weight, torch.full((1, 2), 3.0))  # raw weights restored


def test_weight_average_is_shipped_and_resumes_exactly(tmp_path):
    make_davis(tmp_path / "davis")

    def cfg(out: str, iters: int) -> TrainConfig:
        return dataclasses.replace(_tiny_cfg(tmp_path, out, iters), ema_decay=0.9)

    train(cfg("straight", 3))
    train(cfg("split", 2))
    train(dataclasses.replace(cfg("split", 3), resume=True))
    a, b = load_run(tmp_path / "straight/last.pt"), load_run(tmp_path / "split/last.pt")
    assert a["ema_updates"] == b["ema_updates"] == 3
    for key in ("model", "train_model"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    # the shipped weights are the average, not the last step's weights
    differs = [k for k in a["model"] if a["model"][k].is_floating_point()
               and not torch.equal(a["model"][k], a["train_model"][k])]
    assert differs
    model = build_model("crvos", "mobilenet_v2", pretrained=False)
    model.load_state_dict(a["model"], strict=True)


def test_refuses_to_overwrite_a_run(tmp_path):
    from vostool.errors import VostoolError

    make_davis(tmp_path / "davis")
    train(_tiny_cfg(tmp_path, "run", 1))
    with pytest.raises(VostoolError, match="resume"):
        train(_tiny_cfg(tmp_path, "run", 1))


def test_pretrain_stage_then_video_with_init_and_export(tmp_path):
    make_davis(tmp_path / "davis")
    imgs = tmp_path / "stills"
    (imgs / "images").mkdir(parents=True)
    (imgs / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        img = (rng.random((40, 56, 3)) * 255).astype(np.uint8)
        m = np.zeros((40, 56), np.uint8)
        m[8:30, 10 + i:40 + i] = 255
        Image.fromarray(img).save(imgs / "images" / f"{i:04d}.jpg")
        Image.fromarray(m).save(imgs / "masks" / f"{i:04d}.png")
    pre = dataclasses.replace(_tiny_cfg(tmp_path, "pre", 1), stage="pretrain", images=[str(imgs)], data=[],
                              command="vostool train --stage pretrain (test)")
    train(pre)
    vid = dataclasses.replace(_tiny_cfg(tmp_path, "vid", 1), init=str(tmp_path / "pre/last.pt"),
                              val_sequences=["seq2"], val_every=1, images=[str(imgs)], image_ratio=0.5)
    summary = train(vid)
    assert summary["best"] is not None and 0 <= summary["best"]["JF"] <= 1
    assert (tmp_path / "vid/best.pt").is_file()
    run = load_run(tmp_path / "vid/last.pt")
    assert run["commands"] == ["vostool train --stage pretrain (test)", "vostool train (test)"]
    assert run["data"]["sequences"] == 2  # seq2 held out
    assert run["data"]["image_count"] == 3 and run["data"]["image_ratio"] == 0.5  # synthetic clips mixed in

    dst = tmp_path / "weights/crvos.safetensors"
    card = export_run(tmp_path / "vid/last.pt", dst, fp16=False)
    model = load_model("crvos", weights=dst)  # strict
    for k, v in model.state_dict().items():
        assert torch.equal(v, run["model"][k]), k
    saved = json.loads(dst.with_suffix(".json").read_text())
    assert saved == json.loads(json.dumps(card))
    assert saved["backbone"] == "mobilenet_v2" and saved["iterations"] == 1
    assert saved["commands"] == run["commands"] and saved["dev_split"]["JF"] is not None
    assert [st["stage"] for st in saved["stages"]] == ["pretrain", "video"] and saved["total_iterations"] == 2
    _, meta = read_checkpoint(dst)
    assert meta["size"] == "32"
    assert saved["dev_split"]["size"] == 32
    bigger = export_run(tmp_path / "vid/last.pt", tmp_path / "weights/big.safetensors", fp16=False, size=48)
    assert bigger["inference_size"] == 48 and bigger["dev_split"]["size"] == 48
    assert read_checkpoint(tmp_path / "weights/big.safetensors")[1]["size"] == "48"
    assert bigger["dev_split"]["JF"] is not None
    half = export_run(tmp_path / "vid/last.pt", tmp_path / "weights/h.safetensors", fp16=True)
    assert half["dtype"] == "float16"
    load_model("crvos", weights=tmp_path / "weights/h.safetensors")

    # a stage started from the exported file keeps its history: commands from the weights,
    # stage records (iterations, wall time) from the card beside them
    more = dataclasses.replace(_tiny_cfg(tmp_path, "more", 1), init=str(dst), command="vostool train (more)")
    train(more)
    again = export_run(tmp_path / "more/last.pt", tmp_path / "weights2/crvos.safetensors", fp16=False)
    assert again["commands"] == run["commands"] + ["vostool train (more)"]
    assert [st["stage"] for st in again["stages"]] == ["pretrain", "video", "video"]
    assert again["total_iterations"] == 3


def test_cli_train_and_export(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import typer
    from vostool.cli.train import train_command

    make_davis(tmp_path / "davis")
    app = typer.Typer()
    app.command()(train_command)
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["--model", "crvos", "--backbone", "mobilenet_v2", "--no-pretrained", "--data", str(tmp_path / "davis"),
            "--size", "32x48", "--clip-len", "3", "--batch", "1", "--iters", "1", "--precision", "fp32",
            "--device", "cpu", "--threads", "1", "--out", str(out)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert (out / "last.pt").is_file()
    r = runner.invoke(app, ["--resume", "--out", str(out), "--iters", "2", "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert load_run(out / "last.pt")["iteration"] == 2
    r = runner.invoke(app, ["--resume", "--out", str(out), "--lr", "0.5"])
    assert r.exit_code == 2 and "resumed" in r.output
    r = runner.invoke(app, ["--size", "30x48", "--data", str(tmp_path / "davis")])
    assert r.exit_code == 2 and "multiples of 16" in r.output
    r = runner.invoke(app, ["--export", str(tmp_path / "w/crvos.safetensors"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "w/crvos.json").is_file()


def test_card_dev_score_is_what_vostool_eval_prints(tmp_path):
    """Training validation and the exported card use vostool eval's runner and scorer."""
    from vostool.eval.api import evaluate_davis

    root = make_davis(tmp_path / "davis", frames=6)
    (root / "ImageSets/480p").mkdir(parents=True)
    (root / "ImageSets/480p/train.txt").write_text("".join(
        f"/JPEGImages/480p/seq{s}/00000.jpg /Annotations/480p/seq{s}/00000.png\n" for s in range(3)))
    cfg = dataclasses.replace(_tiny_cfg(tmp_path, "run", 2), val_sequences=["seq1", "seq2"], val_every=2)
    train(cfg)
    dst = tmp_path / "w/crvos.safetensors"
    card = export_run(tmp_path / "run/last.pt", dst, fp16=False, size=48)
    report = evaluate_davis(root, year=2016, split="train", sequences=["seq1", "seq2"], model="crvos",
                            weights=str(dst), device="cpu", size=48, workers=1, out_dir=tmp_path / "ev")
    g = report.result.global_figures
    assert card["dev_split"]["JF"] == pytest.approx(g["J&F-Mean"], abs=1e-12)
    assert card["dev_split"]["J"] == pytest.approx(g["J-Mean"], abs=1e-12)
    assert 0 <= g["J&F-Mean"] <= 1
