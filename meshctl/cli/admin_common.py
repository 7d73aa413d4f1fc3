"""What the admin commands share (`meshctl admin ...`, `meshctl admin relay ...`): their common
options, loading the admin keys and this admin's trust memory, and the one signing path every
signing command takes on the command line: verify the checkout, build and sign the change, show
what the new signed state changes, then write and commit it unless it is a dry run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from meshctl.coord.admin import PolicyCheck, Session
    from meshctl.coord.admin_trust import AdminTrust
    from meshctl.coord.signed_change import Change, Plan
    from meshctl.keys import SigningKey

RepoOpt = Annotated[Path, typer.Option("--repo", help="The checkout (default: current directory).")]
KeyOpt = Annotated[
    list[Path] | None,
    typer.Option("--admin-key", envvar="MESHCTL_ADMIN_KEY",
                 help="Admin private key file (repeat for several; default ~/.config/meshctl/admin.key). "
                      "This admin's trust memory of each mesh is kept beside it, in trust/."),
]
NoCommitOpt = Annotated[bool, typer.Option("--no-commit", help="Write files but do not git commit.")]
DryRunOpt = Annotated[bool, typer.Option(
    "--dry-run", help="Verify and show what the new signed state changes; write and commit nothing.")]


def duration_option(option: str, text: str | None) -> int | None:
    """Seconds of a duration option (`90d`), None when not given; a usage error names the option."""
    from meshctl.duration import parse_duration
    from meshctl.errors import UsageError

    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"{option} {exc}") from None


def key_paths(paths: list[Path] | None) -> list[Path]:
    """The --admin-key files, or the default key file."""
    from meshctl.coord.admin import default_admin_key_path

    return paths or [default_admin_key_path()]


def admin_keys(paths: list[Path] | None) -> list[SigningKey]:
    """The admin keys of --admin-key, or the default key file."""
    from meshctl.coord.admin import load_admin_keys

    return load_admin_keys(key_paths(paths))


def trust_of(paths: list[Path] | None) -> AdminTrust:
    """This admin's trust memory: beside the (first) admin key."""
    from meshctl.coord.admin_trust import AdminTrust

    return AdminTrust.beside(key_paths(paths)[0])


def run_signing(
    repo: Path,
    admin_key: list[Path] | None,
    build: Callable[[Session], Change],
    *,
    dry_run: bool,
    no_commit: bool,
    cosign: bool = False,
    inputs: Collection[str] = (),
    policy_check: PolicyCheck | None = None,
    lines: Callable[[Plan], list[str]] | None = None,
    status_line: bool = True,
    echo: Callable[[str], object] = typer.echo,
    skip_keys: Collection[str] = (),
) -> Plan:
    """Verify the checkout, absorb the enrollments nodes accept (not for a co-signature; not those of
    `skip_keys`), build and sign the change, show it; write and commit unless a dry run.
    `echo` takes what goes to stdout (warnings go to stderr at once)."""
    from meshctl.coord import admin

    keys = admin_keys(admin_key)
    trust = trust_of(admin_key)
    now = int(time.time())
    session = admin.open_session(repo, now, keys, trust, cosign=cosign, inputs=inputs)
    if not cosign:
        session = admin.absorb_enrollments(session, skip_keys)
    result = admin.plan_change(session, build(session), keys, now, policy_check)
    if dry_run:
        echo("dry run: nothing is written or committed")
    for line in (lines(result) if lines is not None else list(result.change.summary)):
        echo(line)
    if session.first_use:
        typer.echo(f"note: first use of mesh {result.after.root.name} with this admin key: root "
                   f"{session.baseline.pinned_root} is pinned from now on ({trust.dir(result.after.root.network_id)})",
                   err=True)
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    echo("changes:" if result.diff[1:] else f"changes: none ({result.diff[0]})")
    for line in result.diff if result.diff[1:] else ():
        echo(f"  {line}")
    if dry_run:
        return result
    commit = admin.apply_plan(session, result, now, commit=not no_commit)
    if commit:
        echo(f"committed: {result.commit_message}")
    if not status_line:
        return result
    echo(f"state.json serial {result.state.serial}: {result.signatures} of {result.threshold} admin signatures")
    if result.signatures < result.threshold:
        echo(f"another admin must add a signature: meshctl admin sign --cosign --repo {repo}")
    return result
