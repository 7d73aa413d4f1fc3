"""`meshctl join`: keys, a signed join request, and a pull-request branch."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from meshctl.coord import records, signing, verify
from meshctl.coord import repo as gitrepo
from meshctl.coord.node_state import NodeConfig, NodeState
from meshctl.errors import GitError, ParseError, UsageError
from meshctl.identity import DeviceKeys, load_or_create_device_keys

if TYPE_CHECKING:
    import pygit2


JOIN_REFS: Final = "refs/meshctl/join"  # where the remote's join branch is fetched to, to see whose it is


@dataclass(frozen=True, slots=True)
class JoinResult:
    name: str
    mesh: str
    branch: str
    pushed: bool
    push_error: str | None
    pr_url: str | None
    record: bytes
    signature: bytes
    fingerprint: str  # of this device's identity key: the admin checks it (`approve --expect-key`)


def pull_request_url(repo_url: str, branch: str) -> str | None:
    """Where to open the pull request, for GitHub and GitLab remotes."""
    m = re.match(r"\A(?:https://|ssh://git@|git@)(github\.com|gitlab\.com)[/:](.+?)(?:\.git)?/?\Z", repo_url)
    if not m:
        return None
    host, path = m.groups()
    if host == "github.com":
        return f"https://github.com/{path}/compare/{branch}?expand=1"
    return f"https://gitlab.com/{path}/-/merge_requests/new?merge_request%5Bsource_branch%5D={branch}"


def make_request(keys: DeviceKeys, network_id: str, name: str, endpoints: tuple[str, ...],
                 now: int) -> tuple[bytes, bytes]:
    rec = records.PeerRecord(network_id, name, keys.identity.public(), keys.wireguard.public(),
                             keys.disco.public(), endpoints, now)
    data = records.marshal_peer(rec)
    sig = signing.marshal_signatures([signing.sign(keys.identity, "peer", network_id, data)])
    return data, sig


def _owner_of(data: bytes | None, path: str) -> str | None:
    """The key fingerprint of a request's identity key (None: absent or unreadable)."""
    if data is None:
        return None
    try:
        return records.parse_peer(data, path).identity_key.key_id()
    except ParseError:
        return None


def _check_name_free(repo: pygit2.Repository, snap: gitrepo.GitSnapshot, name: str,
                     mine: str) -> tuple[str, ...]:
    """Refuse a name whose pending request belongs to another key, on the default branch or on the
    remote's join/NAME branch (a join never overwrites another device's branch). Returns the tip of
    this device's own earlier join branch, if there is one, for the new commit to build on."""
    path = f"requests/{name}.json"
    if path in snap.files():
        owner = _owner_of(verify.read_bounded(snap, path, records.MAX_PEER_BYTES), path)
        if owner != mine:
            raise UsageError(f"{path}: another device's join request (key {owner or 'unreadable'}) is pending "
                             f"under the name {name!r}", "choose another --name")
    branch = f"join/{name}"
    if branch not in gitrepo.remote_branches(repo, branch):
        return ()
    theirs = gitrepo.fetch_branches(repo, [branch], JOIN_REFS).get(branch)
    owner = _owner_of(gitrepo.read_file_at(repo, theirs, path, records.MAX_PEER_BYTES), path) if theirs else None
    if theirs is None or owner != mine:
        raise UsageError(f"branch {branch} already holds another device's join request (key {owner or 'unreadable'})",
                         "choose another --name; meshctl never overwrites another device's join branch")
    return (theirs,)


def join(state_dir: Path, repo_dir: Path, keys_dir: Path, url: str, name: str, pinned: str | None,
         confirm_root: object, endpoints: tuple[str, ...], now: int) -> JoinResult:
    """Clone and verify the mesh, create keys, push `join/<name>` with the request."""
    if not records.NAME_RE.match(name):
        raise UsageError(f"--name {name!r}: use lowercase letters, digits and '-' (a DNS label)")
    for ep in endpoints:
        if not records.HOSTPORT_RE.match(ep):
            raise UsageError(f"--endpoint {ep!r}: expected HOST:PORT")
    repo = gitrepo.open_or_init(repo_dir, url)
    branch = gitrepo.default_branch(repo)
    tip = gitrepo.fetch(repo, branch)  # a tip that is not a commit is refused here, before any trust
    snap = gitrepo.GitSnapshot(repo, tip)
    files = snap.files()
    if "root/1.root.json" not in files:
        raise UsageError(f"{url}: not a meshctl coordination repository (no root/1.root.json)")
    fp = verify.fingerprint(snap.read("root/1.root.json"))
    if pinned is None:
        assert callable(confirm_root)
        if not confirm_root(fp):
            raise UsageError("root not trusted; nothing was changed",
                             "get the fingerprint from an admin (`meshctl admin invite`)")
        pinned = fp
    node = NodeState(state_dir)
    verified = verify.verify_snapshot(snap, pinned, now, node.load_memory())
    keys = load_or_create_device_keys(keys_dir)
    mine = keys.identity.public().key_id()
    member = verified.state.peers.get(name)
    if member is not None:
        rec = verified.records[name]
        if rec.identity_key != keys.identity.public():
            raise UsageError(f"peers/{name}.json: the name {name!r} is taken by another device",
                             "choose another --name")
    earlier = _check_name_free(repo, snap, name, mine) if member is None else ()
    data, sig = make_request(keys, verified.root.network_id, name, endpoints, now)
    node.save_config(NodeConfig(name, url, branch, pinned, verified.root.network_id))
    node.save_memory(verified.memory(tip), now)
    gitrepo.set_trusted(repo, tip)
    join_branch = f"join/{name}"
    if member is not None:
        return JoinResult(name, verified.root.name, join_branch, False, "already a member", None, data, sig, mine)
    gitrepo.commit_tree_changes(
        repo, tip, {f"requests/{name}.json": data, f"requests/{name}.json.sig": sig},
        f"Join request: {name}", ref=f"refs/heads/{join_branch}", extra_parents=earlier,
    )
    try:  # no '+': the push never replaces what is there (an earlier request of ours is a parent)
        gitrepo.push(repo, f"refs/heads/{join_branch}:refs/heads/{join_branch}")
    except GitError as exc:
        return JoinResult(name, verified.root.name, join_branch, False, exc.message, None, data, sig, mine)
    return JoinResult(name, verified.root.name, join_branch, True, None,
                      pull_request_url(url, join_branch), data, sig, mine)
