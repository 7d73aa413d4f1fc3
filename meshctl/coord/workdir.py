"""git in the admin's checkout (pygit2): what `admin approve NAME` needs around the signing.

Fetch from origin, bring the default branch up to date, read a request from a branch, put
the working tree back after a refusal, and move a commit between branches. The network
goes through coord/repo.py (timeouts, credentials, refused pushes).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygit2

from meshctl.coord import repo as gitrepo
from meshctl.errors import GitError, UsageError

_CHANGED = (pygit2.enums.FileStatus.WT_MODIFIED | pygit2.enums.FileStatus.WT_DELETED
            | pygit2.enums.FileStatus.WT_TYPECHANGE | pygit2.enums.FileStatus.WT_RENAMED
            | pygit2.enums.FileStatus.INDEX_NEW | pygit2.enums.FileStatus.INDEX_MODIFIED
            | pygit2.enums.FileStatus.INDEX_DELETED | pygit2.enums.FileStatus.INDEX_RENAMED
            | pygit2.enums.FileStatus.INDEX_TYPECHANGE | pygit2.enums.FileStatus.CONFLICTED)


@dataclass(frozen=True, slots=True)
class Checkout:
    """A checkout with an `origin` remote."""

    path: Path
    repo: pygit2.Repository
    url: str


def open_with_origin(path: Path) -> Checkout | None:
    """The checkout at `path` if it is a git work tree with an `origin`, else None."""
    try:
        repo = pygit2.Repository(str(path))
        url = str(repo.remotes["origin"].url)
    except (pygit2.GitError, KeyError):
        return None
    if repo.is_bare or repo.workdir is None or Path(repo.workdir).resolve() != path.resolve():
        return None
    return Checkout(path, repo, url)


def changed_files(co: Checkout) -> list[str]:
    """Tracked files changed in the working tree or the index (untracked ones do not count)."""
    return sorted(p for p, flags in co.repo.status(untracked_files="no").items() if flags & _CHANGED)


def untracked_files(co: Checkout) -> set[str]:
    return {p for p, flags in co.repo.status(untracked_files="all").items()
            if flags & pygit2.enums.FileStatus.WT_NEW}


def put_back(co: Checkout, untracked_before: set[str]) -> None:
    """Undo what a failed command wrote: tracked files as HEAD has them, new files removed."""
    changed = changed_files(co)
    if changed:
        co.repo.checkout_head(strategy=pygit2.enums.CheckoutStrategy.FORCE, paths=changed)  # type: ignore[no-untyped-call]
    for path in untracked_files(co) - untracked_before:
        (co.path / path).unlink(missing_ok=True)


def ref_target(co: Checkout, ref: str) -> str | None:
    found = co.repo.references.get(ref)
    return str(found.resolve().target) if found is not None else None


def contains(co: Checkout, commit: str, ancestor: str) -> bool:
    """`commit` is `ancestor` or descends from it."""
    return commit == ancestor or bool(co.repo.descendant_of(pygit2.Oid(hex=commit), pygit2.Oid(hex=ancestor)))


class _Conflicts(pygit2.CheckoutCallbacks):
    """The files a checkout refuses to overwrite (libgit2 reports only how many)."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def checkout_notify_flags(self) -> pygit2.enums.CheckoutNotify:
        return pygit2.enums.CheckoutNotify.CONFLICT

    def checkout_notify(self, why: Any, path: str, baseline: Any, target: Any, workdir: Any) -> None:
        self.paths.append(path)


def switch_to(co: Checkout, branch: str, commit: str) -> None:
    """Leave the checkout on `branch` at `commit`: the working tree follows (from what HEAD
    holds now, so files the change does not touch stay as they are), then the ref and HEAD."""
    conflicts = _Conflicts()
    try:
        co.repo.checkout_tree(co.repo[pygit2.Oid(hex=commit)], callbacks=conflicts)  # type: ignore[no-untyped-call]
    except pygit2.GitError as exc:  # e.g. an untracked file where the new commit has one
        what = ", ".join(conflicts.paths) or str(exc)
        raise UsageError(f"cannot bring the checkout to {branch} ({commit[:12]}): it would overwrite {what}",
                         "move those files out of the way, then run this again") from None
    gitrepo.set_ref(co.repo, f"refs/heads/{branch}", commit)
    co.repo.set_head(f"refs/heads/{branch}")


def update_main(co: Checkout, branch: str, upstream: str) -> str:
    """Bring local `branch` to `upstream` (origin's tip) and check it out; return its commit.

    A local branch ahead of upstream (admin commits not pushed yet) stays ahead: they are
    pushed with the next change. A diverged one is refused: that needs a person.
    """
    local = ref_target(co, f"refs/heads/{branch}")
    if local is None or contains(co, upstream, local):
        target = upstream
    elif contains(co, local, upstream):
        target = local
    else:
        raise UsageError(f"{branch} and origin/{branch} have diverged",
                         f"bring {branch} up to date by hand first (git pull --rebase), then run this again")
    switch_to(co, branch, target)
    return target


def changes_between(co: Checkout, base: str, tip: str) -> list[str]:
    """The files that differ between two commits."""
    diff = co.repo.diff(pygit2.Oid(hex=base), pygit2.Oid(hex=tip))
    paths: set[str] = set()
    for delta in diff.deltas:
        paths.update((delta.old_file.path, delta.new_file.path))
    return sorted(paths)


def merge_base(co: Checkout, a: str, b: str) -> str | None:
    found = co.repo.merge_base(pygit2.Oid(hex=a), pygit2.Oid(hex=b))
    return str(found) if found is not None else None


def read_file(co: Checkout, commit: str, path: str) -> bytes | None:
    tree = co.repo[pygit2.Oid(hex=commit)].peel(pygit2.Tree)
    try:
        entry = tree[path]
    except KeyError:
        return None
    obj = co.repo[entry.id]
    return bytes(obj.data) if isinstance(obj, pygit2.Blob) else None


def fetch(co: Checkout, branches: Iterable[str], creds: gitrepo.Credentials) -> None:
    """Fetch these branches of origin into refs/remotes/origin/*."""
    gitrepo.fetch_refs(co.repo, [f"+refs/heads/{b}:refs/remotes/origin/{b}" for b in branches], creds)


def pushed(co: Checkout, branch: str, commit: str) -> None:
    """Record that origin's `branch` now holds `commit` (as git push does)."""
    gitrepo.set_ref(co.repo, f"refs/remotes/origin/{branch}", commit)


def forget_remote_branch(co: Checkout, branch: str) -> None:
    gitrepo.delete_ref(co.repo, f"refs/remotes/origin/{branch}")


def remote_heads(co: Checkout, creds: gitrepo.Credentials) -> dict[str, str]:
    try:
        return gitrepo.remote_heads(co.repo, creds)
    except GitError as exc:
        raise GitError(exc.message, exc.hint if "authentication" in exc.message else
                       "nothing was changed in the checkout") from None
