"""`meshctl admin pending`: the join requests waiting for an admin, each with its key fingerprint.

Requests in the checkout (requests/NAME.json) and on the remote's join/NAME branches. The
fingerprint is the one `meshctl join` printed on the device: the admin compares the two (or lets
`admin approve NAME --expect-key FP` do it) before a name is bound to a key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from meshctl.coord import admin, records, verify
from meshctl.coord import repo as gitrepo
from meshctl.coord.admin_trust import AdminTrust
from meshctl.coord.records import PeerRecord, StateDoc
from meshctl.coord.state_diff import fingerprint
from meshctl.errors import GitError, MeshctlError

MAX_BRANCHES: Final = 1000  # join branches looked at, at most
REMOTE_REFS: Final = "refs/remotes/origin"


@dataclass(frozen=True, slots=True)
class Pending:
    name: str
    fingerprint: str | None  # None: the request does not verify (the note says why)
    where: str
    note: str = ""


def judge(name: str, files: Mapping[str, bytes], where: str, state: StateDoc,
          members: Mapping[str, PeerRecord]) -> Pending:
    """One request (`files`: requests/NAME.json and its .sig) against the verified state (pure)."""
    path = f"requests/{name}.json"
    try:
        rec, _data, _sig = verify.signed_record(verify.MemorySnapshot(files), path, state.network_id)
    except (MeshctlError, KeyError) as exc:
        return Pending(name, None, where, exc.message if isinstance(exc, MeshctlError) else f"{path}: missing")
    notes = []
    if name in state.peers:
        notes.append("the name is already a member's")
    for member, mrec in sorted(members.items()):
        if (mrec.identity_key, mrec.wg_public_key, mrec.disco_key) == (rec.identity_key, rec.wg_public_key,
                                                                        rec.disco_key):
            notes.append(f"the keys of member {member}")
    for gone in state.revoked:
        if gone.matches(rec):
            notes.append(f"keys of {gone.name}, revoked {records.format_time(gone.at)}: approve only with "
                         "--allow-revoked-key")
    return Pending(name, fingerprint(rec), where, "; ".join(notes))


def _request_files(read: object, name: str) -> dict[str, bytes]:
    out = {}
    for path, limit in ((f"requests/{name}.json", records.MAX_PEER_BYTES),
                        (f"requests/{name}.json.sig", 16 * 1024)):
        data = read(path, limit)  # type: ignore[operator]
        if data is not None:
            out[path] = data
    return out


def list_pending(path: Path, now: int, trust: AdminTrust | None, fetch: bool = True) -> tuple[list[Pending], list[str]]:
    """Pending requests (checkout first, then the remote's join/ branches) and warnings."""
    session = admin.open_session(path, now, trust=trust)  # verified from this admin's memory; nothing written
    base = session.baseline
    state, members = base.state, base.verified.records
    snap = base.snapshot
    found: list[Pending] = []
    in_checkout: dict[str, str | None] = {}
    for req in sorted(p for p in snap.files() if verify.REQUEST_RE.match(p)):
        name = req[len("requests/"):-len(".json")]

        def read_checkout(p: str, limit: int) -> bytes | None:
            return snap.read(p) if p in snap.files() and snap.size(p) <= limit else None

        item = judge(name, _request_files(read_checkout, name), f"{req} (checkout)", state, members)
        in_checkout[name] = item.fingerprint
        found.append(item)
    warnings: list[str] = []
    if fetch:
        found += _remote(path, state, members, in_checkout, warnings)
    return found, warnings


def _remote(path: Path, state: StateDoc, members: Mapping[str, PeerRecord], in_checkout: Mapping[str, str | None],
            warnings: list[str]) -> list[Pending]:
    repo = gitrepo.checkout_repo(path)
    if repo is None or "origin" not in [r.name for r in repo.remotes]:
        return []
    try:
        branches = sorted(gitrepo.remote_branches(gitrepo.remote_heads(repo), "join/"))
        if len(branches) > MAX_BRANCHES:
            warnings.append(f"origin has {len(branches)} join/ branches; the first {MAX_BRANCHES} are listed")
        tips = gitrepo.fetch_branches(repo, branches[:MAX_BRANCHES], REMOTE_REFS)
    except GitError as exc:
        warnings.append(f"{exc.message} (only the checkout's requests are listed)")
        return []
    out = []
    for branch in sorted(tips):
        name = branch[len("join/"):]
        where = f"branch {branch} (origin)"
        if not records.NAME_RE.match(name):
            out.append(Pending(name, None, where, "not a device name"))
            continue

        def read_branch(p: str, limit: int, tip: str = tips[branch]) -> bytes | None:
            return gitrepo.read_file_at(repo, tip, p, limit)

        item = judge(name, _request_files(read_branch, name), where, state, members)
        if name in members and item.fingerprint == fingerprint(members[name]):
            continue  # approved already: the branch was merged (or is being)
        if name in in_checkout and in_checkout[name] != item.fingerprint:
            item = Pending(item.name, item.fingerprint, item.where,
                           "; ".join(x for x in (item.note, "another key than the checkout's request") if x))
        out.append(item)
    return out
