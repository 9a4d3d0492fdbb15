"""Rendering benchmark results: one rich table plus the conditions they were measured in."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from vostool.bench.runner import BaselineResult, BenchResult


def _f(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def results_table(results: Sequence[BenchResult], baseline: BaselineResult | None = None) -> Table:
    """One row per model: speed model-alone and end to end, latency, memory."""
    with_base = any(r.baseline_ratio is not None for r in results)
    with_long = any(r.long_frames for r in results)
    with_share = any(r.propagation_share is not None for r in results)
    table = Table(title="vostool bench", title_justify="left", header_style="bold")
    table.add_column("model")
    table.add_column("backbone")
    table.add_column("weights")
    table.add_column("precision")
    table.add_column("net input HxW", justify="right")
    table.add_column("K", justify="right")
    table.add_column("FPS model", justify="right")
    table.add_column("FPS e2e", justify="right")
    table.add_column("ms median", justify="right")
    table.add_column("ms p90", justify="right")
    mem = "peak MB" if all(r.device_type == "cuda" for r in results) else "peak RSS MB (+model)"
    table.add_column(mem, justify="right")
    if with_long:
        table.add_column("mem start->end MB", justify="right")
    if with_share:
        table.add_column("prop. share", justify="right")
    if with_base:
        table.add_column("x ResNet-50 trunk time", justify="right")
    for r in results:
        mem_cell = f"{r.peak_mem_mb:.0f}"
        if r.mem_delta_mb is not None:
            mem_cell += f" (+{r.mem_delta_mb:.0f})"
        row = [
            r.model, r.backbone, r.weights if r.weights in ("shipped", "random") else "file", r.precision,
            f"{r.padded_hw[0]}x{r.padded_hw[1]}", str(r.objects), _f(r.fps_model), _f(r.fps_end_to_end),
            _f(r.ms_median), _f(r.ms_p90), mem_cell,
        ]
        if with_long:
            row.append(f"{r.mem_start_mb:.0f}->{r.mem_end_mb:.0f} ({r.long_frames} fr)" if r.long_frames else "-")
        if with_share:
            row.append(_f(r.propagation_share, "{:.0%}"))
        if with_base:
            row.append(_f(r.baseline_ratio, "{:.3f}"))
        table.add_row(*row)
    return table


def conditions_lines(results: Sequence[BenchResult], baseline: BaselineResult | None = None) -> list[str]:
    """The conditions shared by (or differing between) the rows, one per line."""
    if not results:
        return []
    r0 = results[0]

    def one(attr: str) -> str:
        values = sorted({str(getattr(r, attr)) for r in results})
        return values[0] if len(values) == 1 else "/".join(values)

    src = r0.source_hw
    isa = sorted({r.cpu_isa for r in results if r.cpu_isa})
    lines = [
        f"device: {one('device')}" + (f"; CPU ISA: {' / '.join(isa)}" if isa else ""),
        f"torch {r0.torch}; precision {one('precision')}; channels_last {one('channels_last')}; "
        f"torch.compile {one('compile')}; threads {_threads(results)} (interop {one('interop_threads')})",
        f"input: {r0.input} {src[0]}x{src[1]} (HxW), internal size {one('size')} (network input "
        f"{'/'.join(sorted({f'{r.padded_hw[0]}x{r.padded_hw[1]}' for r in results}))}), "
        f"{one('objects')} object(s) per frame, counted as one frame",
        f"timing: {one('frames')} frames after {one('warmup')} warm-up, model alone = Propagator.step "
        f"(resize, network, merge, result at source size) with frames in memory; "
        f"e2e = decode + segment + write masks PNG and overlay.mp4 ({one('frames_end_to_end')} frames)",
        f"memory: {r0.peak_mem_kind.replace('_', ' ')}"
        + ("" if r0.device_type == "cuda" else "; (+model) = growth over the RSS before the model was built"),
    ]
    paths = list(dict.fromkeys(r.inference_path for r in results if r.inference_path))
    if len(paths) == 1:
        lines.append(f"inference path: {paths[0]}")
    else:
        lines.extend(f"inference path ({r.model}): {r.inference_path}" for r in results if r.inference_path)
    based = [r for r in results if r.baseline_ms is not None]
    if based:
        each = ", ".join(f"{r.baseline_ms:.0f} ms at {r.baseline_threads} thr" for r in based)
        lines.append(
            "x ResNet-50 trunk time: model ms / ms of a torchvision resnet50 conv1..layer4 forward, fp32, NCHW, "
            f"no_grad, random weights, at {_baseline_dims(r0)}, interleaved with the timed frames, the faster "
            f"of all threads and 1 thread ({each})"
        )
    if baseline is not None:
        lines.append(f"{baseline.name} fp32 NCHW at {baseline.input_hw[0]}x{baseline.input_hw[1]}: "
                     f"{baseline.ms_median:.1f} ms median ({baseline.fps:.2f} FPS)")
    for r in results:
        if r.adapt_s is not None:
            lines.append(f"--adapt ({r.model}): {r.adapt_s:.1f} s to learn the first frame's objects "
                         f"({r.adapt_steps} steps), once per video, not in the fps")
    for r in results:
        for note in r.notes:
            lines.append(f"note ({r.model}): {note}")
    return lines


def _baseline_dims(r: BenchResult) -> str:
    from vostool.bench.runner import _baseline_hw

    h, w = _baseline_hw(r.size or min(r.source_hw))
    return f"{h}x{w}"


def _threads(results: Sequence[BenchResult]) -> str:
    parts = []
    for r in results:
        if r.threads_mode == "auto":
            used = ", ".join(f"{n}: {k} fr" for n, k in sorted(r.threads_used.items(), reverse=True))
            parts.append(f"auto ({used})")
        else:
            parts.append(str(r.threads))
    uniq = list(dict.fromkeys(parts))
    if len(uniq) == 1:
        return uniq[0]
    return "; ".join(f"{r.model} {p}" for r, p in zip(results, parts))
