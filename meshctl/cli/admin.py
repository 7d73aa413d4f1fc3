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

from meshctl.cli.admin_authkey import authkey_app
from meshctl.cli.admin_common import (
    DryRunOpt,
    KeyOpt,
    NoCommitOpt,
    RepoOpt,
    duration_option,
    key_paths,
    run_signing,
    trust_of,
)
from meshctl.cli.admin_relay import relay_admin_app
from meshctl.cli.common import command

if TYPE_CHECKING:
    from meshctl.coord.approve_remote import Approval
    from meshctl.coord.records import StateDoc
    from meshctl.coord.signed_change import Change, Plan

admin_app = typer.Typer(help="Admin commands, run in a checkout of the coordination repository.",
                        no_args_is_help=True)
admin_app.add_typer(relay_admin_app, name="relay")
admin_app.add_typer(authkey_app, name="authkey")


@command
def init(
    directory: Annotated[Path, typer.Argument(help="Where to create the coordination repository.")],
    name: Annotated[str, typer.Option("--name", help="Mesh name (a DNS label).")],
    cidr: Annotated[str, typer.Option(help="Mesh IPv4 prefix.")] = "100.64.0.0/10",
    domain: Annotated[str | None, typer.Option(help="MagicDNS domain (default NAME.mesh).")] = None,
    admin_key: KeyOpt = None,
    root_threshold: Annotated[int, typer.Option(help="Root signatures needed to rotate root.")] = 1,
    admin_threshold: Annotated[int, typer.Option(help="Admin signatures needed on state.json.")] = 1,
    remote: Annotated[str | None, typer.Option(
        "--remote", help="The (empty) repository on your git host, e.g. git@github.com:acme/acme-mesh.git: "
                         "added as origin and pushed, so the invite names it.")] = None,
) -> None:
    """Create a new mesh: the coordination repository, root of trust and first signed state."""
    from meshctl.coord import admin
    from meshctl.coord import repo as gitrepo

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
    if remote is None:
        typer.echo("next: push it to a git host, then give devices the invite:")
        typer.echo("  " + admin.invite_text(co, None))
        return
    from meshctl.errors import GitError

    try:
        gitrepo.publish_checkout(directory, remote)
    except gitrepo.PushRefused as exc:
        raise GitError(exc.message, f"the mesh is created in {directory}; --remote must name an empty repository "
                                    f"(then: git -C {directory} push -u origin main)") from None
    except GitError as exc:
        raise GitError(exc.message, f"the mesh is created in {directory} with origin {remote}; push it when "
                                    f"the git host answers: git -C {directory} push -u origin main") from None
    typer.echo(f"pushed main to {remote}")
    typer.echo("give devices the invite (`meshctl admin invite` prints it again):")
    typer.echo("  " + admin.invite_text(co, remote))


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
    routes: Annotated[str | None, typer.Option(
        "--routes", metavar="all|exit|none|CIDR[,CIDR...]",
        help="Approve exactly these advertised routes (`exit`: the exit node). Without it, what was approved "
             "and is still advertised stays, and the policy's autoApprovers add theirs.")] = None,
    expires: Annotated[str | None, typer.Option(
        "--expires", help="Membership expiry, e.g. 180d: nodes drop the device then unless renewed "
                          "(`meshctl admin renew NAME --expires 180d`). Default: never.")] = None,
    repo: RepoOpt = Path("."),
    admin_key: KeyOpt = None,
    no_commit: NoCommitOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Approve a join request (move it to peers/, assign addresses), a member's update request (its
    changed record), or a member's routes; sign the new state.

    When the request is not in the checkout, it is fetched from origin (branch join/NAME, or
    update/NAME for a member's changed record), approved on an up-to-date main, committed and
    pushed; where main cannot be pushed to, the approval goes to the request branch (a pull request).
    A member with no update waiting only has its routes changed, in the checkout. Either way the
    checkout is verified first and the change shown (`--dry-run`: only that; the request fetched
    from origin is removed again).
    """
    from meshctl.coord import admin, changes
    from meshctl.coord.approve_remote import approve_from_origin, origin_has_branch, request_files
    from meshctl.coord.route_approval import parse_routes_option

    choice = parse_routes_option(routes) if routes is not None else None

    expires_in = duration_option("--expires", expires)

    def build(session: admin.Session) -> Change:
        return changes.approve(session.baseline, name, session.now, ip, tag or [], owner, expect_key,
                               allow_revoked_key, choice, expires_in)

    member = name in admin.open_checkout(repo).state.peers  # "not a coordination repository" before any fetch
    here = (repo / request_files(name)[0]).exists()  # in the checkout already (offline, or the branch checked out)
    if here or (member and origin_has_branch(repo, f"update/{name}") is not True):
        run_signing(repo, admin_key, build, dry_run=dry_run, no_commit=no_commit)
        return

    shown: list[str] = []  # the approval's lines: its first, then where it went, then the rest

    def approve_in(co: admin.Checkout) -> tuple[StateDoc, list[str], list[str]]:
        result = run_signing(co.path, admin_key, build, dry_run=dry_run, no_commit=True, status_line=False,
                             echo=shown.append)
        if dry_run:
            raise _DryRunDone
        return admin.paths_of(result)

    try:
        result = approve_from_origin(repo, name, approve_in, commit=not no_commit)
        typer.echo(shown.pop(0))
        _say_published(result)
    except _DryRunDone:
        pass
    finally:
        for line in shown:
            typer.echo(line)


class _DryRunDone(Exception):
    """Raised through approve_from_origin, which puts the fetched request back."""


def _say_published(result: Approval) -> None:
    from meshctl.errors import MeshctlError

    serial, branch, main = result.state.serial, result.branch, result.main
    if result.outcome == "merged":
        typer.echo(f"pushed {main} (serial {serial}); {branch} is merged")
    elif result.outcome == "not-committed":
        typer.echo(f"written to the working tree on {main} (--no-commit): nothing committed or pushed")
    elif result.outcome == "not-pushed":
        raise MeshctlError(f"the approval (serial {serial}) is committed on local branch {branch} but not pushed: "
                           f"{result.reason}", f"push it when the git host answers: git push origin {branch}")
    else:
        typer.echo(f"{main} not pushed ({result.reason}); the approval is on branch {branch}")
        if result.outcome == "cosign":
            typer.echo(f"another admin must add a signature on {branch}: meshctl admin sign --cosign")
        typer.echo(f"merge the pull request: {result.pr_url}" if result.pr_url
                   else f"merge {branch} into {main} (a pull request), then nodes see it")


@admin_app.command("routes")
@command
def routes_cmd(
    name: Annotated[str | None, typer.Argument(help="Only this member.")] = None,
    repo: RepoOpt = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the routes members advertise, which are approved, and pending updates."""
    import json

    from meshctl.coord import admin
    from meshctl.coord.route_approval import render_rows
    from meshctl.errors import UsageError

    co = admin.open_checkout(repo)
    if name is not None and name not in co.state.peers and not (repo / "requests" / f"{name}.json").exists():
        raise UsageError(f"{name!r}: no member or request of that name")
    rows = [r for r in admin.route_rows(co) if name is None or r.member == name]
    typer.echo(json.dumps([r.as_json() for r in rows], indent=2) if as_json else render_rows(rows))


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
def renew(
    name: Annotated[str | None, typer.Argument(help="A member whose membership expiry to set (with --expires).")]
    = None,
    expires: Annotated[str | None, typer.Option(
        "--expires", help="With NAME: the member's new membership expiry from now, e.g. 180d, or 'never'.")] = None,
    repo: RepoOpt = Path("."), admin_key: KeyOpt = None, no_commit: NoCommitOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Extend the state's expiry (bumps the serial); with NAME --expires, a member's membership expiry."""
    from meshctl.coord import changes
    from meshctl.coord.records import format_time
    from meshctl.errors import UsageError

    if name is not None:
        if expires is None:
            raise UsageError(f"admin renew {name}: say until when with --expires 180d (or --expires never)")
        expires_in = None if expires == "never" else duration_option("--expires", expires)
        run_signing(repo, admin_key, lambda s: changes.set_member_expiry(s.baseline, name, s.now, expires_in),
                    dry_run=dry_run, no_commit=no_commit)
        return
    if expires is not None:
        raise UsageError("--expires needs a member: meshctl admin renew NAME --expires 180d")

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
