"""The command-line interface: a thin Typer app."""
