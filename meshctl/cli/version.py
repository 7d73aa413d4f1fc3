from __future__ import annotations

import typer

from meshctl import __version__


def version() -> None:
    typer.echo(f"meshctl {__version__}")
