"""``vostool eval ... --report DIR``: a self-contained ``report.html`` with pictures.

The page needs nothing but the files written beside it (no scripts, no network):

- the global figures as a table;
- per-sequence J&F bars (one per object row, as in the per-sequence CSV), worst first, as
  inline SVG;
- J per frame curves, one small inline SVG per sequence (a line per object), worst first;
- for the worst sequences, ``strips/<sequence>.png``: a few frames (the worst-J frame among
  them) with the prediction on top and the ground truth below, overlaid on the video frame
  when the frames are known (DAVIS), else on grey.

Plots are drawn here as SVG and PNGs with OpenCV and Pillow: no plotting dependency.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from vostool.data.davis import SequenceSpec
from vostool.data.files import IMAGE_EXTS, read_frame
from vostool.data.masks import read_index_mask, without_void
from vostool.errors import VostoolError
from vostool.eval.scoring import GLOBAL_COLUMNS, EvalResult, SequenceScore

REPORT_NAME = "report.html"
STRIP_DIR = "strips"
STRIP_FRAMES = 5
THUMB_HEIGHT = 160


def _color(value: float) -> str:
    """Red (0) through amber to green (1), as a CSS hex colour."""
    v = 0.0 if math.isnan(value) else min(max(value, 0.0), 1.0)
    r, g = (220, int(60 + 300 * v)) if v < 0.5 else (int(220 - 300 * (v - 0.5)), 210)
    return f"#{min(r, 255):02x}{min(g, 255):02x}50"


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.3f}"


def _sequence_jf(result: EvalResult) -> dict[str, float]:
    """Mean J&F of each sequence over its objects."""
    by_seq: dict[str, list[float]] = {}
    for r in result.rows:
        by_seq.setdefault(r.sequence, []).append(r.jf_mean)
    return {k: float(np.nanmean(v)) if not all(math.isnan(x) for x in v) else float("nan")
            for k, v in by_seq.items()}


def _worst_first(names: Sequence[str], score: dict[str, float]) -> list[str]:
    return sorted(names, key=lambda n: (math.inf if math.isnan(score.get(n, math.nan)) else score[n], n))


def bars_svg(result: EvalResult) -> str:
    """Horizontal J&F bars, one per object row, worst first (inline SVG)."""
    rows = sorted(result.rows, key=lambda r: (math.inf if math.isnan(r.jf_mean) else r.jf_mean, r.name))
    label_w, bar_w, row_h, num_w = 220, 420, 20, 190
    width, height = label_w + bar_w + num_w, row_h * len(rows) + 24
    out = [f'<svg class="bars" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="J&amp;F per sequence, worst first">']
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = label_w + t * bar_w
        out.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height - 18}" stroke="#ddd"/>'
                   f'<text x="{x:.1f}" y="{height - 4}" font-size="11" text-anchor="middle">{t:g}</text>')
    for k, r in enumerate(rows):
        y = k * row_h
        jf = 0.0 if math.isnan(r.jf_mean) else max(r.jf_mean, 0.0)
        name = html.escape(r.name)
        out.append(
            f'<g class="bar" data-name="{name}"><text x="{label_w - 6}" y="{y + 14}" font-size="12" '
            f'text-anchor="end">{name}</text><rect x="{label_w}" y="{y + 3}" width="{jf * bar_w:.1f}" '
            f'height="{row_h - 6}" fill="{_color(r.jf_mean)}"><title>{name}: J&amp;F {_fmt(r.jf_mean)}'
            f'</title></rect><text x="{label_w + bar_w + 6}" y="{y + 14}" font-size="12">J&amp;F '
            f'{_fmt(r.jf_mean)} (J {_fmt(r.j_mean)}, F {_fmt(r.f_mean)})</text></g>'
        )
    out.append("</svg>")
    return "".join(out)


_LINE_COLORS = ("#c0392b", "#2471a3", "#229954", "#ca6f1e", "#7d3c98", "#17a589", "#b7950b", "#566573")


def curve_svg(score: SequenceScore, width: int = 320, height: int = 110) -> str:
    """J per scored frame of one sequence, a line per object, y from 0 to 1 (inline SVG)."""
    pad_l, pad_b, pad_t = 28, 16, 6
    pw, ph = width - pad_l - 6, height - pad_b - pad_t
    t = score.j.shape[1] if score.j.ndim == 2 else 0
    out = [f'<svg class="curve" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="J per frame of {html.escape(score.name)}">',
           f'<rect x="{pad_l}" y="{pad_t}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>']
    for v in (0.5, 1.0):
        y = pad_t + ph * (1 - v)
        out.append(f'<line x1="{pad_l}" y1="{y:.1f}" x2="{pad_l + pw}" y2="{y:.1f}" stroke="#e2e2e2"/>'
                   f'<text x="{pad_l - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{v:g}</text>')
    out.append(f'<text x="{pad_l - 4}" y="{pad_t + ph + 4}" font-size="10" text-anchor="end">0</text>')
    if t:
        first, last = html.escape(score.frames[0]), html.escape(score.frames[-1])
        out.append(f'<text x="{pad_l}" y="{height - 3}" font-size="10">{first}</text>'
                   f'<text x="{pad_l + pw}" y="{height - 3}" font-size="10" text-anchor="end">{last}</text>')
        for k in range(score.j.shape[0]):
            xs = [pad_l + (pw * i / (t - 1) if t > 1 else pw / 2) for i in range(t)]
            ys = [pad_t + ph * (1 - (0.0 if math.isnan(v) else float(v))) for v in score.j[k]]
            pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))
            color = _LINE_COLORS[k % len(_LINE_COLORS)]
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}">'
                       f'<title>object {score.object_ids[k]}</title></polyline>')
    out.append("</svg>")
    return "".join(out)


def _frame_image(spec: SequenceSpec, frame: str, shape: tuple[int, int]) -> np.ndarray:
    """H x W x 3 uint8 RGB of one frame, or grey when the frames are not known."""
    if spec.image_dir is not None:
        for suffix in IMAGE_EXTS:
            path = spec.image_dir / f"{frame}{suffix}"
            if path.is_file():
                try:
                    rgb = read_frame(path)
                except VostoolError:  # a picture of the masks is still worth drawing
                    break
                if rgb.shape[:2] == shape:
                    return rgb
    return np.full((*shape, 3), 96, np.uint8)


def _ids_for_display(mask: np.ndarray, binary: bool) -> np.ndarray:
    if binary:  # DAVIS-2016 and --binary: any non-zero id (255 included) is the object
        return (mask != 0).astype(np.uint8)
    mask = without_void(mask) if mask.dtype == np.uint8 else mask
    return mask.astype(np.uint8) if mask.max(initial=0) <= 255 else mask.astype(np.uint16)


def _thumb(image: np.ndarray, ids: np.ndarray, label: str) -> np.ndarray:
    from vostool.io.writers import render_overlay  # the same overlay as `vostool segment`

    over = render_overlay(image, ids)
    h, w = over.shape[:2]
    tw = max(1, round(w * THUMB_HEIGHT / h))
    thumb = cv2.resize(over, (tw, THUMB_HEIGHT), interpolation=cv2.INTER_AREA)
    (lw, lh), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
    cv2.rectangle(thumb, (0, 0), (lw + 8, lh + base + 6), (0, 0, 0), -1)
    cv2.putText(thumb, label, (4, lh + 3), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return thumb


def strip_frames(score: SequenceScore, count: int = STRIP_FRAMES) -> list[int]:
    """Positions (into ``score.frames``) for a strip: evenly spread, the worst-J frame included."""
    t = len(score.frames)
    if t == 0:
        return []
    n = min(count, t)
    picks = {round(i * (t - 1) / max(n - 1, 1)) for i in range(n)}
    mean_j = np.nanmean(score.j, axis=0) if score.j.size else np.zeros(t)
    worst = int(np.nanargmin(np.where(np.isnan(mean_j), np.inf, mean_j)))
    if worst not in picks:
        picks.remove(min(picks, key=lambda p: abs(p - worst)))
        picks.add(worst)
    return sorted(picks)


def write_strip(
    spec: SequenceSpec, score: SequenceScore, results_dir: Path, path: Path, binary: bool
) -> Path:
    """PNG strip of one sequence: frames left to right, prediction above ground truth."""
    columns = []
    for pos in strip_frames(score):
        frame = score.frames[pos]
        gt = read_index_mask(spec.mask_path(frame), "ground truth")
        pred_path = results_dir / spec.name / f"{frame}.png"
        pred = read_index_mask(pred_path, "result") if pred_path.is_file() else np.zeros_like(gt)
        if pred.shape != gt.shape:
            raise VostoolError(f"result {pred_path} is {pred.shape[1]}x{pred.shape[0]}, ground truth "
                               f"{gt.shape[1]}x{gt.shape[0]}")
        image = _frame_image(spec, frame, gt.shape)
        j = float(np.nanmean(score.j[:, pos])) if score.j.size else float("nan")
        top = _thumb(image, _ids_for_display(pred, binary), f"{frame} pred J {_fmt(j)}")
        bottom = _thumb(image, _ids_for_display(gt, binary), f"{frame} ground truth")
        columns.append(np.vstack([top, np.full((4, top.shape[1], 3), 255, np.uint8), bottom]))
    if not columns:
        raise VostoolError(f"sequence {spec.name} has no scored frame to show")
    gap = np.full((columns[0].shape[0], 4, 3), 255, np.uint8)
    strip = np.hstack([c if k == 0 else np.hstack([gap, c]) for k, c in enumerate(columns)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")
    Image.fromarray(strip).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "sequence"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px}h3{font-size:15px;margin:14px 0 4px}
table.global{border-collapse:collapse}table.global td,table.global th{border:1px solid #ccc;padding:4px 10px;
text-align:right}.curves{display:flex;flex-wrap:wrap;gap:12px}.curves figure{margin:0}
figcaption{font-size:12px}.strip img{max-width:100%;border:1px solid #ccc}.meta{color:#555;font-size:13px}
"""


def write_html_report(
    result: EvalResult,
    specs: Sequence[SequenceSpec],
    results_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    binary: bool = False,
    title: str = "vostool eval",
    meta: dict[str, str] | None = None,
    worst: int = 3,
) -> Path:
    """Write ``out_dir/report.html`` and ``out_dir/strips/<sequence>.png`` (the ``worst``
    sequences by J&F). ``binary``: single-object scoring (any non-zero id is the object).
    Returns the path of the page."""
    out = Path(out_dir)
    results = Path(results_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VostoolError(f"cannot create report folder {out} ({exc.strerror or exc})") from None
    seq_jf = _sequence_jf(result)
    order = _worst_first([s.name for s in result.sequences], seq_jf)
    scores = {s.name: s for s in result.sequences}
    by_name = {s.name: s for s in specs}

    strips: list[tuple[str, str]] = []
    for name in order[: max(worst, 0)]:
        if name not in by_name:
            continue
        rel = f"{STRIP_DIR}/{_safe_name(name)}.png"
        try:
            write_strip(by_name[name], scores[name], results, out / rel, binary)
        except OSError as exc:
            raise VostoolError(f"cannot write {out / rel} ({exc.strerror or exc})") from None
        strips.append((name, rel))

    g = result.global_figures
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if meta:
        parts.append('<p class="meta">' + " · ".join(f"{html.escape(k)}: {html.escape(str(v))}"
                                                    for k, v in meta.items()) + "</p>")
    parts.append(f'<p class="meta">{len(result.rows)} objects in {len(result.sequences)} sequences, '
                 f"{result.scored_frames} scored frames.</p>")
    parts.append('<table class="global"><tr>' + "".join(f"<th>{html.escape(c)}</th>" for c in GLOBAL_COLUMNS)
                 + "</tr><tr>" + "".join(f"<td>{_fmt(g[c])}</td>" for c in GLOBAL_COLUMNS) + "</tr></table>")
    parts.append("<h2>J&amp;F per sequence, worst first</h2>")
    parts.append(bars_svg(result))
    parts.append("<h2>J per frame</h2><p class=\"meta\">Region similarity of every scored frame (first and "
                 "last frames are not scored); one line per object; worst sequence first.</p>")
    parts.append('<div class="curves">')
    for name in order:
        parts.append(f'<figure id="curve-{html.escape(_safe_name(name))}">{curve_svg(scores[name])}'
                     f"<figcaption>{html.escape(name)}: J&amp;F {_fmt(seq_jf.get(name, math.nan))}"
                     "</figcaption></figure>")
    parts.append("</div>")
    if strips:
        parts.append(f"<h2>The {len(strips)} worst sequences</h2><p class=\"meta\">Each column is a frame "
                     "(the worst-J frame among them): prediction on top, ground truth below.</p>")
        for name, rel in strips:
            parts.append(f'<div class="strip"><h3>{html.escape(name)}: J&amp;F '
                         f'{_fmt(seq_jf.get(name, math.nan))}</h3><img src="{html.escape(rel)}" '
                         f'alt="prediction and ground truth of {html.escape(name)}"></div>')
    parts.append("</body></html>")
    page = out / REPORT_NAME
    tmp = out / "report.tmp.html"
    try:
        tmp.write_text("\n".join(parts), encoding="utf-8")
        os.replace(tmp, page)
    except OSError as exc:
        raise VostoolError(f"cannot write {page} ({exc.strerror or exc})") from None
    return page
