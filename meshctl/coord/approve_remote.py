"""`meshctl admin approve NAME` with the request still on the git host: the admin's loop in one command.

    fetch origin -> the default branch (main) up to date and checked out
    -> requests/NAME.json(.sig) from join/NAME (update/NAME for a member's changed record)
    -> the approval itself: the same coord function as offline (it verifies before it signs)
    -> one commit on main that merges the request branch (the host marks the pull request merged)
    -> push main, and delete the request branch.

Where the host refuses main (a protected branch, no push rights to it) or more admins must
sign, the commit goes to the request branch instead, to be merged as a pull request; the
checkout is left on main as origin has it. Nothing is lost: a commit that could not be pushed
anywhere stays on the local request branch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from meshctl.coord import admin, workdir
from meshctl.coord import repo as gitrepo
from meshctl.coord.join import pull_request_url
from meshctl.coord.records import StateDoc
from meshctl.errors import GitError, MeshctlError, UsageError

Outcome = Literal["merged", "pull-request", "cosign", "not-pushed", "not-committed"]
ApproveFn = Callable[[admin.Checkout], tuple[StateDoc, list[str], list[str]]]


@dataclass(frozen=True, slots=True)
class Approval:
    name: str
    branch: str  # join/NAME or update/NAME
    main: str
    state: StateDoc
    outcome: Outcome
    reason: str | None = None  # why main was not pushed to
    pr_url: str | None = None


def request_files(name: str) -> tuple[str, str]:
    return f"requests/{name}.json", f"requests/{name}.json.sig"


def request_branch_problem(branch: str, changed: list[str], name: str) -> str | None:
    """A request branch may change its own request and nothing else (pure)."""
    extra = sorted(set(changed) - set(request_files(name)))
    if extra:
        return f"{branch} changes more than requests/{name}.json: {', '.join(extra)}"
    return None


def origin_has_branch(path: Path, branch: str) -> bool | None:
    """Whether origin has `branch`; None when there is no origin to ask or it does not answer."""
    co = workdir.open_with_origin(path)
    if co is None:
        return None
    try:
        heads = workdir.remote_heads(co, gitrepo.Credentials())
    except GitError:
        return None
    return f"refs/heads/{branch}" in heads


def approve_from_origin(path: Path, name: str, approve: ApproveFn, *, commit: bool = True) -> Approval:
    co = workdir.open_with_origin(path)
    if co is None:
        pending = sorted(p.stem for p in (path / "requests").glob("*.json"))
        raise UsageError(f"requests/{name}.json: no join request named {name!r} in {path}, and it is not a "
                         "git checkout with an `origin` to fetch it from",
                         f"pending requests here: {', '.join(pending) or 'none'}")
    dirty = workdir.changed_files(co)
    if dirty:
        raise UsageError(f"uncommitted changes in {', '.join(dirty[:5])}",
                         "commit or stash them first: the approval is committed and pushed")
    creds = gitrepo.Credentials()
    heads = workdir.remote_heads(co, creds)
    main = gitrepo.default_branch(co.repo, heads=heads)
    candidates = [b for b in (f"join/{name}", f"update/{name}") if f"refs/heads/{b}" in heads]
    workdir.fetch(co, [main, *candidates], creds)
    upstream = workdir.ref_target(co, f"refs/remotes/origin/{main}")
    assert upstream is not None
    base = workdir.update_main(co, main, upstream)
    is_member = name in admin.open_checkout(path).state.peers
    branch = f"update/{name}" if is_member else f"join/{name}"
    tip = workdir.ref_target(co, f"refs/remotes/origin/{branch}") if branch in candidates else None
    if tip is None:
        raise _no_request(name, branch, heads, is_member)
    if workdir.contains(co, base, tip):
        raise UsageError(f"{branch} is already merged into {main}", f"`meshctl admin approve {name}` is done")
    problem = request_branch_problem(branch, workdir.changes_between(co, workdir.merge_base(co, base, tip) or base,
                                                                     tip), name)
    files = {p: workdir.read_file(co, tip, p) for p in request_files(name)}
    if problem is None and None in files.values():
        problem = f"{branch} holds no requests/{name}.json with its .sig"
    if problem:
        raise UsageError(problem, "look at the branch by hand; nothing was changed")
    untracked = workdir.untracked_files(co)
    try:
        (path / "requests").mkdir(exist_ok=True)
        for rel, data in files.items():
            assert data is not None
            (path / rel).write_bytes(data)
        state, changed, removed = approve(admin.open_checkout(path))
    except BaseException:
        workdir.put_back(co, untracked)
        raise
    if not commit:
        return Approval(name, branch, main, state, "not-committed")
    approved = gitrepo.commit_workdir(path, changed, removed, f"Approve {name} (serial {state.serial})\n\n"
                                      f"Merges {branch}: the request, approved and signed.", merge=tip)
    assert approved is not None
    return _publish(co, creds, Approval(name, branch, main, state, "merged"), base, approved)


def _publish(co: workdir.Checkout, creds: gitrepo.Credentials, done: Approval, base: str, approved: str) -> Approval:
    """Push the approval to main, else to its request branch (see the module docstring)."""
    good, threshold = admin.signature_status(admin.open_checkout(co.path))
    if good < threshold:
        reason = f"state.json has {good} of {threshold} admin signatures"
        return _to_request_branch(co, creds, done, base, approved, "cosign", reason)
    try:
        gitrepo.push(co.repo, f"refs/heads/{done.main}:refs/heads/{done.main}", creds)
    except GitError as exc:
        return _to_request_branch(co, creds, done, base, approved, "pull-request", exc.message)
    workdir.pushed(co, done.main, approved)
    try:  # the request is in main now; its branch only clutters the pending list
        gitrepo.push(co.repo, f":refs/heads/{done.branch}", creds)
        workdir.forget_remote_branch(co, done.branch)
    except GitError:
        pass
    return done


def _to_request_branch(co: workdir.Checkout, creds: gitrepo.Credentials, done: Approval, base: str,
                       approved: str, outcome: Outcome, reason: str) -> Approval:
    """The approval on the request branch (a fast-forward of it), main back where origin has it."""
    workdir.switch_to(co, done.main, base)
    gitrepo.set_ref(co.repo, f"refs/heads/{done.branch}", approved)
    try:
        origin_main = workdir.remote_heads(co, creds).get(f"refs/heads/{done.main}")
        if origin_main == workdir.ref_target(co, f"refs/remotes/origin/{done.main}"):
            gitrepo.push(co.repo, f"refs/heads/{done.branch}:refs/heads/{done.branch}", creds)
    except GitError as exc:
        return Approval(done.name, done.branch, done.main, done.state, "not-pushed", f"{reason}; then {exc.message}")
    if origin_main != workdir.ref_target(co, f"refs/remotes/origin/{done.main}"):
        raise MeshctlError(f"origin/{done.main} moved while {done.name} was being approved; nothing was pushed",
                           f"run `meshctl admin approve {done.name}` again")
    workdir.pushed(co, done.branch, approved)
    return Approval(done.name, done.branch, done.main, done.state, outcome, reason,
                    pull_request_url(co.url, done.branch))


def _no_request(name: str, branch: str, heads: dict[str, str], is_member: bool) -> UsageError:
    pending = sorted(h.removeprefix("refs/heads/join/") for h in heads if h.startswith("refs/heads/join/"))
    if is_member:
        return UsageError(f"{name!r} is already a member and origin has no {branch} branch (a changed record)")
    return UsageError(f"no join request named {name!r}: origin has no {branch} branch",
                      f"pending join requests on origin: {', '.join(pending) or 'none'}")
