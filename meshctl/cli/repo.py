"""`meshctl repo verify`: the pull-request check."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from meshctl.cli.common import command
from meshctl.errors import EXIT_REFUSED

repo_app = typer.Typer(help="Checks on the coordination repository.", no_args_is_help=True)


@repo_app.command("verify")
@command
def verify_cmd(
    directory: Annotated[Path, typer.Argument(help="The checkout to verify.")] = Path("."),
    base: Annotated[str | None, typer.Option(
        "--base", help="The pull request's base (e.g. origin/main): also check that the change is allowed.")] = None,
) -> None:
    """Verify every signature, hash and rule of the commit DIR's HEAD names (git's tree, with modes,
    not the files on disk; a directory that is not a git checkout is verified as files); with
    --base, also the change from that revision."""
    from meshctl.coord import pr_check
    from meshctl.coord import repo as gitrepo
    from meshctl.coord.fs_snapshot import FsSnapshot
    from meshctl.coord.verify import Snapshot
    from meshctl.errors import UsageError
    from meshctl.policy.check import policy_problems, policy_warnings

    if not directory.is_dir():
        raise UsageError(f"{directory}: not a directory")
    head: Snapshot | None = gitrepo.head_snapshot(directory)
    base_snap = None
    if base is not None:
        repo, commit = gitrepo.read_revision(directory, base)
        base_snap = gitrepo.GitSnapshot(repo, commit)
        if head is None:
            raise UsageError(f"{directory}: --base needs a git checkout with a commit to compare")
    what = f"commit {head.commit[:12]}" if isinstance(head, gitrepo.GitSnapshot) else f"files in {directory}"
    report = pr_check.check_change(head or FsSnapshot(directory), base_snap, int(time.time()), policy_problems)
    if not report.ok:
        for problem in report.problems:
            typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(EXIT_REFUSED)
    v = report.verified
    assert v is not None
    pending = sum(1 for p in (head or FsSnapshot(directory)).files()
                  if p.startswith("requests/") and p.endswith(".json"))
    typer.echo(f"ok: mesh {v.root.name}, root v{v.root.version}, serial {v.state.serial}, "
               f"{len(v.records)} members, {pending} pending requests ({what})")
    for name, fp in report.added_requests:
        typer.echo(f"join request {name}: key fingerprint {fp}")
    for warning in policy_warnings(v.policy_text):  # e.g. `ssh`: loaded, not enforced
        typer.echo(f"warning: {warning}", err=True)
    if isinstance(head, gitrepo.GitSnapshot):
        unstaged = gitrepo.uncommitted(directory)
        if unstaged:
            listed = ", ".join(unstaged[:5]) + (", ..." if len(unstaged) > 5 else "")
            typer.echo(f"note: uncommitted changes were not verified: {listed}", err=True)
