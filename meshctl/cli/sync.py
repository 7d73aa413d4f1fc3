"""`meshctl sync`: one pass for cron: fetch, verify, reconcile."""

from __future__ import annotations

import random
import time
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
    from meshctl.cli.render import render_netmap

    settings = settings_of(ctx)
    if jitter:
        time.sleep(random.uniform(0, jitter))
    with state_lock(settings.state_dir, wait):
        result = run_pass(settings, int(time.time()), dry_run=dry_run)
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
    if result.coordination_error is not None:
        raise result.coordination_error
    if result.apply_errors:
        raise result.apply_errors[0]
