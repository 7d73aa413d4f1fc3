"""`meshctl admin authkey create|list|revoke`: enrollment keys, scoped delegations in state.json.

`create` lists a new key's public half with its scope (tags, address pool, expiry, reuse) in the
signed state, through the one signing path (the diff shows it), and prints the key itself, once,
on the last line of stdout: `meshctl join URL --root FP --auth-key KEY` then adds a device with no
admin step, within that scope only. `revoke` removes the key from the state: it adds nobody from
then on, and nodes drop the devices it added that no signing command absorbed yet.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from meshctl.cli.admin_common import (
    DryRunOpt,
    KeyOpt,
    NoCommitOpt,
    RepoOpt,
    duration_option,
    run_signing,
    trust_of,
)
from meshctl.cli.common import command

if TYPE_CHECKING:
    from meshctl.coord.admin import Session
    from meshctl.coord.signed_change import Change

authkey_app = typer.Typer(help="Enrollment keys: devices join with one and no admin step, within its scope.",
                          no_args_is_help=True)


@authkey_app.command("create")
@command
def create(
    tag: Annotated[list[str] | None, typer.Option(
        "--tag", help="A tag every device joining with the key gets, e.g. tag:server (repeatable).")] = None,
    reusable: Annotated[bool, typer.Option(
        "--reusable", help="Let the key add any number of devices (default: one).")] = False,
    expires: Annotated[str, typer.Option(
        "--expires", help="How long the key may add devices, e.g. 90d, 24h.")] = "90d",
    pool: Annotated[str | None, typer.Option(
        "--pool", help="The IPv4 range its devices take addresses from, e.g. 100.64.1.0/24 (default: the "
                       "whole mesh prefix).")] = None,
    repo: RepoOpt = Path("."),
    admin_key: KeyOpt = None,
    no_commit: NoCommitOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Create an auth key: sign its scope into state.json, print the key on the last line of stdout."""
    from meshctl.coord import changes, enrollment
    from meshctl.coord import repo as gitrepo

    lifetime = duration_option("--expires", expires)
    assert lifetime is not None
    secret, text = enrollment.new_authkey()

    def build(session: Session) -> Change:
        return changes.authkey_create(session.baseline, secret.public(), session.now, tag or [], reusable,
                                      lifetime, pool)

    result = run_signing(repo, admin_key, build, dry_run=dry_run, no_commit=no_commit)
    if dry_run:
        return
    if result.signatures < result.threshold:
        typer.echo("the key adds devices once the state has enough admin signatures")
    typer.echo("push the commit (git push); then a device joins with:")
    typer.echo(f"  meshctl join {gitrepo.origin_url(repo) or 'URL'} --root {result.after.pinned_root} --auth-key KEY")
    typer.echo("the key (shown once, keep it secret):")
    typer.echo(text)


@authkey_app.command("list")
@command
def list_(repo: RepoOpt = Path("."), admin_key: KeyOpt = None) -> None:
    """The auth keys the signed state lists: id, tags, pool, expiry, single use or reusable."""
    from meshctl.coord import admin
    from meshctl.coord.state_diff import authkey_line

    now = int(time.time())
    session = admin.open_session(repo, now, (), trust_of(admin_key))
    keys = session.baseline.state.authkeys
    if not keys:
        typer.echo("no auth keys")
        return
    for key_id in sorted(keys):
        key = keys[key_id]
        typer.echo(authkey_line(key).removeprefix("authkey ") + (" (expired)" if key.expires <= now else ""))


@authkey_app.command("revoke")
@command
def revoke(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (`meshctl admin authkey list`).")],
    repo: RepoOpt = Path("."),
    admin_key: KeyOpt = None,
    no_commit: NoCommitOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Remove an auth key from state.json: it adds nobody from then on, and devices it added that are
    not absorbed yet are dropped by every node (they are not absorbed by this command)."""
    from meshctl.coord import changes, enrollment

    key_id = enrollment.key_id_of(key_id) or key_id  # the whole key pasted by mistake: only its id is used

    def build(session: Session) -> Change:
        pending = session.absorbed.skipped if session.absorbed is not None else ()
        return changes.authkey_revoke(session.baseline, key_id, pending)

    run_signing(repo, admin_key, build, dry_run=dry_run, no_commit=no_commit, skip_keys={key_id})
