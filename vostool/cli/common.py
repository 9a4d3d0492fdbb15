"""What every command shares: consoles, one-line errors, progress bars, option parsing."""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Sequence
from typing import Any, Callable, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from typer import _click
from typer.core import TyperCommand, TyperGroup

from vostool.errors import VostoolError
from vostool.interrupts import interrupt_exit_code, interrupt_message, orderly_signals

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(fn: F) -> F:
    """Turn any error into one line on stderr and a non-zero exit (never a traceback).

    ``VOSTOOL_DEBUG=1`` re-raises unexpected errors with their traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except VostoolError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP: exit 130, 143, 129
            try:
                err_console.print(f"[yellow]{interrupt_message(exc)}[/]", highlight=False)
            except OSError:  # the terminal is gone (SIGHUP)
                pass
            raise typer.Exit(interrupt_exit_code(exc)) from None
        except MemoryError:
            err_console.print("[bold red]error:[/] out of memory; try a smaller --size", highlight=False)
            raise typer.Exit(1) from None
        except Exception as exc:  # a bug: still one line, unless debugging
            if os.environ.get("VOSTOOL_DEBUG"):
                raise
            msg = " ".join(str(exc).split()) or type(exc).__name__
            err_console.print(f"[bold red]error:[/] {type(exc).__name__}: {escape(msg)} "
                              "(set VOSTOOL_DEBUG=1 for the traceback)", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    @functools.wraps(fn)
    def in_order(*args: Any, **kwargs: Any) -> Any:
        with orderly_signals():  # SIGTERM/SIGHUP stop like Ctrl-C; later signals cannot cut the shutdown
            return wrapper(*args, **kwargs)

    return in_order  # type: ignore[return-value]


def warn(message: str) -> None:
    """A warning on stderr, one line."""
    err_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def check_device_precision(device: str, precision: str) -> None:
    """Resolve ``--device`` and ``--precision`` now, so that their errors (no CUDA, an unknown
    name, fp16 on the CPU) come before anything is created. ``--precision bf16`` on a CPU
    without native bf16 (AVX-512 BF16 or AMX) runs fp32, as ``auto`` does there, with one
    warning line."""
    from vostool.engine.device import cpu_has_native_bf16, resolve_device, resolve_precision

    dev = resolve_device(device)
    resolve_precision(precision, dev)
    if (precision or "").lower() == "bf16" and dev.type == "cpu" and not cpu_has_native_bf16():
        warn("--precision bf16: this CPU has no native bf16 (AVX-512 BF16 or AMX); running fp32, "
             "which is faster here than emulated bf16")


class _RateColumn(ProgressColumn):
    """Frames per second, or the task's own ``note`` (``--adapt``: the loss)."""

    def render(self, task: Task) -> Text:
        note = task.fields.get("note")
        if note is not None:
            return Text(str(note))
        return Text(f"{task.fields.get('fps', 0.0):>6.1f} fps")


def make_progress(quiet: bool = False) -> Progress:
    """A rich progress bar on stderr, disabled in pipes or with ``--quiet``."""
    disable = quiet or not sys.stderr.isatty()
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        _RateColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=err_console, disable=disable, transient=False,
    )


def adapt_progress(progress: Progress, label: str) -> Callable[[int, int, float], None]:
    """``--adapt``'s progress callback ``(step, steps, loss)`` for ``progress``: one bar
    ``adapt <label>`` with the steps, the loss and the seconds left; a new fit (a later
    ``--mask-at`` frame) starts it again."""
    task: list[Any] = []

    def update(step: int, steps: int, loss: float) -> None:
        if not task:
            task.append(progress.add_task(f"adapt {label}", total=steps, note=""))
        elif step == 1:
            progress.reset(task[0], total=steps)
        progress.update(task[0], completed=step, note="encoding" if math.isnan(loss) else f"loss {loss:.4f}")

    return update


def error_line(message: str) -> None:
    """The one-line ``error: ...`` on stderr (whitespace, newlines included, collapsed)."""
    err_console.print(f"[bold red]error:[/] {escape(' '.join(str(message).split()))}", highlight=False,
                      soft_wrap=True)


class _OneLineMain:
    """Usage errors (``--size abc``, a missing argument, an unknown option) are one line on
    stderr, ``error: <what> (see '<command> -h')``, exit code 2, not click's usage block or
    Typer's boxed panel. Help, ``--version`` and the commands' own exit codes are unchanged."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, **extra)
        except _click.exceptions.NoArgsIsHelpError as exc:  # bare `vostool` / `vostool eval`
            exc.show()
            rv = exc.exit_code
        except _click.exceptions.ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} -h')" if ctx is not None else ""
            error_line(exc.format_message() + hint)
            rv = exc.exit_code
        except _click.exceptions.Abort:
            error_line("aborted")
            rv = 1
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


class OneLineGroup(_OneLineMain, TyperGroup):
    """The app's command group, with one-line usage errors (``typer.Typer(cls=OneLineGroup)``)."""


class OneLineCommand(_OneLineMain, TyperCommand):
    """A single-command app's command, with one-line usage errors (``app.command(cls=...)``)."""


# -- numeric options: one range check, the same in every command ---------------------------

def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def describe_range(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> str:
    """``32..4096``, ``(0, 1000]``: the range as the help texts and errors write it."""
    if not lo_open and not hi_open:
        return f"{_fmt(lo)}..{_fmt(hi)}"
    return f"{'(' if lo_open else '['}{_fmt(lo)}, {_fmt(hi)}{')' if hi_open else ']'}"


def check_number(value: Any, name: str, lo: float, hi: float, *, integer: bool = False,
                 lo_open: bool = False, hi_open: bool = False) -> Any:
    """``value`` if it is a finite number in the range, else a one-line :class:`VostoolError`
    naming the option and the range. ``None`` (option not given) passes."""
    if value is None:
        return None
    kind = "an integer" if integer else "a number"
    rng = describe_range(lo, hi, lo_open, hi_open)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        raise VostoolError(f"{name} must be {kind} in {rng}, got {_fmt(value)}")
    return int(value) if integer else float(value)


def _range_option(default: Any, decls: tuple[str, ...], help: str, lo: float, hi: float, integer: bool,
                  lo_open: bool, hi_open: bool, **kwargs: Any) -> Any:
    name = next((d for d in decls if d.startswith("--")), decls[0] if decls else "value")

    def callback(value: Any) -> Any:
        try:
            return check_number(value, name, lo, hi, integer=integer, lo_open=lo_open, hi_open=hi_open)
        except VostoolError as exc:
            raise typer.BadParameter(str(exc).replace(f"{name} must", "must", 1)) from None

    text = f"{help} Range: {describe_range(lo, hi, lo_open, hi_open)}."
    return typer.Option(default, *decls, help=text, callback=callback, **kwargs)


def int_option(default: Any, *decls: str, lo: int, hi: int, help: str, **kwargs: Any) -> Any:
    """A ``typer.Option`` for an integer in ``lo..hi``: the range is added to the help and
    anything outside it (huge integers included) is a one-line usage error. ``default=...``
    for ``Annotated`` parameters."""
    return _range_option(default, decls, help, lo, hi, True, False, False, **kwargs)


def float_option(default: Any, *decls: str, lo: float, hi: float, help: str, lo_open: bool = False,
                 hi_open: bool = False, **kwargs: Any) -> Any:
    """A ``typer.Option`` for a finite float in the range (``nan``/``inf`` refused), the range
    in the help."""
    return _range_option(default, decls, help, lo, hi, False, lo_open, hi_open, **kwargs)


def parse_floats(text: str, name: str, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False) -> list[float]:
    """A comma-separated list of finite numbers, each in the range when one is given."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise VostoolError(f"{name} must be a comma-separated list of numbers, got '{text}'") from None
    if not values:
        raise VostoolError(f"{name} is empty")
    for v in values:
        if not math.isfinite(v):
            raise VostoolError(f"{name} must be finite numbers, got {v:g}")
        if lo is not None and hi is not None:
            check_number(v, name, lo, hi, lo_open=lo_open)
    return values
