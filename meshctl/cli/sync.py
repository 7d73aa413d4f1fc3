"""`meshctl sync`: one pass for cron: fetch, verify, reconcile."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Annotated

import typer

from meshctl.cli.app import command, settings_of


@command
def sync(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Verify and print the plan; change nothing.")] = False,
    jitter: Annotated[float, typer.Option("--jitter", help="Sleep a random 0..SECONDS first (cron).", min=0)] = 0,
    wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for another sync to finish.")] = 60,
) -> None:
    """Fetch the coordination repository, verify it and apply it to this node. Quiet when nothing changed."""
    from meshctl.agent.lock import state_lock
    from meshctl.agent.sync_pass import run_pass
    from meshctl.cli import preflight
    from meshctl.cli.render import render_netmap
    from meshctl.errors import VerificationError

    settings = settings_of(ctx)
    if not dry_run:
        preflight.require_root("sync", "run it with sudo, or `meshctl sync --dry-run` to see what it would do")
    if jitter:
        time.sleep(random.uniform(0, jitter))
    if not dry_run and _synced_by_agent(settings.control_socket):
        return
    now = int(time.time())
    clock = preflight.clock_check(settings.state_dir, now)
    with state_lock(settings.state_dir, wait):
        if not dry_run:
            preflight.network_preflight(settings.interface, settings.listen_port)
        try:
            result = run_pass(settings, now, dry_run=dry_run)
        except VerificationError as exc:
            raise VerificationError(exc.message, clock or exc.hint) from None
    if dry_run:
        typer.echo(render_netmap(result.netmap))
        lines = result.plan.describe(settings.interface)
        typer.echo("plan:" if lines else "plan: nothing to change")
        for line in lines:
            typer.echo(f"  {line}")
    else:
        if result.accepted_new_state:
            typer.echo(f"accepted serial {result.netmap.serial}")
        for line in result.plan.describe(settings.interface):
            typer.echo(line)
    error = result.coordination_error
    if clock is not None and isinstance(error, VerificationError):
        raise VerificationError(error.message, clock)  # a wrong clock explains the refusal
    if clock is not None:
        typer.echo(f"warning: {clock}", err=True)
    if error is not None:
        raise error
    if result.apply_errors:
        raise result.apply_errors[0]


def _synced_by_agent(control_socket: Path) -> bool:
    """With an agent running, the pass is the agent's: it owns MagicDNS's address and the paths
    it found, which a pass computed here would undo."""
    from meshctl.agent.control import query_agent
    from meshctl.errors import MeshctlError

    reply = query_agent(control_socket, {"cmd": "sync"}, timeout=120)
    if reply is None:
        return False
    if reply.get("error"):
        raise MeshctlError(str(reply["error"]), "the agent keeps the last good configuration and retries")
    return True
