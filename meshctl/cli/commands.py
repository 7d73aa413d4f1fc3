"""The command table: one line per command, each in its own module under cli/."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from meshctl.cli import version

    app.command("version", help="Print the meshctl version.")(version.version)
