"""The root `meshctl` group: global options and the lazy command table (entry point).

Commands are built on first use (cli/commands.py), and command modules import heavy
libraries inside their functions, so that `meshctl version` starts fast. Nothing imports
this module but the entry points: command modules use cli/common.py.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from difflib import get_close_matches
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core
import typer.main

from meshctl.cli.commands import COMMANDS, HELP
from meshctl.cli.route_flags import expand_bool_flags
from meshctl.settings import DEFAULT_INTERFACE, DEFAULT_LISTEN_PORT, DEFAULT_STATE_DIR, WG_BACKENDS, Settings


# click's Context and Command are typer's vendored (private) click: typed Any here.
class LazyGroup(typer.core.TyperGroup):
    """The root `meshctl` group: click's documented lazy group ("Lazily Loading Subcommands").

    click looks a subcommand up by name (`get_command`), so only the command typed gets its
    module imported and its parameters built; the names and their loaders are cli/commands.py.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # Tailscale's `--accept-routes` and `--accept-routes=false` both work (cli/route_flags.py).
        return super().parse_args(ctx, expand_bool_flags(args))

    def list_commands(self, ctx: Any) -> list[str]:
        return [*COMMANDS, *(name for name in super().list_commands(ctx) if name not in COMMANDS)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            self.commands[cmd_name] = _build(cmd_name, COMMANDS[cmd_name]())
        return super().get_command(ctx, cmd_name)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        # typer suggests among the commands built so far (none, before this one): suggest among all.
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            matches = get_close_matches(name, self.list_commands(ctx))
            ctx.fail(f"No such command {name!r}." + (f" Did you mean {', '.join(map(repr, matches))}?"
                                                      if matches else ""))
        return super().resolve_command(ctx, args)


def _build(name: str, target: Callable[..., Any] | typer.Typer) -> Any:
    """The click command for `meshctl NAME` from a typer command function or sub-app."""
    holder = typer.Typer(add_completion=False)
    if isinstance(target, typer.Typer):
        holder.add_typer(target, name=name)
    else:
        holder.command(name, help=HELP.get(name))(target)
    return typer.main.get_group(holder).commands[name]


app = typer.Typer(
    cls=LazyGroup,
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


def build_app() -> typer.Typer:
    """The app with every command of cli/commands.py (each built when first looked up)."""
    return app


def main() -> None:
    build_app()()
