"""`meshctl join`: keys, a signed join request, and a pull-request branch."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from meshctl.coord import records, signing, verify
from meshctl.coord import repo as gitrepo
from meshctl.coord.advertise import Advertised, check_advertised
from meshctl.coord.node_state import NodeConfig, NodeState
from meshctl.errors import GitError, UsageError
from meshctl.identity import DeviceKeys, load_or_create_device_keys


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


def pull_request_url(repo_url: str, branch: str) -> str | None:
    """Where to open the pull request, for GitHub and GitLab remotes."""
    m = re.match(r"^(?:https://|ssh://git@|git@)(github\.com|gitlab\.com)[/:](.+?)(?:\.git)?/?$", repo_url)
    if not m:
        return None
    host, path = m.groups()
    if host == "github.com":
        return f"https://github.com/{path}/compare/{branch}?expand=1"
    return f"https://gitlab.com/{path}/-/merge_requests/new?merge_request%5Bsource_branch%5D={branch}"


def make_request(keys: DeviceKeys, network_id: str, name: str, endpoints: tuple[str, ...],
                 now: int, advertise: Advertised | None = None) -> tuple[bytes, bytes]:
    offer = advertise or Advertised()
    rec = records.PeerRecord(network_id, name, keys.identity.public(), keys.wireguard.public(),
                             keys.disco.public(), endpoints, now, offer.routes, offer.exit_node)
    return sign_record(keys, rec)


def sign_record(keys: DeviceKeys, rec: records.PeerRecord) -> tuple[bytes, bytes]:
    """The record's canonical bytes and its self-signature (the identity key's)."""
    data = records.marshal_peer(rec)
    sig = signing.marshal_signatures([signing.sign(keys.identity, "peer", rec.network_id, data)])
    return data, sig


def join(state_dir: Path, repo_dir: Path, keys_dir: Path, url: str, name: str, pinned: str | None,
         confirm_root: object, endpoints: tuple[str, ...], now: int,
         advertise: Advertised | None = None) -> JoinResult:
    """Clone and verify the mesh, create keys, push `join/<name>` with the request."""
    if not records.NAME_RE.match(name):
        raise UsageError(f"--name {name!r}: use lowercase letters, digits and '-' (a DNS label)")
    for ep in endpoints:
        if not records.HOSTPORT_RE.match(ep):
            raise UsageError(f"--endpoint {ep!r}: expected HOST:PORT")
    repo = gitrepo.open_or_init(repo_dir, url)
    branch = gitrepo.default_branch(repo)
    tip = gitrepo.fetch(repo, branch)
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
    member = verified.state.peers.get(name)
    if member is not None:
        rec = verified.records[name]
        if rec.identity_key != keys.identity.public():
            raise UsageError(f"peers/{name}.json: the name {name!r} is taken by another device",
                             "choose another --name")
    if advertise is not None:
        check_advertised(advertise, (verified.state.ipv4_cidr, verified.state.ipv6_prefix))
    data, sig = make_request(keys, verified.root.network_id, name, endpoints, now, advertise)
    node.save_config(NodeConfig(name, url, branch, pinned, verified.root.network_id))
    node.save_memory(verified.memory(tip), now)
    gitrepo.set_trusted(repo, tip)
    join_branch = f"join/{name}"
    if member is not None:
        return JoinResult(name, verified.root.name, join_branch, False, "already a member", None, data, sig)
    commit = gitrepo.commit_tree_changes(
        repo, tip, {f"requests/{name}.json": data, f"requests/{name}.json.sig": sig},
        f"Join request: {name}", ref=f"refs/heads/{join_branch}",
    )
    del commit
    try:
        gitrepo.push(repo, f"+refs/heads/{join_branch}:refs/heads/{join_branch}")
    except GitError as exc:
        return JoinResult(name, verified.root.name, join_branch, False, exc.message, None, data, sig)
    return JoinResult(name, verified.root.name, join_branch, True, None,
                      pull_request_url(url, join_branch), data, sig)
