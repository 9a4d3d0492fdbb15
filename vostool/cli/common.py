"""What every command shares: consoles, one-line errors, progress bars, option parsing."""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)

from vostool.errors import VostoolError

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
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]: outputs written so far are complete", highlight=False)
            raise typer.Exit(130) from None
        except MemoryError:
            err_console.print("[bold red]error:[/] out of memory; try a smaller --size", highlight=False)
            raise typer.Exit(1) from None
        except Exception as exc:  # a bug: still one line, unless debugging
            if os.environ.get("VOSTOOL_DEBUG"):
                raise
            msg = " ".join(str(exc).split()) or type(exc).__name__
            err_console.print(f"[bold red]error:[/] {type(exc).__name__}: {msg} "
                              "(set VOSTOOL_DEBUG=1 for the traceback)", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def warn(message: str) -> None:
    """A warning on stderr, one line."""
    err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def make_progress(quiet: bool = False) -> Progress:
    """A rich progress bar on stderr, disabled in pipes or with ``--quiet``."""
    disable = quiet or not sys.stderr.isatty()
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[fps]:>6.1f} fps"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=err_console, disable=disable, transient=False,
    )


def parse_floats(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise VostoolError(f"{name} must be a comma-separated list of numbers, got '{text}'") from None
    if not values:
        raise VostoolError(f"{name} is empty")
    return values
