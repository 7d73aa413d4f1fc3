"""The route flags `up`, `set`, `sync` (and `join`, for advertising) share, in Tailscale's words.

Tailscale's boolean flags take `--flag`, `--flag=true` or `--flag=false`. click's flags take no
value, so the root group rewrites a bare `--flag` into `--flag=true` first (`expand_bool_flags`)
and these options are declared as taking one (`parse_bool` reads it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Final

import typer

from meshctl.errors import UsageError

BOOL_FLAGS: Final = ("--accept-routes", "--advertise-exit-node", "--exit-node-allow-lan-access",
                     "--snat-subnet-routes")
_TRUE: Final = ("true", "1", "yes", "on", "t")
_FALSE: Final = ("false", "0", "no", "off", "f")


def expand_bool_flags(args: Sequence[str]) -> list[str]:
    """`--accept-routes` -> `--accept-routes=true` (up to a `--`, after which nothing is an option)."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + list(args[i:])
        out.append(f"{arg}=true" if arg in BOOL_FLAGS else arg)
    return out


def parse_bool(value: str | None, flag: str) -> bool | None:
    """None when the flag was not given."""
    if value is None:
        return None
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise UsageError(f"{flag}={value[:40]}: expected true or false")


def _bool_option(flag: str, help_text: str) -> typer.models.OptionInfo:
    option: typer.models.OptionInfo = typer.Option(flag, metavar="[=true|false]", help=help_text)
    return option


AcceptRoutesOpt = Annotated[str | None, _bool_option(
    "--accept-routes", "Use the subnet routes other members advertise and admins approved (kept across restarts).")]
ExitNodeOpt = Annotated[str | None, typer.Option(
    "--exit-node", metavar="NAME", help="Send all traffic outside the mesh through this approved exit node "
                                        "(a member's name or mesh IP; \"\" turns it off).")]
AllowLanOpt = Annotated[str | None, _bool_option(
    "--exit-node-allow-lan-access", "With an exit node, still reach this host's own local networks directly.")]
SnatOpt = Annotated[str | None, _bool_option(
    "--snat-subnet-routes", "On a subnet router: masquerade members' traffic into the routed networks "
                            "(default true; false keeps their mesh addresses).")]
AdvertiseRoutesOpt = Annotated[str | None, typer.Option(
    "--advertise-routes", metavar="CIDR[,CIDR...]",
    help="Offer to route these networks for the mesh (an admin approves them; \"\" withdraws all).")]
AdvertiseExitOpt = Annotated[str | None, _bool_option(
    "--advertise-exit-node", "Offer to be an exit node for the mesh (an admin approves it).")]


def pref_changes(accept_routes: str | None, exit_node: str | None, allow_lan: str | None,
                 snat: str | None) -> dict[str, object]:
    """The prefs the flags change (agent/prefs.py names), None for a flag not given."""
    from meshctl.agent.prefs import check_exit_node

    return {
        "accept_routes": parse_bool(accept_routes, "--accept-routes"),
        "exit_node": check_exit_node(exit_node.strip()) if exit_node is not None else None,
        "exit_node_allow_lan_access": parse_bool(allow_lan, "--exit-node-allow-lan-access"),
        "snat_subnet_routes": parse_bool(snat, "--snat-subnet-routes"),
    }
