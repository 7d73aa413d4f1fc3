"""What every command module needs: this run's settings and the error -> exit code wrapper.

Command modules import this, never cli/app.py (the root group imports them, lazily): the
dependency goes one way, app -> commands -> common.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

from meshctl.errors import EXIT_FAILURE, MeshctlError
from meshctl.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")


def settings_of(ctx: typer.Context) -> Settings:
    """The global options (--state-dir, --interface, ...), set by the root group's callback."""
    obj = ctx.find_root().obj
    assert isinstance(obj, Settings)
    return obj


def command(fn: Callable[P, R]) -> Callable[P, R]:
    """Wrap a command body: a MeshctlError becomes one line on stderr and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except MeshctlError as exc:
            for line in exc.message.splitlines() or [""]:  # several problems: one line each
                typer.echo(f"meshctl: {line}", err=True)
            if exc.hint:
                typer.echo(f"hint: {exc.hint}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except PermissionError as exc:  # e.g. /var/lib/meshctl (0700 root) read by a user
            where = f": {exc.filename}" if exc.filename else ""
            typer.echo(f"meshctl: permission denied{where}", err=True)
            typer.echo("hint: run it as root (sudo meshctl ...), or pass --state-dir", err=True)
            raise typer.Exit(EXIT_FAILURE) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return wrapper
