"""The ``vostool`` command: a thin Typer app over the library."""

from __future__ import annotations

import typer

from vostool import __version__
from vostool.cli.common import OneLineGroup, friendly_errors
from vostool.cli.models import models
from vostool.cli.segment import segment

app = typer.Typer(
    name="vostool",
    help="Video object segmentation: follow the objects of a first-frame mask through a video.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain help (no boxed panels, no <bool> metavars); usage errors are one line (OneLineGroup)
    cls=OneLineGroup,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vostool {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """vostool: segment, evaluate, benchmark and train video object segmentation models."""


app.command("segment")(segment)
app.command("models")(models)

try:  # commands that live in their own modules
    from vostool.cli.eval import eval_app

    app.add_typer(eval_app, name="eval", help="Score results on DAVIS-2016, DAVIS-2017 or your own folders.")
except ImportError:  # pragma: no cover - during development only
    pass
try:
    from vostool.cli.train import train_command

    app.command("train")(train_command)
except ImportError:  # pragma: no cover
    pass
try:
    from vostool.cli.bench import bench

    app.command("bench")(bench)
except ImportError:  # pragma: no cover
    pass


def _wrap_all(t: typer.Typer) -> None:
    """Every command of the app (and of mounted sub-apps) reports errors as one line."""
    for cmd in t.registered_commands:
        if cmd.callback is not None and not getattr(cmd.callback, "_friendly", False):
            cmd.callback = friendly_errors(cmd.callback)
            cmd.callback._friendly = True  # type: ignore[attr-defined]
    for group in t.registered_groups:
        if group.typer_instance is not None:
            _wrap_all(group.typer_instance)


_wrap_all(app)


def main() -> None:
    try:
        app()
    finally:
        from vostool.interrupts import ignore_if_stopped

        ignore_if_stopped()  # a stopped run exits with its code, whatever signal comes after
