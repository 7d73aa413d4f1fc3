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
    """Verify every signature, hash and rule; with --base, also the change itself."""
    from meshctl.coord import pr_check
    from meshctl.coord import repo as gitrepo
    from meshctl.coord.fs_snapshot import FsSnapshot
    from meshctl.errors import UsageError
    from meshctl.policy.check import policy_problems, policy_warnings

    if not directory.is_dir():
        raise UsageError(f"{directory}: not a directory")
    base_snap = None
    if base is not None:
        repo, commit = gitrepo.read_revision(directory, base)
        base_snap = gitrepo.GitSnapshot(repo, commit)
    report = pr_check.check_change(FsSnapshot(directory), base_snap, int(time.time()), policy_problems)
    if not report.ok:
        for problem in report.problems:
            typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(EXIT_REFUSED)
    v = report.verified
    assert v is not None
    pending = sum(1 for p in FsSnapshot(directory).files() if p.startswith("requests/") and p.endswith(".json"))
    typer.echo(f"ok: mesh {v.root.name}, root v{v.root.version}, serial {v.state.serial}, "
               f"{len(v.records)} members, {pending} pending requests")
    for warning in policy_warnings(v.policy_text):  # e.g. `ssh`: loaded, not enforced
        typer.echo(f"warning: {warning}", err=True)

