"""Shipped checkpoints: one record per model, found however vostool was installed.

Each member of :class:`Weights` names a checkpoint file, its sha256, size in bytes, the
inference size (shorter side) it was exported for, its backbone, its card (the JSON beside
it that says how it was trained) and, where a copy is published, a download URL.

``resolve_weights(name)`` looks for the file, in order, in

1. ``$VOSTOOL_WEIGHTS`` (a folder), when set;
2. the package itself (``vostool/weights/``, shipped in the wheel; a source checkout's
   ``weights/`` is a link to it);
3. the cache, ``$VOSTOOL_CACHE/weights`` (default ``$XDG_CACHE_HOME/vostool`` or
   ``~/.cache/vostool``), as ``<model>-<sha256[:8]>.safetensors``;
4. then downloads it into the cache from the record's URL, or from
   ``$VOSTOOL_WEIGHTS_URL/<file>`` when that base URL (a mirror; ``file://`` works) is set.

Downloaded and cached files are checked against the record's sha256; a mismatch is a
one-line :class:`~vostool.errors.VostoolError` and the bad file is removed. Files from
``$VOSTOOL_WEIGHTS`` and the package are used as they are, so that a retrained
``vostool train --export weights/NAME.safetensors`` runs without editing this table
(``python -m vostool.models.weights`` prints the records of the files in ``weights/``).
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from vostool.errors import VostoolError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightsRecord:
    """One shipped checkpoint.

    file: file name (``<model>.safetensors``). sha256: hex digest of the file. bytes: its size.
    inference_size: the shorter side it runs at by default. card: the JSON card's file name.
    url: where a copy is published (None: shipped in the package only).
    """

    model: str
    file: str
    sha256: str
    bytes: int
    inference_size: int
    backbone: str
    card: str
    url: str | None = None

    @property
    def cache_name(self) -> str:
        """The file's name in the cache: ``<stem>-<sha256[:8]><suffix>``."""
        p = Path(self.file)
        return f"{p.stem}-{self.sha256[:8]}{p.suffix}"


@dataclass(frozen=True)
class WeightsInfo:
    """What :func:`vostool.models.load_model` loaded into a model (``model.weights_info``).

    path: the checkpoint file. model: the registry name it holds. backbone and config: the
    architecture it was built with (``config`` without the backbone). inference_size: the
    shorter side it was trained for (the checkpoint's ``size``), or None when it records none.
    mean, std: the per-channel RGB normalisation on [0, 1] its inputs take (the checkpoint's
    ``mean``/``std`` when recorded, else ImageNet's). dtype: the stored float dtype
    (``float32``; ``float16`` for a ``--half`` export; the model's parameters are float32
    either way). meta: the checkpoint's metadata as written. card: the JSON card beside the
    file (how it was trained), or None when there is none or it cannot be read. The
    mappings are plain dicts (so that a model can be deep-copied and pickled): read them only.
    """

    path: Path
    model: str
    backbone: str
    config: Mapping[str, Any]
    inference_size: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dtype: str
    meta: Mapping[str, str] = field(default_factory=dict)
    card: Mapping[str, Any] | None = None

    @classmethod
    def from_checkpoint(
        cls, path: Path, meta: Mapping[str, str], model: str, backbone: str, config: Mapping[str, Any],
        dtype: str,
    ) -> "WeightsInfo":
        """The record of checkpoint ``path`` from its metadata ``meta`` (and its card)."""
        from vostool.models.backbones import IMAGENET_MEAN, IMAGENET_STD  # torch: only when loading

        return cls(
            path=Path(path), model=model, backbone=backbone, config=dict(config),
            inference_size=_meta_int(meta, "size"), mean=_meta_triple(meta, "mean", IMAGENET_MEAN),
            std=_meta_triple(meta, "std", IMAGENET_STD), dtype=dtype, meta=dict(meta),
            card=_read_card(Path(path).with_suffix(".json")),
        )


def _meta_int(meta: Mapping[str, str], key: str) -> int | None:
    try:
        return int(meta[key])
    except (KeyError, ValueError):
        return None


def _meta_triple(
    meta: Mapping[str, str], key: str, default: tuple[float, float, float]
) -> tuple[float, float, float]:
    """A JSON list of three numbers recorded in the metadata, else ``default``."""
    try:
        a, b, c = (float(v) for v in json.loads(meta[key]))
    except (KeyError, ValueError, TypeError):
        return default
    return (a, b, c)


def _read_card(path: Path) -> Mapping[str, Any] | None:
    # The card documents the checkpoint; running it needs nothing from it.
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) else None


class Weights(Enum):
    """The shipped checkpoints (``Weights.CRVOS.value.sha256``, ``Weights.for_model("gam")``)."""

    CRVOS = WeightsRecord(
        "crvos", "crvos.safetensors", "1f9b59fa6d9c54b41520c9e8b211f6594ea872a92c4f5cb15e3d4d36765c8739",
        8419120, 448, "mobilenet_v2", "crvos.json",
    )
    DTN = WeightsRecord(
        "dtn", "dtn.safetensors", "2d425e95ef66d90b2ea82a6e2532f5b5f989e262b4ec7726213d0c7269772fec",
        19300372, 480, "mobilenet_v2", "dtn.json",
    )
    GAM = WeightsRecord(
        "gam", "gam.safetensors", "cc06e097466a61862c72fd56a7b5ab3959ebdf92ca6a2958d176ec067c53c977",
        15740372, 480, "mobilenet_v2", "gam.json",
    )
    RGMP = WeightsRecord(
        "rgmp", "rgmp.safetensors", "3ebd899ad0420ca9fbaba49da91bc9acc5fea0e6f03a9dc146bf529081d8b653",
        20367020, 240, "mobilenet_v2", "rgmp.json",
    )
    RVOS = WeightsRecord(
        "rvos", "rvos.safetensors", "6ff153d7e7d48239954db8e63b2b3c9b5d362bd80d12e376e43ba87ef2757dba",
        16088268, 480, "mobilenet_v2", "rvos.json",
    )

    @classmethod
    def for_model(cls, name: str) -> WeightsRecord | None:
        """The record of model ``name``, or None when no checkpoint is shipped for it."""
        for member in cls:
            if member.value.model == name:
                return member.value
        return None


def _record_or_plain(name: str) -> WeightsRecord:
    rec = Weights.for_model(name)
    if rec is not None:
        return rec
    # A model without a shipped checkpoint: look for <name>.safetensors, nothing to verify.
    return WeightsRecord(name, f"{name}.safetensors", "", 0, 0, "", f"{name}.json")


def package_weights_dir() -> Path:
    """``vostool/weights/`` inside the installed package (or the source tree)."""
    return Path(__file__).resolve().parents[1] / "weights"


def cache_dir() -> Path:
    """``$VOSTOOL_CACHE``, else ``$XDG_CACHE_HOME/vostool``, else ``~/.cache/vostool``."""
    env = os.environ.get("VOSTOOL_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "vostool"


def search_dirs() -> list[tuple[str, Path]]:
    """Where shipped checkpoints are looked for, in order: (label, folder)."""
    dirs = []
    env = os.environ.get("VOSTOOL_WEIGHTS")
    if env:
        dirs.append(("$VOSTOOL_WEIGHTS", Path(env).expanduser()))
    dirs.append(("package", package_weights_dir()))
    dirs.append(("cache", cache_dir() / "weights"))
    return dirs


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check(path: Path, rec: WeightsRecord, origin: str) -> None:
    if not rec.sha256:
        return
    got = file_sha256(path)
    if got != rec.sha256:
        path.unlink(missing_ok=True)
        raise VostoolError(
            f"checksum mismatch for {rec.model} weights from {origin}: sha256 {got[:12]}..., expected "
            f"{rec.sha256[:12]}...; the file was removed, run again to download it afresh"
        )


def find_weights(name: str) -> Path | None:
    """The local checkpoint of model ``name`` (no download), or None.

    A cached file is checked against its record's sha256 (mismatch: VostoolError).
    """
    rec = _record_or_plain(name)
    for label, folder in search_dirs():
        if label == "cache":
            path = folder / (rec.cache_name if rec.sha256 else rec.file)
            if path.is_file():
                _check(path, rec, str(path))
                return path
        elif (folder / rec.file).is_file():
            return folder / rec.file
    return None


def download_url(name: str) -> str | None:
    """Where the checkpoint of ``name`` can be downloaded: ``$VOSTOOL_WEIGHTS_URL/<file>``
    when that is set, else the record's published URL (None: nowhere)."""
    rec = _record_or_plain(name)
    base = os.environ.get("VOSTOOL_WEIGHTS_URL")
    if base:
        return base.rstrip("/") + "/" + rec.file
    return rec.url


def fetch_weights(name: str, url: str) -> Path:
    """Download the checkpoint of ``name`` from ``url`` into the cache, checking its sha256.

    Writes ``<cache>/weights/<stem>-<sha8>.safetensors`` via a ``.part`` file and, best effort,
    the card beside it. Raises VostoolError when the download fails or the checksum differs.
    """
    rec = _record_or_plain(name)
    folder = cache_dir() / "weights"
    dest = folder / (rec.cache_name if rec.sha256 else rec.file)
    part = dest.with_name(dest.name + ".part")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            while chunk := response.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
    except (OSError, ValueError, urllib.error.URLError) as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise VostoolError(f"cannot download {rec.model} weights from {url} ({reason})") from None
    if rec.sha256 and h.hexdigest() != rec.sha256:
        part.unlink(missing_ok=True)
        raise VostoolError(
            f"checksum mismatch for {rec.model} weights from {url}: sha256 {h.hexdigest()[:12]}..., "
            f"expected {rec.sha256[:12]}...; nothing was saved"
        )
    os.replace(part, dest)
    card_url = url.rsplit("/", 1)[0] + "/" + rec.card
    try:
        with urllib.request.urlopen(card_url, timeout=60) as response:
            dest.with_suffix(".json").write_bytes(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        pass  # the card is documentation; the checkpoint carries everything needed to run
    return dest


def resolve_weights(name: str) -> Path:
    """The checkpoint of model ``name``: found locally (see the module docstring) or
    downloaded into the cache. Raises VostoolError when there is none anywhere."""
    path = find_weights(name)
    if path is not None:
        return path
    url = download_url(name)
    if url is not None:
        return fetch_weights(name, url)
    looked = ", ".join(str(folder) for _, folder in search_dirs())
    raise VostoolError(
        f"no shipped weights for '{name}' (looked in {looked}); train them with "
        f"`vostool train --model {name}`, pass --weights, or set VOSTOOL_WEIGHTS_URL to a mirror"
    )


def record_for_file(path: str | os.PathLike[str]) -> WeightsRecord:
    """A record describing an existing checkpoint file and the card beside it."""
    path = Path(path)
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    return WeightsRecord(
        card.get("model", path.stem), path.name, file_sha256(path), path.stat().st_size,
        int(card.get("inference_size") or 0), str(card.get("backbone", "")), card_path.name,
    )


if __name__ == "__main__":  # print the records of the files in weights/ (after a retrain)
    for p in sorted(package_weights_dir().glob("*.safetensors")):
        print(record_for_file(p))
