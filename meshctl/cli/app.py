"""The typer app: global options, command registration, error -> exit code.

Command modules are small and import heavy libraries inside their functions so
that `meshctl version` starts fast.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer

from meshctl.errors import EXIT_FAILURE, MeshctlError
from meshctl.settings import DEFAULT_INTERFACE, DEFAULT_LISTEN_PORT, DEFAULT_STATE_DIR, WG_BACKENDS, Settings

P = ParamSpec("P")
R = TypeVar("R")

app = typer.Typer(
    name="meshctl",
    help="A mesh VPN whose coordination plane is a git repository of signed files.\n\n"
    "New mesh: an admin runs `meshctl init DIR --name NAME` and pushes DIR to a git host. "
    "New device: `sudo meshctl join URL --root sha256:...` (the line `meshctl admin invite` prints), "
    "an admin approves it, then `sudo meshctl up`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # never print locals: they may hold private keys
    pretty_exceptions_show_locals=False,
    add_completion=True,
)


@app.callback()
def _global_options(
    ctx: typer.Context,
    state_dir: Annotated[
        Path,
        # readable=False: a state dir only root can read gets meshctl's own message, not typer's
        typer.Option(envvar="MESHCTL_STATE_DIR", readable=False,
                     help="Where this device's keys and mesh state live."),
    ] = DEFAULT_STATE_DIR,
    interface: Annotated[
        str, typer.Option(envvar="MESHCTL_INTERFACE", help="Name of the mesh network interface this node creates.")
    ] = DEFAULT_INTERFACE,
    wg_backend: Annotated[
        str,
        typer.Option(envvar="MESHCTL_WG_BACKEND",
                     help="WireGuard implementation: auto (the kernel module if there is one, else wireguard-go), "
                          "kernel or userspace."),
    ] = "auto",
    listen_port: Annotated[
        int, typer.Option(envvar="MESHCTL_LISTEN_PORT", help="WireGuard UDP listen port.", min=1, max=65535)
    ] = DEFAULT_LISTEN_PORT,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More logging on stderr: -v info, -vv debug.")
    ] = 0,
) -> None:
    if wg_backend not in WG_BACKENDS:
        raise typer.BadParameter(f"must be one of {', '.join(WG_BACKENDS)}", param_hint="--wg-backend")
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ctx.obj = Settings(state_dir=state_dir, interface=interface, wg_backend=wg_backend, listen_port=listen_port)


def settings_of(ctx: typer.Context) -> Settings:
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
            typer.echo(f"meshctl: {exc.message}", err=True)
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


_registered = False


def build_app() -> typer.Typer:
    """Register every command once (the modules are light; heavy imports sit inside)."""
    global _registered
    if not _registered:
        from meshctl.cli import commands

        commands.register(app)
        _registered = True
    return app


def main() -> None:
    build_app()()
