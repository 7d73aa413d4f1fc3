"""`meshctl sync`: one pass for cron: fetch, verify, reconcile."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from meshctl.cli.common import command, settings_of
from meshctl.cli.route_flags import AcceptRoutesOpt, AllowLanOpt, ExitNodeOpt, SnatOpt, pref_changes

if TYPE_CHECKING:
    from meshctl.agent.plan import Plan
    from meshctl.coord.netmap import NetMap
    from meshctl.settings import Settings


@command
def sync(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Verify and print the plan; change nothing.")] = False,
    jitter: Annotated[float, typer.Option("--jitter", help="Sleep a random 0..SECONDS first (cron).", min=0)] = 0,
    wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for another sync to finish.")] = 60,
    accept_routes: AcceptRoutesOpt = None,
    exit_node: ExitNodeOpt = None,
    exit_node_allow_lan_access: AllowLanOpt = None,
    snat_subnet_routes: SnatOpt = None,
) -> None:
    """Fetch the coordination repository, verify it and apply it to this node. Quiet when nothing changed."""
    from dataclasses import replace

    from meshctl.agent.gcpause import no_collection_at_exit
    from meshctl.agent.lock import state_lock
    from meshctl.agent.prefs import load_prefs
    from meshctl.agent.sync_pass import cron_publish_plan, run_pass
    from meshctl.cli import preflight
    from meshctl.cli.set import save_route_prefs
    from meshctl.errors import VerificationError

    no_collection_at_exit()
    settings = settings_of(ctx)
    changes = pref_changes(accept_routes, exit_node, exit_node_allow_lan_access, snat_subnet_routes)
    given = {k: v for k, v in changes.items() if v is not None}
    if not dry_run:
        preflight.require_root("sync", "run it with sudo, or `meshctl sync --dry-run` to see what it would do")
        save_route_prefs(settings, changes)  # kept for the next cron run (a dry run only tries them)
    if jitter:
        time.sleep(random.uniform(0, jitter))
    now = int(time.time())
    clock = preflight.clock_check(settings.state_dir, now)
    if not dry_run and _synced_by_agent(settings.control_socket, clock):
        if clock is not None:
            typer.echo(f"warning: {clock}", err=True)
        return
    with state_lock(settings.state_dir, wait):
        if not dry_run:
            _rotate_if_due(settings, now)
        try:
            publish = None if dry_run else cron_publish_plan(settings, now)
            prefs = replace(load_prefs(settings.state_dir), **given) if dry_run and given else None  # type: ignore[arg-type]
            result = run_pass(settings, now, dry_run=dry_run, before_apply=lambda: preflight.network_preflight(
                settings.interface, settings.listen_port), publish=publish, prefs=prefs)
        except VerificationError as exc:
            raise VerificationError(exc.message, clock or exc.hint) from None
    if dry_run:
        typer.echo(_render_dry_run(settings.interface, result.netmap, result.plan))
    else:
        if result.accepted_new_state:
            typer.echo(f"accepted serial {result.serial}")
        for line in result.plan.describe(settings.interface):
            typer.echo(line)
    error = result.coordination_error
    if clock is not None and isinstance(error, VerificationError):
        raise VerificationError(error.message, clock)  # a wrong clock explains the refusal
    if clock is not None:
        typer.echo(f"warning: {clock}", err=True)
    if error is not None:
        raise error
    if not dry_run and result.apply_errors:
        raise result.apply_errors[0]


def _rotate_if_due(settings: Settings, now: int) -> None:
    """`rotate-keys --rotate-every`: from cron too. A failure keeps the keys in force (said, not fatal)."""
    from meshctl.coord import rotate
    from meshctl.errors import MeshctlError

    if not rotate.due(settings.state_dir, settings.keys_dir, now):
        return
    try:
        done = rotate.rotate_keys(settings.state_dir, settings.repo_dir, settings.keys_dir, now)
    except MeshctlError as exc:
        typer.echo(f"warning: automatic key rotation: {exc.message}", err=True)
        return
    typer.echo(f"rotated keys: WireGuard {done.old_wireguard.b64()} -> {done.new_wireguard.b64()}")


def _render_dry_run(ifname: str, netmap: NetMap, plan: Plan) -> str:
    from meshctl.cli.render import render_netmap

    lines = plan.describe(ifname)
    return "\n".join([render_netmap(netmap), "plan:" if lines else "plan: nothing to change",
                      *(f"  {line}" for line in lines)])


def _synced_by_agent(control_socket: Path, clock: str | None = None) -> bool:
    """With an agent running, the pass is the agent's: it owns MagicDNS's address and the paths
    it found, which a pass computed here would undo. `clock` (a suspicious system clock) is the
    hint of the agent's failure, as it would be of this process's own."""
    from meshctl.agent.control import query_agent
    from meshctl.errors import MeshctlError

    reply = query_agent(control_socket, {"cmd": "sync"}, timeout=120)
    if reply is None:
        return False
    if reply.get("error"):
        error = MeshctlError(str(reply["error"]),
                             clock or "the agent keeps the last good configuration and retries")
        code = reply.get("exit_code")
        if isinstance(code, int) and 0 < code < 256:
            error.exit_code = code  # e.g. 3 for an expired or refused state, as without the agent
        raise error
    return True
