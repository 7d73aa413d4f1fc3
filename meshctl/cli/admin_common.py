"""What the admin commands share (`meshctl admin ...`, `meshctl admin relay ...`): their common
options, loading the admin keys, committing the change and the signature line."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from meshctl.keys import SigningKey

RepoOpt = Annotated[Path, typer.Option("--repo", help="The checkout (default: current directory).")]
KeyOpt = Annotated[
    list[Path] | None,
    typer.Option("--admin-key", envvar="MESHCTL_ADMIN_KEY",
                 help="Admin private key file (repeat for several; default ~/.config/meshctl/admin.key)."),
]
NoCommitOpt = Annotated[bool, typer.Option("--no-commit", help="Write files but do not git commit.")]


def admin_keys(paths: list[Path] | None) -> list[SigningKey]:
    """The admin keys of --admin-key, or the default key file."""
    from meshctl.coord.admin import default_admin_key_path, load_admin_keys

    return load_admin_keys(paths or [default_admin_key_path()])


def commit(repo: Path, changed: list[str], removed: list[str], message: str, no_commit: bool) -> None:
    """Commit the files a command changed in the checkout (unless --no-commit), and say so."""
    if no_commit:
        return
    from meshctl.coord import repo as gitrepo

    if gitrepo.commit_workdir(repo, changed, removed, message):
        typer.echo(f"committed: {message}")


def print_signature_status(serial: int, co_path: Path) -> None:
    """How many admin signatures state.json carries, and what to do when that is too few."""
    from meshctl.coord.admin import open_checkout, signature_status

    good, threshold = signature_status(open_checkout(co_path))
    typer.echo(f"state.json serial {serial}: {good} of {threshold} admin signatures")
    if good < threshold:
        typer.echo(f"another admin must add a signature: meshctl admin sign --cosign --repo {co_path}")
