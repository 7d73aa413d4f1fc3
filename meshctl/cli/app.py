"""The typer app: global options, command registration, error -> exit code.

Commands are built on first use (cli/commands.py), and command modules import heavy
libraries inside their functions, so that `meshctl version` starts fast.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer
import typer.core

from meshctl.errors import EXIT_FAILURE, MeshctlError
from meshctl.settings import DEFAULT_INTERFACE, DEFAULT_LISTEN_PORT, DEFAULT_STATE_DIR, WG_BACKENDS, Settings

if TYPE_CHECKING:
    from typer.core import TyperCommand, TyperGroup

P = ParamSpec("P")
R = TypeVar("R")


# Any: the value type of TyperGroup.commands is click's Command, which typer vendors privately.
class _CommandTable(MutableMapping[str, Any]):
    """The root group's commands: every name of cli/commands.py, each built when first read.

    Names alone (typer's "did you mean" on a typo) build nothing; `--help` and completion
    read every command and so build them all.
    """

    def __init__(self, registered: Mapping[str, Any]) -> None:
        self._built: dict[str, TyperCommand | TyperGroup] = dict(registered)

    def __getitem__(self, name: str) -> TyperCommand | TyperGroup:
        if name not in self._built:
            from meshctl.cli import commands

            built = commands.load(name)
            if built is None:
                raise KeyError(name)
            self._built[name] = built
        return self._built[name]

    def __setitem__(self, name: str, command: TyperCommand | TyperGroup) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        raise TypeError("meshctl's commands are listed in cli/commands.py")

    def __iter__(self) -> Iterator[str]:
        from meshctl.cli import commands

        return iter([*commands.COMMANDS, *(name for name in self._built if name not in commands.COMMANDS)])

    def __len__(self) -> int:
        return sum(1 for _ in self)


class LazyCommandGroup(typer.core.TyperGroup):
    """The root `meshctl` group, whose commands come from the table in cli/commands.py.

    click looks a subcommand up by name (`get_command`), so only the command typed gets
    its module imported and its parameters built.
    """

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = _CommandTable(self.commands)  # keeps any command registered on `app` itself


app = typer.Typer(
    cls=LazyCommandGroup,
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


def build_app() -> typer.Typer:
    """The app with every command of cli/commands.py (each built when first looked up)."""
    return app


def main() -> None:
    build_app()()
