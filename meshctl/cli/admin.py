"""`meshctl init` and `meshctl admin ...`: run by an admin in a checkout of the coordination repo.

Every command that signs verifies the checkout first, the way a node does, from this admin's own
trust memory, signs only its own change, and shows what the new signed state changes
(cli/admin_signing.py); each has --dry-run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from meshctl.cli.admin_common import DryRunOpt, KeyOpt, NoCommitOpt, RepoOpt, key_paths, run_signing, trust_of
from meshctl.cli.admin_relay import relay_admin_app
from meshctl.cli.common import command

if TYPE_CHECKING:
    from meshctl.coord.signed_change import Plan

admin_app = typer.Typer(help="Admin commands, run in a checkout of the coordination repository.",
                        no_args_is_help=True)
admin_app.add_typer(relay_admin_app, name="relay")


@command
def init(
    directory: Annotated[Path, typer.Argument(help="Where to create the coordination repository.")],
    name: Annotated[str, typer.Option("--name", help="Mesh name (a DNS label).")],
    cidr: Annotated[str, typer.Option(help="Mesh IPv4 prefix.")] = "100.64.0.0/10",
    domain: Annotated[str | None, typer.Option(help="MagicDNS domain (default NAME.mesh).")] = None,
    admin_key: KeyOpt = None,
    root_threshold: Annotated[int, typer.Option(help="Root signatures needed to rotate root.")] = 1,
    admin_threshold: Annotated[int, typer.Option(help="Admin signatures needed on state.json.")] = 1,
) -> None:
    """Create a new mesh: the coordination repository, root of trust and first signed state."""
    from meshctl.coord import admin

    paths = key_paths(admin_key)
    keys = []
    for p in paths:
        key, created = admin.load_or_create_admin_key(p)
        typer.echo(f"{'created' if created else 'using'} admin key {p} ({key.public().short()})")
        keys.append(key)
    now = int(time.time())
    co = admin.init_repo(directory, name, cidr, domain, keys, root_threshold, admin_threshold, now)
    admin.commit_new_checkout(directory, f"meshctl init {name}")
    admin.remember(admin.open_session(directory, now, keys, trust_of(admin_key)), now)
    typer.echo(f"created mesh {name!r} in {directory} (network {co.root.network_id[:8]}…, "
               f"{co.state.ipv4_cidr}, {co.state.ipv6_prefix}, domain {co.state.domain})")
    typer.echo("next: push it to a git host, then give devices the invite:")
    typer.echo("  " + admin.invite_text(co, None))


@admin_app.command("invite")
@command
def invite(repo: RepoOpt = Path("."), admin_key: KeyOpt = None) -> None:
    """Print the command a device runs to join (it pins the root fingerprint this admin trusts)."""
    from meshctl.coord import admin
    from meshctl.coord import repo as gitrepo

    fingerprint = admin.trusted_root(repo, trust_of(admin_key), int(time.time()))
    typer.echo(f"meshctl join {gitrepo.origin_url(repo) or '<REPO_URL>'} --root {fingerprint}")


@admin_app.command("pending")
@command
def pending(
    repo: RepoOpt = Path("."),
    admin_key: KeyOpt = None,
    fetch: Annotated[bool, typer.Option("--fetch/--no-fetch",
                                        help="Also list join/* branches of the remote `origin`.")] = True,
) -> None:
    """List pending join requests (in the checkout and on the remote's join/* branches) with their key
    fingerprints, to compare with the one `meshctl join` printed on the device."""
    from meshctl.coord import pending as pending_mod

    found, errors = pending_mod.list_pending(repo, int(time.time()), trust_of(admin_key), fetch=fetch)
    for error in errors:
        typer.echo(f"warning: {error}", err=True)
    if not found:
        typer.echo("no pending join requests")
        return
    width = max(len(p.name) for p in found)
    for p in found:
        note = f"  ({p.note})" if p.note else ""
        typer.echo(f"{p.name:<{width}}  key {p.fingerprint or '-':<16}  {p.where}{note}")


@admin_app.command("approve")
@command
def approve(
    name: Annotated[str, typer.Argument(help="The device name of the join request.")],
    ip: Annotated[str | None, typer.Option("--ip", help="Mesh IPv4 (default: the next free one; a revoked "
                                                        "device's address only when named here).")] = None,
    tag: Annotated[list[str] | None,
                   typer.Option("--tag", help="A tag for access rules, e.g. tag:server (repeatable).")] = None,
    owner: Annotated[str, typer.Option("--owner", help="Owner, e.g. alice@example.com.")] = "",
    expect_key: Annotated[str | None, typer.Option(
        "--expect-key", help="The key fingerprint `meshctl join` printed on the device: refuse any other.")] = None,
    allow_revoked_key: Annotated[bool, typer.Option(
        "--allow-revoked-key", help="Approve a request whose keys belonged to a revoked device.")] = False,
    repo: RepoOpt = Path("."),
    admin_key: KeyOpt = None,
    no_commit: NoCommitOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Approve a join request: move it to peers/, assign addresses, sign the new state."""
    from meshctl.coord import changes

    run_signing(repo, admin_key, lambda s: changes.approve(
        s.baseline, name, s.now, ip, tag or [], owner, expect_key, allow_revoked_key),
        dry_run=dry_run, no_commit=no_commit)


@admin_app.command("revoke")
@command
def revoke(
    name: Annotated[str, typer.Argument(help="The member to remove.")],
    repo: RepoOpt = Path("."),
    admin_key: KeyOpt = None,
    no_commit: NoCommitOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Remove a member; nodes drop it on their next sync. Its keys stay revoked, its addresses rest 30 days."""
    from meshctl.coord import changes

    run_signing(repo, admin_key, lambda s: changes.revoke(s.baseline, name, s.now),
                dry_run=dry_run, no_commit=no_commit)


@admin_app.command("renew")
@command
def renew(repo: RepoOpt = Path("."), admin_key: KeyOpt = None, no_commit: NoCommitOpt = False,
          dry_run: DryRunOpt = False) -> None:
    """Extend the state's expiry (bumps the serial)."""
    from meshctl.coord import changes
    from meshctl.coord.records import format_time

    def lines(result: Plan) -> list[str]:
        return [f"renewed: expires {format_time(result.state.expires)}"]

    run_signing(repo, admin_key, lambda s: changes.renew(s.baseline), dry_run=dry_run, no_commit=no_commit,
                lines=lines)


@admin_app.command("stun")
@command
def stun(
    servers: Annotated[list[str], typer.Argument(help="HOST:PORT of each STUN server, in order.")],
    repo: RepoOpt = Path("."),
    admin_key: KeyOpt = None,
    no_commit: NoCommitOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Set the STUN servers nodes ask for their public address (re-signs the state)."""
    from meshctl.coord import changes

    run_signing(repo, admin_key, lambda s: changes.set_stun(s.baseline, servers), dry_run=dry_run,
                no_commit=no_commit)


@admin_app.command("sign")
@command
def sign(
    repo: RepoOpt = Path("."),
    admin_key: KeyOpt = None,
    cosign: Annotated[bool, typer.Option("--cosign", help="Add a signature without a new serial.")] = False,
    update_pins: Annotated[bool, typer.Option(
        "--update-pins", help="Also sign the current README.md and CI files (after editing them).")] = False,
    no_commit: NoCommitOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Sign state.json after a policy edit (bumps the serial; the policy must parse and pass its tests),
    or co-sign the state another admin signed."""
    from meshctl.coord import admin, changes
    from meshctl.policy.check import check_policy

    if cosign:
        def cosigned(result: Plan) -> list[str]:
            return [f"co-signing state.json serial {result.state.serial}"]

        run_signing(repo, admin_key, lambda s: changes.cosign(s.baseline, admin.remembered_view(s)),
                    dry_run=dry_run, no_commit=no_commit, cosign=True, lines=cosigned)
        return

    def signed(result: Plan) -> list[str]:
        return [f"signed state serial {result.state.serial}"]

    run_signing(repo, admin_key, lambda s: changes.sign_policy(s.baseline, update_pins),
                inputs=changes.sign_inputs(update_pins), policy_check=check_policy,
                dry_run=dry_run, no_commit=no_commit, lines=signed)
