"""Shipped weights: records match the files, resolution order, file:// downloads, checksums."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import vostool.models.weights as W
from vostool.cli.app import app
from vostool.errors import VostoolError
from vostool.models import default_weights, load_model


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No $VOSTOOL_WEIGHTS, an empty package folder and an empty cache under tmp_path."""
    monkeypatch.delenv("VOSTOOL_WEIGHTS", raising=False)
    monkeypatch.delenv("VOSTOOL_WEIGHTS_URL", raising=False)
    monkeypatch.setenv("VOSTOOL_CACHE", str(tmp_path / "cache"))
    real_package = W.package_weights_dir()
    (tmp_path / "pkg").mkdir()
    monkeypatch.setattr(W, "package_weights_dir", lambda: tmp_path / "pkg")
    return real_package


def test_records_match_the_shipped_files():
    folder = W.package_weights_dir()
    assert sorted(p.name for p in folder.glob("*.safetensors")) == sorted(w.value.file for w in W.Weights)
    for member in W.Weights:
        rec = member.value
        path = folder / rec.file
        assert path.stat().st_size == rec.bytes < 20 * 2**20
        assert W.file_sha256(path) == rec.sha256, (
            f"{rec.file} changed: update Weights.{member.name} (python -m vostool.models.weights)")
        card = json.loads((folder / rec.card).read_text())
        assert (card["model"], card["inference_size"], card["backbone"]) == \
               (rec.model, rec.inference_size, rec.backbone)
        assert W.Weights.for_model(rec.model) is rec
    assert W.Weights.for_model("nope") is None


def test_resolution_order(isolated, tmp_path, monkeypatch):
    real = isolated
    cache = tmp_path / "cache" / "weights"
    # nothing anywhere, no URL: one clear error naming the places searched
    with pytest.raises(VostoolError, match="no shipped weights for 'crvos'"):
        W.resolve_weights("crvos")
    # the cache (file named with the hash prefix)
    cache.mkdir(parents=True)
    cached = cache / f"crvos-{W.Weights.CRVOS.value.sha256[:8]}.safetensors"
    shutil.copy(real / "crvos.safetensors", cached)
    assert W.resolve_weights("crvos") == cached
    # the package comes before the cache
    shutil.copy(real / "crvos.safetensors", tmp_path / "pkg" / "crvos.safetensors")
    assert W.resolve_weights("crvos") == tmp_path / "pkg" / "crvos.safetensors"
    assert default_weights("crvos") == tmp_path / "pkg" / "crvos.safetensors"
    # $VOSTOOL_WEIGHTS comes first, used as it is (a retrained file has another hash)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "crvos.safetensors").write_bytes(b"retrained")
    monkeypatch.setenv("VOSTOOL_WEIGHTS", str(mine))
    assert W.resolve_weights("crvos") == mine / "crvos.safetensors"
    # ... and a $VOSTOOL_WEIGHTS without the file falls through to the package
    (tmp_path / "pkg" / "gam.safetensors").write_bytes(b"package copy")
    assert W.resolve_weights("gam") == tmp_path / "pkg" / "gam.safetensors"
    with pytest.raises(VostoolError, match="no shipped weights for 'rgmp'"):
        W.resolve_weights("rgmp")


def test_download_from_file_url_and_checksums(isolated, tmp_path, monkeypatch):
    real = isolated
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(real / "crvos.safetensors", mirror)
    shutil.copy(real / "crvos.json", mirror)
    monkeypatch.setenv("VOSTOOL_WEIGHTS_URL", mirror.as_uri())
    path = W.resolve_weights("crvos")
    assert path == tmp_path / "cache" / "weights" / f"crvos-{W.Weights.CRVOS.value.sha256[:8]}.safetensors"
    assert W.file_sha256(path) == W.Weights.CRVOS.value.sha256
    assert json.loads(path.with_suffix(".json").read_text())["model"] == "crvos"  # the card too
    assert load_model("crvos").weights_info.inference_size == 448
    # the next resolution finds it in the cache, even with the mirror gone
    shutil.rmtree(mirror)
    assert W.resolve_weights("crvos") == path
    # a cached file that went bad: one-line error, and it is removed
    path.write_bytes(b"corrupt")
    with pytest.raises(VostoolError, match="checksum mismatch") as err:
        W.resolve_weights("crvos")
    assert "\n" not in str(err.value) and not path.exists()
    # a mirror serving other bytes: one-line error, nothing saved in the cache
    mirror.mkdir()
    (mirror / "crvos.safetensors").write_bytes(b"not the published file")
    with pytest.raises(VostoolError, match="checksum mismatch") as err:
        W.resolve_weights("crvos")
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "cache" / "weights").glob("crvos*.safetensors*"))
    # an unreachable URL
    monkeypatch.setenv("VOSTOOL_WEIGHTS_URL", (tmp_path / "nowhere").as_uri())
    with pytest.raises(VostoolError, match="cannot download crvos weights"):
        W.resolve_weights("crvos")


def test_cli_checksum_mismatch_is_one_line(isolated, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "crvos.safetensors").write_bytes(b"not the published file")
    monkeypatch.setenv("VOSTOOL_WEIGHTS_URL", mirror.as_uri())
    root = Path(__file__).resolve().parents[1] / "examples"
    result = CliRunner().invoke(app, ["segment", str(root / "demo.mp4"), "--mask", str(root / "demo_mask.png"),
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "checksum mismatch" in lines[0], result.output


def test_cache_dir_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("VOSTOOL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert W.cache_dir() == tmp_path / "xdg" / "vostool"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert W.cache_dir() == Path.home() / ".cache" / "vostool"
    monkeypatch.setenv("VOSTOOL_CACHE", str(tmp_path / "c"))
    assert W.cache_dir() == tmp_path / "c"


def test_load_model_records_what_it_loaded(tmp_path):
    """``load_model`` returns the model with a typed record of its checkpoint
    (``model.weights_info``), declared on VOSModel, not patched onto the object."""
    import copy
    import pickle

    from vostool.models import WeightsInfo, build_model, recommended_size, save_checkpoint
    from vostool.models.backbones import IMAGENET_MEAN, IMAGENET_STD

    model = load_model("crvos")
    info = model.weights_info
    assert isinstance(info, WeightsInfo)
    assert info.path == default_weights("crvos") and info.model == "crvos"
    assert (info.backbone, info.inference_size, info.dtype) == ("mobilenet_v2", 448, "float32")
    assert "backbone" not in info.config and info.config == {k: v for k, v in model.config.items()
                                                             if k != "backbone"}
    assert (info.mean, info.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert info.meta["size"] == "448" and info.card is not None and info.card["model"] == "crvos"
    assert recommended_size(model) == 448
    assert copy.deepcopy(model).weights_info == info and pickle.loads(pickle.dumps(info)) == info
    assert load_model("rgmp").weights_info.dtype == "float16"  # a --half export

    built = build_model("crvos")
    assert built.weights_info is None and recommended_size(built, 123) == 123
    # no card beside the file, no size: None; a recorded normalisation is read back
    path = save_checkpoint(built, tmp_path / "c.safetensors", extra={"mean": "[0.5, 0.5, 0.5]"})
    info = load_model("crvos", weights=path).weights_info
    assert info.card is None and info.inference_size is None and info.mean == (0.5, 0.5, 0.5)
    assert info.std == IMAGENET_STD
