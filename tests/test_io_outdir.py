"""Output folders: --overwrite replaces only what vostool recorded in its manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_io_writers import run_writer
from test_io_helpers import make_video

from vostool.errors import VostoolError
from vostool.io import MANIFEST_NAME, check_out_dir, output_targets, prepare_out_dir


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.fixture
def clip(tmp_path):
    return make_video(tmp_path / "clip.mkv", n=3)


def test_targets():
    assert output_targets({"masks", "overlay"}) == ["masks", "overlay.mp4"]
    assert output_targets({"objects", "alpha-video"}, "webm") == ["objects", "alpha.webm"]


def test_manifest_records_every_file_and_created_folder(tmp_path, clip):
    out = tmp_path / "out"
    run_writer(clip, out, {"masks", "objects", "overlay"})
    lines = [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()]
    assert lines[0] == {"vostool-manifest": 1}
    files = {e["f"] for e in lines if "f" in e}
    dirs = {e["d"] for e in lines if "d" in e}
    assert dirs == {"masks", "objects", "objects/3", "objects/7"}
    assert files == {p for p in tree(out) if "." in p.rpartition("/")[2] and p != MANIFEST_NAME}
    assert "overlay.mp4" in files and "objects/7/00002.png" in files


def test_reported_case_user_files_beside_the_outputs_are_kept(tmp_path, clip):
    # `segment proj/clip.mp4 --mask proj/masks/first.png --outputs overlay --out proj --overwrite`
    proj = tmp_path / "proj"
    (proj / "masks").mkdir(parents=True)
    (proj / "masks" / "first.png").write_bytes(b"the user's mask")
    (proj / "notes.txt").write_text("notes")
    for overwrite in (False, True):
        check_out_dir(proj, output_targets({"overlay"}), overwrite)
        prepare_out_dir(proj, overwrite, output_targets({"overlay"}))
        run_writer(clip, proj, {"overlay"})
        assert (proj / "masks" / "first.png").read_bytes() == b"the user's mask"
        assert (proj / "notes.txt").read_text() == "notes"
    assert tree(proj) == [MANIFEST_NAME, "masks", "masks/first.png", "notes.txt", "overlay.mp4"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_users_file_where_outputs_go_is_refused(tmp_path, overwrite):
    proj = tmp_path / "proj"
    (proj / "masks").mkdir(parents=True)
    (proj / "masks" / "first.png").write_bytes(b"x")
    (proj / "overlay.mp4").write_bytes(b"y")
    before = tree(proj)
    with pytest.raises(VostoolError, match=r"holds masks/first.png and 1 more, not written by vostool"):
        prepare_out_dir(proj, overwrite, output_targets({"masks", "overlay"}))
    with pytest.raises(VostoolError, match=r"holds overlay.mp4, not written by vostool"):
        check_out_dir(proj, output_targets({"overlay"}), overwrite)
    assert tree(proj) == before


def test_a_user_file_added_among_vostools_outputs_is_refused(tmp_path, clip):
    out = tmp_path / "out"
    run_writer(clip, out, {"masks"})
    (out / "masks" / "README.txt").write_text("mine")
    with pytest.raises(VostoolError, match="masks/README.txt, not written by vostool"):
        prepare_out_dir(out, True, output_targets({"masks"}))
    assert len(list((out / "masks").glob("*.png"))) == 3


def test_overwrite_replaces_only_the_targets(tmp_path, clip):
    out = tmp_path / "out"
    run_writer(clip, out, {"masks", "objects", "overlay"})
    (out / "notes.txt").write_text("notes")
    with pytest.raises(VostoolError, match=r"already holds vostool outputs \(masks/, objects/\); pass --overwrite"):
        check_out_dir(out, output_targets({"masks", "objects"}), False)
    prepare_out_dir(out, True, output_targets({"masks", "objects"}))
    # vostool's folders are gone with their files; the overlay (not a target) and the notes stay
    assert tree(out) == [MANIFEST_NAME, "notes.txt", "overlay.mp4"]
    prepare_out_dir(out, True, output_targets({"masks", "objects"}))  # nothing left to replace: fine
    run_writer(clip, out, {"masks"})
    prepare_out_dir(out, True)  # every output vostool writes
    assert tree(out) == ["notes.txt"]


def test_pre_existing_folder_is_kept_after_overwrite(tmp_path, clip):
    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)  # the user's (empty) folder: vostool writes into it
    run_writer(clip, out, {"masks"})
    prepare_out_dir(out, True, ["masks"])
    assert tree(out) == ["masks"]


def test_leftovers_of_a_killed_run_never_block_a_rerun(tmp_path, clip):
    out = tmp_path / "out"
    run_writer(clip, out, {"masks", "overlay"})
    # what SIGKILL leaves: a .tmp PNG and a .part video of recorded files, a cut manifest line
    (out / "masks" / "00002.png").rename(out / "masks" / "00002.tmp.png")
    (out / "overlay.mp4").rename(out / "overlay.mp4.part")
    with open(out / MANIFEST_NAME, "a") as fh:
        fh.write('{"f": "masks/000')
    with pytest.raises(VostoolError, match=r"already holds vostool outputs \(masks/\); pass --overwrite"):
        prepare_out_dir(out, False, output_targets({"masks", "overlay"}))
    prepare_out_dir(out, False, output_targets({"overlay"}))  # only leftovers there: removed
    assert not list(out.rglob("*.part")) and not list(out.rglob("*.tmp.*"))
    assert tree(out) == [MANIFEST_NAME, "masks", "masks/00000.png", "masks/00001.png"]
    run_writer(clip, out, {"overlay"})
    prepare_out_dir(out, True, output_targets({"masks", "overlay"}))
    assert tree(out) == []


def test_killed_before_the_first_frame_needs_no_overwrite(tmp_path, clip):
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST_NAME).write_text('{"vostool-manifest": 1}\n{"f": "overlay.mp4"}\n')
    (out / "overlay.mp4.part").write_bytes(b"\0" * 48)
    prepare_out_dir(out, False, output_targets({"overlay"}))
    run_writer(clip, out, {"overlay"})
    assert tree(out) == [MANIFEST_NAME, "overlay.mp4"]


def test_old_outputs_without_manifest_are_not_deleted(tmp_path):
    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)
    (out / "masks" / "00000.png").write_bytes(b"x")
    (out / "overlay.mp4.part").write_bytes(b"x")
    with pytest.raises(VostoolError, match="not written by vostool"):
        prepare_out_dir(out, True, output_targets({"overlay"}))
    assert tree(out) == ["masks", "masks/00000.png", "overlay.mp4.part"]


def test_out_path_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(VostoolError, match="exists and is not a folder"):
        check_out_dir(tmp_path / "f", ["masks"], True)
