"""`meshctl sync`: one pass for cron: fetch, verify, reconcile."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from meshctl.cli.app import command, settings_of


@command
def sync(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Verify and print; change nothing on the host.")] = False,
) -> None:
    """Fetch the coordination repository, verify it and apply it to this node."""
    from meshctl.cli.render import render_netmap
    from meshctl.coord.node_state import NodeState
    from meshctl.coord.update import fetch_and_verify, require_member

    settings = settings_of(ctx)
    result = fetch_and_verify(settings.state_dir, settings.repo_dir, int(time.time()))
    cfg = NodeState(settings.state_dir).load_config()
    require_member(result.netmap, cfg)
    if dry_run:
        typer.echo(render_netmap(result.netmap))
        return
    if result.changed:
        typer.echo(f"accepted serial {result.netmap.serial}")
