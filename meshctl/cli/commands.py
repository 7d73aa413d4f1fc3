"""The command table: one loader per command, each importing its module by a literal import.

Nothing is imported until click asks for a command by name (app.LazyGroup, click's documented
"lazily loading subcommands" pattern): `meshctl version` imports cli/version.py alone, `meshctl
status` cli/status.py. `meshctl --help` and shell completion look up every command, and so load
them all, in this order. Literal imports let PyInstaller (and readers) see every module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import typer


def _version() -> Callable[..., Any]:
    from meshctl.cli.version import version

    return version


def _init() -> Callable[..., Any]:
    from meshctl.cli.admin import init

    return init


def _join() -> Callable[..., Any]:
    from meshctl.cli.join import join

    return join


def _sync() -> Callable[..., Any]:
    from meshctl.cli.sync import sync

    return sync


def _set() -> Callable[..., Any]:
    from meshctl.cli.set import set_

    return set_


def _up() -> Callable[..., Any]:
    from meshctl.cli.up import up

    return up


def _down() -> Callable[..., Any]:
    from meshctl.cli.up import down

    return down


def _status() -> Callable[..., Any]:
    from meshctl.cli.status import status

    return status


def _rotate_keys() -> Callable[..., Any]:
    from meshctl.cli.rotate import rotate_keys

    return rotate_keys


def _whois() -> Callable[..., Any]:
    from meshctl.cli.status import whois

    return whois


def _ping() -> Callable[..., Any]:
    from meshctl.cli.ping import ping

    return ping


def _netcheck() -> Callable[..., Any]:
    from meshctl.cli.netcheck import netcheck

    return netcheck


def _relay() -> Callable[..., Any]:
    from meshctl.cli.relay import relay

    return relay


def _admin() -> typer.Typer:
    from meshctl.cli.admin import admin_app

    return admin_app


def _repo() -> typer.Typer:
    from meshctl.cli.repo import repo_app

    return repo_app


def _acl() -> typer.Typer:
    from meshctl.cli.acl import acl_app

    return acl_app


# command name -> its loader: a command function, or a typer.Typer for a group of subcommands.
COMMANDS: Final[dict[str, Callable[[], Callable[..., Any] | typer.Typer]]] = {
    "version": _version,
    "init": _init,
    "join": _join,
    "sync": _sync,
    "up": _up,
    "set": _set,
    "down": _down,
    "status": _status,
    "rotate-keys": _rotate_keys,
    "whois": _whois,
    "ping": _ping,
    "netcheck": _netcheck,
    "relay": _relay,
    "admin": _admin,
    "repo": _repo,
    "acl": _acl,
}
# Help text for commands whose function has no docstring.
HELP: Final = {"version": "Print the meshctl version."}
