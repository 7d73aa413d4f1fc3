"""`meshctl init` and `meshctl admin ...`: run by an admin in a checkout of the coordination repo."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from meshctl.cli.admin_common import KeyOpt, NoCommitOpt, RepoOpt, admin_keys, commit, print_signature_status
from meshctl.cli.admin_relay import relay_admin_app
from meshctl.cli.common import command

if TYPE_CHECKING:
    from meshctl.coord.approve_remote import Approval
    from meshctl.coord.records import Assignment, StateDoc

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
    remote: Annotated[str | None, typer.Option(
        "--remote", help="The (empty) repository on your git host, e.g. git@github.com:acme/acme-mesh.git: "
                         "added as origin and pushed, so the invite names it.")] = None,
) -> None:
    """Create a new mesh: the coordination repository, root of trust and first signed state."""
    from meshctl.coord import admin
    from meshctl.coord import repo as gitrepo

    paths = admin_key or [admin.default_admin_key_path()]
    keys = []
    for p in paths:
        key, created = admin.load_or_create_admin_key(p)
        typer.echo(f"{'created' if created else 'using'} admin key {p} ({key.public().short()})")
        keys.append(key)
    co = admin.init_repo(directory, name, cidr, domain, keys, root_threshold, admin_threshold,
                         int(time.time()))
    import pygit2

    pygit2.init_repository(str(directory), initial_head="main")
    changed = sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                     if p.is_file() and ".git" not in p.relative_to(directory).parts)
    gitrepo.commit_workdir(directory, changed, [], f"meshctl init {name}")
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
def invite(repo: RepoOpt = Path(".")) -> None:
    """Print the command a device runs to join (it pins the root fingerprint)."""
    from meshctl.coord import admin
    from meshctl.coord import repo as gitrepo

    co = admin.open_checkout(repo)
    typer.echo(admin.invite_text(co, gitrepo.origin_url(repo)))


@admin_app.command("approve")
@command
def approve(
    name: Annotated[str, typer.Argument(help="The device name of the join request.")],
    ip: Annotated[str | None, typer.Option("--ip", help="Mesh IPv4 (default: next free).")] = None,
    tag: Annotated[list[str] | None,
                   typer.Option("--tag", help="A tag for access rules, e.g. tag:server (repeatable).")] = None,
    owner: Annotated[str, typer.Option("--owner", help="Owner, e.g. alice@example.com.")] = "",
    routes: Annotated[str | None, typer.Option(
        "--routes", metavar="all|exit|none|CIDR[,CIDR...]",
        help="Approve exactly these advertised routes (`exit`: the exit node). Without it, what was approved "
             "and is still advertised stays, and the policy's autoApprovers add theirs.")] = None,
    repo: RepoOpt = Path("."),
    admin_key: KeyOpt = None,
    no_commit: NoCommitOpt = False,
) -> None:
    """Approve a join request (move it to peers/, assign addresses), a member's update request (its
    changed record), or a member's routes; sign the new state.

    When the request is not in the checkout, it is fetched from origin (branch join/NAME, or
    update/NAME for a member's changed record), approved on an up-to-date main, committed and
    pushed; where main cannot be pushed to, the approval goes to the request branch (a pull request).
    A member with no update waiting only has its routes changed, in the checkout.
    """
    from meshctl.coord import admin
    from meshctl.coord.approve_remote import approve_from_origin, origin_has_branch, request_files
    from meshctl.coord.route_approval import parse_routes_option

    choice = parse_routes_option(routes) if routes is not None else None
    keys = admin_keys(admin_key)
    now = int(time.time())
    before = admin.open_checkout(repo).state.peers.get(name)  # "not a coordination repository" first

    def approve_in(co: admin.Checkout) -> tuple[StateDoc, list[str], list[str]]:
        return admin.approve(co, name, keys, now, ip, tag or [], owner, choice)

    here = (repo / request_files(name)[0]).exists()  # in the checkout already (offline, or the branch checked out)
    if here or (before is not None and origin_has_branch(repo, f"update/{name}") is not True):
        state, changed, removed = approve_in(admin.open_checkout(repo))
        _say_approved(name, before, state, changed)
        what = "Approve" if before is None else "Approve update of" if removed else "Approve routes of"
        commit(repo, changed, removed, f"{what} {name} (serial {state.serial})", no_commit)
        print_signature_status(state.serial, repo)
        return
    result = approve_from_origin(repo, name, approve_in, commit=not no_commit)
    _say_approved(name, before, result.state, ["peers/"] if before is not None else [])
    _say_published(result)


def _say_approved(name: str, before: Assignment | None, state: StateDoc, changed: list[str]) -> None:
    from meshctl.coord.route_approval import approval_notes

    after = state.peers[name]
    if before is None:
        typer.echo(f"approved {name}: {' '.join(str(a) for a in after.addresses)}")
    elif any(p.startswith("peers/") for p in changed):
        typer.echo(f"approved the update of {name} (record replaced; addresses, tags and owner kept)")
    for line in approval_notes(name, before.routes if before else (), after.routes):
        typer.echo(line)


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
) -> None:
    """Remove a member; nodes drop it on their next sync."""
    from meshctl.coord import admin

    co = admin.open_checkout(repo)
    state, changed, removed = admin.revoke(co, name, admin_keys(admin_key), int(time.time()))
    typer.echo(f"revoked {name}")
    commit(repo, changed, removed, f"Revoke {name} (serial {state.serial})", no_commit)
    print_signature_status(state.serial, repo)


@admin_app.command("renew")
@command
def renew(repo: RepoOpt = Path("."), admin_key: KeyOpt = None, no_commit: NoCommitOpt = False) -> None:
    """Extend the state's expiry (bumps the serial)."""
    from meshctl.coord import admin
    from meshctl.coord.records import format_time

    co = admin.open_checkout(repo)
    state = admin.renew(co, admin_keys(admin_key), int(time.time()))
    typer.echo(f"renewed: expires {format_time(state.expires)}")
    commit(repo, ["state.json", "state.json.sig"], [], f"Renew (serial {state.serial})", no_commit)
    print_signature_status(state.serial, repo)


@admin_app.command("sign")
@command
def sign(
    repo: RepoOpt = Path("."),
    admin_key: KeyOpt = None,
    cosign: Annotated[bool, typer.Option("--cosign", help="Add a signature without a new serial.")] = False,
    no_commit: NoCommitOpt = False,
) -> None:
    """Re-sign state.json after a policy edit (bumps the serial), or co-sign it."""
    from meshctl.coord import admin

    co = admin.open_checkout(repo)
    keys = admin_keys(admin_key)
    if cosign:
        good, threshold = admin.cosign(co, keys)
        typer.echo(f"state.json serial {co.state.serial}: {good} of {threshold} admin signatures")
        commit(repo, ["state.json.sig"], [], f"Co-sign serial {co.state.serial}", no_commit)
        return
    state = admin.renew(co, keys, int(time.time()))
    typer.echo(f"signed state serial {state.serial}")
    commit(repo, ["state.json", "state.json.sig", "policy.hujson"], [], f"Sign (serial {state.serial})",
            no_commit)
    print_signature_status(state.serial, repo)
