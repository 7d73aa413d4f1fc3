"""The enrollments on the devices' own branches, read from git (shell).

Nodes read them from the branches their coordination fetch brought (coord/endpoint_sync.py);
an admin's signing command reads them from its checkout's `origin`, to absorb the accepted
ones into the state (coord/admin.py). Either way a branch's tree is checked from git's listing
before any blob is read (coord/endpoint_verify.check_tree: known names, plain files, 16 KiB
each), and what is read is only handed to coord/delegation.py, which trusts none of it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

import pygit2

from meshctl.coord import endpoint_verify, enrollment
from meshctl.coord import repo as gitrepo
from meshctl.coord.delegation import Candidate
from meshctl.coord.records import NAME_RE
from meshctl.errors import GitError, VerificationError

log = logging.getLogger(__name__)

MAX_BRANCH_FILES: Final = len(endpoint_verify.ALLOWED_FILES)
ADMIN_REFS: Final = "refs/remotes/origin/endpoints/"  # where an admin's checkout keeps the devices' branches


def read_candidate(repo: pygit2.Repository, name: str, commit: str) -> Candidate | str | None:
    """The enrollment files on one device branch (None: the branch holds no enrollment; a string:
    why the branch is unusable)."""
    listing = gitrepo.branch_files(repo, commit, MAX_BRANCH_FILES)
    if listing is None:
        return f"the branch holds more than {MAX_BRANCH_FILES} files, or objects are missing"
    entries, ids = listing
    problem = endpoint_verify.check_tree(entries)
    if problem is not None:
        return problem
    present = [f for f in enrollment.BRANCH_FILES if f in ids]
    if not present:
        return None
    if len(present) != len(enrollment.BRANCH_FILES):
        missing = sorted(set(enrollment.BRANCH_FILES) - set(present))
        return f"{missing[0]} is missing beside {present[0]}"
    try:
        blobs = [gitrepo.read_blob(repo, ids[f]) for f in enrollment.BRANCH_FILES]
    except KeyError:
        return "objects are missing"
    return Candidate(name, *blobs)


def candidates_in(repo: pygit2.Repository, tips: dict[str, str], skip: set[str]) -> tuple[dict[str, Candidate],
                                                                                          dict[str, str]]:
    """Every device branch's enrollment (name -> files), and the branches that could not be read."""
    found: dict[str, Candidate] = {}
    unusable: dict[str, str] = {}
    for name, commit in sorted(tips.items()):
        if name in skip or not NAME_RE.match(name):
            continue
        got = read_candidate(repo, name, commit)
        if isinstance(got, Candidate):
            found[name] = got
        elif got is not None:
            unusable[name] = got
    return found, unusable


def checkout_enrollments(path: Path, members: set[str]) -> tuple[dict[str, Candidate], list[str]]:
    """An admin's view: the enrollments on origin's `endpoints/*` branches (fetched now, best effort:
    without origin, or when it does not answer, what the checkout fetched before), and one warning
    line per thing worth telling. Branches of members are not read."""
    try:
        repo = pygit2.Repository(str(path))
    except pygit2.GitError:
        return {}, []
    warnings = []
    if "origin" in [r.name for r in repo.remotes]:
        try:
            gitrepo.fetch_refs(repo, [f"+refs/heads/{gitrepo.ENDPOINT_BRANCHES}*:{ADMIN_REFS}*"], gitrepo.Credentials(),
                               prune=True)
        except GitError as exc:
            warnings.append(f"enrollments: origin not reached ({exc.message}); using the device branches fetched "
                            "before")
    tips = {}
    for ref in repo.references:
        if ref.startswith(ADMIN_REFS):
            commit = str(repo.references[ref].resolve().target)
            try:
                gitrepo.require_commit(repo, commit, ref)
            except VerificationError:
                continue
            tips[ref[len(ADMIN_REFS):]] = commit
    found, unusable = candidates_in(repo, tips, members)
    warnings += [f"endpoints/{name}: {why}" for name, why in unusable.items()]
    return found, warnings
