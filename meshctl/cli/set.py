"""`meshctl set`: change this node's route choices, and what it offers to route.

`--accept-routes`, `--exit-node`, `--exit-node-allow-lan-access` and `--snat-subnet-routes` are
this node's own (prefs.json; a running agent applies them at once, and keeps them across restarts).
`--advertise-routes` and `--advertise-exit-node` change its signed record: a new one goes to the
admins on branch update/NAME (or as files to hand over), like a join request.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import typer

from meshctl.cli.common import command, settings_of
from meshctl.cli.route_flags import (
    AcceptRoutesOpt,
    AdvertiseExitOpt,
    AdvertiseRoutesOpt,
    AllowLanOpt,
    ExitNodeOpt,
    SnatOpt,
    parse_bool,
    pref_changes,
)
from meshctl.errors import UsageError
from meshctl.settings import Settings

if TYPE_CHECKING:
    from meshctl.agent.prefs import Prefs
    from meshctl.coord.advertise import Advertised


@command
def set_(
    ctx: typer.Context,
    accept_routes: AcceptRoutesOpt = None,
    exit_node: ExitNodeOpt = None,
    exit_node_allow_lan_access: AllowLanOpt = None,
    snat_subnet_routes: SnatOpt = None,
    advertise_routes: AdvertiseRoutesOpt = None,
    advertise_exit_node: AdvertiseExitOpt = None,
) -> None:
    """Change route settings: for this node at once, or (advertising) through the admins."""
    settings = settings_of(ctx)
    changes = pref_changes(accept_routes, exit_node, exit_node_allow_lan_access, snat_subnet_routes)
    offer_exit = parse_bool(advertise_exit_node, "--advertise-exit-node")
    if all(v is None for v in changes.values()) and advertise_routes is None and offer_exit is None:
        raise UsageError("nothing to set", "see `meshctl set --help`")
    if any(v is not None for v in changes.values()):
        apply_prefs(settings, changes)
    if advertise_routes is not None or offer_exit is not None:
        _advertise(settings, advertise_routes, offer_exit)


def save_route_prefs(settings: Settings, changes: dict[str, object]) -> bool:
    """Save the flags given (after checking an exit node against the accepted map); True when a
    choice changed (then it was printed)."""
    from meshctl.agent.lock import state_lock
    from meshctl.agent.prefs import update_prefs
    from meshctl.fsutil import ensure_private_dir

    if all(v is None for v in changes.values()):
        return False
    exit_node = changes.get("exit_node")
    if isinstance(exit_node, str) and exit_node:
        _check_exit_node(settings, exit_node)
    ensure_private_dir(settings.state_dir)
    with state_lock(settings.state_dir, 30):
        before, after = update_prefs(settings.state_dir, **changes)
    if before != after:
        typer.echo(describe_prefs(after))
    return before != after


def apply_prefs(settings: Settings, changes: dict[str, object]) -> None:
    """`meshctl set`: save the choices and have a running agent apply them now."""
    from meshctl.agent.control import query_agent

    if not save_route_prefs(settings, changes):
        typer.echo("route settings unchanged")
        return
    reply = query_agent(settings.control_socket, {"cmd": "sync"}, timeout=120)
    if reply is not None and reply.get("error"):
        typer.echo(f"warning: the agent's pass: {reply['error']}", err=True)


def describe_prefs(prefs: Prefs) -> str:
    exit_text = prefs.exit_node or "none"
    if prefs.exit_node and prefs.exit_node_allow_lan_access:
        exit_text += " (local networks allowed)"
    return (f"accept routes: {'yes' if prefs.accept_routes else 'no'}; exit node: {exit_text}; "
            f"SNAT of subnet routes: {'yes' if prefs.snat_subnet_routes else 'no'}")


def _check_exit_node(settings: Settings, wanted: str) -> None:
    """Refuse an exit node the accepted map does not offer (when there is a map to ask)."""
    from meshctl.coord.node_state import NodeState
    from meshctl.router.policy_routing import resolve_exit_node

    netmap = NodeState(settings.state_dir).load_netmap()
    if netmap is None:
        return
    cfg = NodeState(settings.state_dir).load_config()
    peer, why = resolve_exit_node(netmap.with_self(cfg.name), wanted)
    if peer is None:
        offered = sorted(p.name for p in netmap.peers if p.exit_node and p.name != cfg.name)
        raise UsageError(f"--exit-node: {why}", f"approved exit nodes: {', '.join(offered) or 'none'}")


def _offered(a: Advertised) -> str:
    from meshctl.coord.route_approval import describe_routes
    from meshctl.coord.routes import EXIT_ROUTES

    return describe_routes([*a.routes, *(EXIT_ROUTES if a.exit_node else ())])


def _advertise(settings: Settings, routes_text: str | None, exit_flag: bool | None) -> None:
    from meshctl.agent.lock import state_lock
    from meshctl.cli.join import print_handover
    from meshctl.coord.advertise import request_update

    with state_lock(settings.state_dir, 60):
        result = request_update(settings.state_dir, settings.repo_dir, settings.keys_dir, routes_text, exit_flag,
                                int(time.time()))

    if not result.changed:
        typer.echo(f"{result.name} already advertises: {_offered(result.after)}")
        return
    typer.echo(f"advertised routes of {result.name}: {_offered(result.before)} -> {_offered(result.after)}")
    if result.pushed:
        typer.echo(f"update request pushed to branch {result.branch}")
        if result.pr_url:
            typer.echo(f"open the pull request: {result.pr_url}")
        typer.echo(f"an admin approves it: meshctl admin approve {result.name} [--routes all|exit|CIDR,...]")
        return
    print_handover(result.name, result.branch, result.push_error, result.record, result.signature)
