"""The command table: one line per command, each in its own module under cli/.

Nothing here imports a command module: the root group (`app.LazyCommandGroup`) builds a
command the first time click looks it up by name, so `meshctl version` imports
cli/version.py and `meshctl status` cli/status.py, not every command's module and
signature (about as much again as `import typer`). `meshctl --help` and shell completion
look up every command, and so build them all, in this order.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final

import typer

if TYPE_CHECKING:
    from typer.core import TyperCommand, TyperGroup

# command name -> (module under meshctl.cli, attribute): a typer.Typer is a group of subcommands.
# `meshctl --help` lists them in this order.
COMMANDS: Final = {
    "version": ("version", "version"),
    "init": ("admin", "init"),
    "join": ("join", "join"),
    "sync": ("sync", "sync"),
    "up": ("up", "up"),
    "down": ("up", "down"),
    "status": ("status", "status"),
    "whois": ("status", "whois"),
    "ping": ("ping", "ping"),
    "netcheck": ("netcheck", "netcheck"),
    "relay": ("relay", "relay"),
    "admin": ("admin", "admin_app"),
    "repo": ("repo", "repo_app"),
    "acl": ("acl", "acl_app"),
}
# Help text for commands whose function has no docstring.
HELP: Final = {"version": "Print the meshctl version."}


def _mount_subgroups(name: str, group: typer.Typer) -> None:
    """Groups with a group inside from another module: `admin relay` (once per process)."""
    if name == "admin" and not any(sub.name == "relay" for sub in group.registered_groups):
        from meshctl.cli import relay

        group.add_typer(relay.relay_admin_app, name="relay")


def load(name: str) -> TyperCommand | TyperGroup | None:
    """The click command for `meshctl NAME`, or None when there is no such command."""
    entry = COMMANDS.get(name)
    if entry is None:
        return None
    module, attribute = entry
    target = getattr(importlib.import_module(f"meshctl.cli.{module}"), attribute)
    holder = typer.Typer(add_completion=False)
    if isinstance(target, typer.Typer):
        _mount_subgroups(name, target)
        holder.add_typer(target, name=name)
    else:
        holder.command(name, help=HELP.get(name))(target)
    built = typer.main.get_group(holder).commands[name]
    assert isinstance(built, (typer.core.TyperCommand, typer.core.TyperGroup))
    return built
