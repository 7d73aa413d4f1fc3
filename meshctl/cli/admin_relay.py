"""`meshctl admin relay add|remove|list`: the relays listed in state.json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshctl.cli.admin_common import DryRunOpt, KeyOpt, NoCommitOpt, RepoOpt, run_signing
from meshctl.cli.common import command

relay_admin_app = typer.Typer(help="The relays listed in state.json.", no_args_is_help=True)


@relay_admin_app.command("add")
@command
def add(
    name: Annotated[str, typer.Argument(help="Relay name (a DNS label).")],
    address: Annotated[str, typer.Argument(help="HOST:PORT clients dial (UDP, TCP fallback on the same port).")],
    identity_key: Annotated[str | None, typer.Option(
        "--identity-key", help="ed25519:... printed by `meshctl relay` at start (required: clients accept "
                               "only the relay that proves it).")] = None,
    repo: RepoOpt = Path("."),
    admin_key: KeyOpt = None,
    no_commit: NoCommitOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """List a relay in state.json (re-signs the state)."""
    from meshctl.coord import relays_admin

    entry = relays_admin.parse_relay(name, address, identity_key)
    run_signing(repo, admin_key, lambda s: relays_admin.add_change(s.baseline, entry), dry_run=dry_run,
                no_commit=no_commit)


@relay_admin_app.command("remove")
@command
def remove(
    name: Annotated[str, typer.Argument(help="The relay to remove.")],
    repo: RepoOpt = Path("."),
    admin_key: KeyOpt = None,
    no_commit: NoCommitOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Remove a relay from state.json (re-signs the state)."""
    from meshctl.coord import relays_admin

    run_signing(repo, admin_key, lambda s: relays_admin.remove_change(s.baseline, name), dry_run=dry_run,
                no_commit=no_commit)


@relay_admin_app.command("list")
@command
def list_(repo: RepoOpt = Path(".")) -> None:
    """Print the listed relays: name, address, identity key."""
    from meshctl.coord import admin, relays_admin

    for r in relays_admin.list_relays(admin.open_checkout(repo)):
        typer.echo(f"{r.name}\t{r.address}\t{r.identity_key.text() if r.identity_key else '-'}")
