"""`meshctl join`: keys, a signed join request, and a pull-request branch.

Running join again is safe: the same device asking under the same name re-sends its request
only when the one on the git host differs (an approval waiting on the branch is never
overwritten by an identical request); asking under another name is refused unless
`--rename` says so, which withdraws the first request instead of stranding it.

A name is bound to a key visibly: join never overwrites another device's join/NAME branch or
pending request (it refuses, before anything is written), never force-pushes (a new request of
its own fast-forwards its branch), and prints the key fingerprint the admin checks
(`meshctl admin approve NAME --expect-key FP`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Final

from meshctl.coord import records, signing, ssh_auth, verify
from meshctl.coord import repo as gitrepo
from meshctl.coord.advertise import Advertised, check_advertised
from meshctl.coord.node_state import NodeConfig, NodeState
from meshctl.errors import GitError, MeshctlError, UsageError
from meshctl.identity import DeviceKeys, load_or_create_device_keys

if TYPE_CHECKING:
    import pygit2

REQUEST_REF: Final = "refs/meshctl/request"  # a remote join branch, fetched to look at it


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
    already_pushed: bool = False  # the git host already holds this very request
    withdrawn: str | None = None  # the name asked for before (--rename)
    ssh_key: str | None = None  # the key file recorded for later syncs
    ssh_agent: str | None = None  # the agent the git host accepted (not usable by cron or systemd)
    fingerprint: str = ""  # of this device's identity key: the admin checks it (`approve --expect-key`)


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


def check_ssh_key(path: str) -> str:
    """`--ssh-key PATH` as an absolute path, if it can be used without a person."""
    key = Path(path).expanduser().absolute()
    try:
        data = key.read_bytes()[: ssh_auth.MAX_KEY_FILE_BYTES]
    except OSError as exc:
        raise UsageError(f"--ssh-key {path}: {exc.strerror or exc}") from None
    problem = ssh_auth.key_file_problem(data)
    if problem:
        raise UsageError(f"--ssh-key {path}: {problem}",
                         "syncs from cron or systemd cannot type a passphrase: use a key without one "
                         "(a deploy key the git host accepts)")
    return str(key)


def chosen_name(asked: str | None, previous: NodeConfig | None, fingerprint: str, default: str,
                rename: bool, previous_is_member: bool) -> tuple[str, str | None]:
    """(the name to ask for, a previous request to withdraw), or a refusal (pure).

    The same mesh is recognised by its root fingerprint. Without --name a device keeps the
    name it asked for before; another name needs --rename, and a member's name needs an
    admin (its addresses and rules follow the name).
    """
    if previous is not None and previous.root_fingerprint != fingerprint:
        raise UsageError(f"this device already joined another mesh ({previous.repo_url}, root "
                         f"{previous.root_fingerprint})",
                         "one state directory holds one mesh: pass --state-dir DIR and --interface NAME "
                         "for a second one")
    if previous is None:
        return asked or default, None
    name = asked or previous.name
    if name == previous.name:
        return name, None
    if previous_is_member:
        raise UsageError(f"this device is already member {previous.name!r} of the mesh; a member cannot "
                         "rename itself",
                         f"an admin removes it first (`meshctl admin revoke {previous.name}`), then run "
                         f"join again with --name {name} --rename")
    if not rename:
        raise UsageError(f"this device already asked to join as {previous.name!r} (branch join/{previous.name})",
                         f"to ask as {name!r} instead, run join again with --name {name} --rename "
                         f"(the request for {previous.name} is withdrawn)")
    return name, previous.name


@dataclass(frozen=True, slots=True)
class Fetched:
    """The mesh as a joining device first sees it: fetched, its root pinned, verified."""

    url: str
    node: NodeState
    previous: NodeConfig | None
    repo: pygit2.Repository
    creds: gitrepo.Credentials
    heads: Mapping[str, str]
    branch: str
    tip: str
    pinned: str
    verified: verify.Verified
    ssh_key: str | None


def fetch_mesh(state_dir: Path, repo_dir: Path, url: str, pinned: str | None, confirm_root: Callable[[str], bool],
               now: int, ssh_key: str | None, *, endpoints: bool = False) -> Fetched:
    """Clone (or fetch) the repository, pin its root (asking when not given) and verify it."""
    node = NodeState(state_dir)
    previous = _previous_config(node)
    if ssh_key is not None:
        ssh_key = check_ssh_key(ssh_key)
    elif previous is not None and previous.repo_url == url:
        ssh_key = previous.ssh_key
    creds = gitrepo.Credentials(ssh_key)
    repo = gitrepo.open_or_init(repo_dir, url)
    heads = gitrepo.remote_heads(repo, creds)
    branch = gitrepo.default_branch(repo, heads=heads)
    tip = gitrepo.fetch(repo, branch, creds, endpoints=endpoints)
    snap = gitrepo.GitSnapshot(repo, tip)
    files = snap.files()
    if "root/1.root.json" not in files:
        raise UsageError(f"{url}: not a meshctl coordination repository (no root/1.root.json)")
    fp = verify.fingerprint(snap.read("root/1.root.json"))
    if pinned is None:
        if not confirm_root(fp):
            raise UsageError("root not trusted; nothing was changed",
                             "get the fingerprint from an admin (`meshctl admin invite`)")
        pinned = fp
    memory = node.load_memory() if previous is not None and previous.root_fingerprint == pinned else None
    verified = verify.verify_snapshot(snap, pinned, now, memory)
    return Fetched(url, node, previous, repo, creds, heads, branch, tip, pinned, verified, ssh_key)


def check_name(name: str | None) -> None:
    if name is not None and not records.NAME_RE.match(name):
        raise UsageError(f"--name {name!r}: use lowercase letters, digits and '-' (a DNS label)")


def check_endpoints(endpoints: tuple[str, ...]) -> None:
    for ep in endpoints:
        if not records.HOSTPORT_RE.match(ep):
            raise UsageError(f"--endpoint {ep!r}: expected HOST:PORT")


def join(state_dir: Path, repo_dir: Path, keys_dir: Path, url: str, name: str | None, pinned: str | None,
         confirm_root: Callable[[str], bool], endpoints: tuple[str, ...], now: int, *,
         default_name: str = "device", ssh_key: str | None = None, rename: bool = False,
         advertise: Advertised | None = None) -> JoinResult:
    """Clone and verify the mesh, create keys, push `join/<name>` with the request."""
    check_name(name)
    check_endpoints(endpoints)
    got = fetch_mesh(state_dir, repo_dir, url, pinned, confirm_root, now, ssh_key)
    node, previous, repo, creds, heads = got.node, got.previous, got.repo, got.creds, got.heads
    branch, tip, pinned, verified, ssh_key = got.branch, got.tip, got.pinned, got.verified, got.ssh_key
    accepted = creds.accepted
    snap = gitrepo.GitSnapshot(repo, tip)
    keys = load_or_create_device_keys(keys_dir)
    previous_is_member = (previous is not None and previous.name in verified.records
                          and verified.records[previous.name].identity_key == keys.identity.public())
    name, withdraw = chosen_name(name, previous, pinned, default_name, rename, previous_is_member)
    check_name(name)
    member = verified.state.peers.get(name)
    if member is not None and verified.records[name].identity_key != keys.identity.public():
        raise UsageError(f"peers/{name}.json: the name {name!r} is taken by another device",
                         "choose another --name")
    if advertise is not None:
        check_advertised(advertise, (verified.state.ipv4_cidr, verified.state.ipv6_prefix))
    data, sig = make_request(keys, verified.root.network_id, name, endpoints, now, advertise)
    # Before anything is written: a name whose request is another device's is refused.
    on_host = None if member is not None else _own_request_on_host(repo, heads, snap, name, keys,
                                                                  verified.root.network_id, creds)
    ssh_key, agent = kept_credential(ssh_key, accepted)
    node.save_config(NodeConfig(name, url, branch, pinned, verified.root.network_id, ssh_key))
    node.save_memory(verified.memory(tip), now)
    gitrepo.set_trusted(repo, tip)
    join_branch = f"join/{name}"
    result = JoinResult(name, verified.root.name, join_branch, False, None, None, data, sig,
                        ssh_key=ssh_key, ssh_agent=agent, fingerprint=keys.identity.public().key_id())
    if withdraw is not None:
        result = replace(result, withdrawn=withdraw)
        _withdraw(repo, heads, withdraw, keys, verified.root.network_id, creds)
    if member is not None:
        return replace(result, push_error="already a member")
    if on_host is not None and _same_request(on_host[0], data):
        return replace(result, pushed=True, already_pushed=True, pr_url=pull_request_url(url, join_branch))
    earlier = (on_host[2],) if on_host is not None else ()
    commit = gitrepo.commit_tree_changes(
        repo, tip, {f"requests/{name}.json": data, f"requests/{name}.json.sig": sig}, f"Join request: {name}",
        extra_parents=earlier)  # this device's earlier request is a parent: the push is a fast-forward
    gitrepo.set_ref(repo, f"refs/heads/{join_branch}", commit)
    try:  # no '+': what the host holds is never replaced, only moved on
        gitrepo.push(repo, f"refs/heads/{join_branch}:refs/heads/{join_branch}", creds)
    except GitError as exc:
        return replace(result, push_error=exc.message)
    return replace(result, pushed=True, pr_url=pull_request_url(url, join_branch))


def kept_credential(ssh_key: str | None, accepted: ssh_auth.SshCredential | None) -> tuple[str | None, str | None]:
    """(the key file later syncs use, the agent the host accepted when no key file will do)."""
    if ssh_key is None and accepted is not None and accepted.kind == "key":
        ssh_key = accepted.path
    agent = accepted.path if accepted is not None and accepted.kind == "agent" and ssh_key is None else None
    return ssh_key, agent


def _previous_config(node: NodeState) -> NodeConfig | None:
    if not node.config_path.exists():
        return None
    return node.load_config()


def _request_on_host(repo: pygit2.Repository, heads: Mapping[str, str], name: str,
                     creds: gitrepo.Credentials, directory: str = "requests") -> tuple[bytes, bytes] | None:
    """requests/NAME.json and its .sig on the host's join/NAME branch, if there are both (with
    directory "peers": the record an admin approved on the branch)."""
    ref = f"refs/heads/join/{name}"
    if ref not in heads:
        return None
    gitrepo.fetch_refs(repo, [f"+{ref}:{REQUEST_REF}"], creds)
    tip = str(repo.references[REQUEST_REF].target)
    try:
        gitrepo.require_commit(repo, tip, f"branch join/{name}")
    except MeshctlError:
        return None
    snap = gitrepo.GitSnapshot(repo, tip)
    path = f"{directory}/{name}.json"
    try:
        if path not in snap.files() or f"{path}.sig" not in snap.files():
            return None
        return snap.read(path), snap.read(f"{path}.sig")
    except MeshctlError:
        return None


def _own_request_on_host(repo: pygit2.Repository, heads: Mapping[str, str], snap: gitrepo.GitSnapshot,
                         name: str, keys: DeviceKeys, network_id: str,
                         creds: gitrepo.Credentials) -> tuple[bytes, bytes, str] | None:
    """This device's own request for NAME on the host's join/NAME branch, and the branch's tip
    (None: no such branch).
    A pending request on the default branch, or a join/NAME branch, that is not this device's
    (not signed by its identity key) is refused: join never takes another device's name."""
    path = f"requests/{name}.json"
    if path in snap.files():
        pending = (verify.read_bounded(snap, path, records.MAX_PEER_BYTES),
                   snap.read(f"{path}.sig") if f"{path}.sig" in snap.files() else b"")
        if not _signed_by(keys, network_id, pending):
            raise UsageError(f"{path}: another device's join request (key {_owner(pending[0])}) is pending "
                             f"under the name {name!r}", "choose another --name")
    if f"refs/heads/join/{name}" not in heads:
        return None
    on_host = _request_on_host(repo, heads, name, creds)
    if on_host is None:
        approved = _request_on_host(repo, heads, name, creds, "peers")
        if approved is not None and _signed_by(keys, network_id, approved):
            raise UsageError(f"branch join/{name} holds an admin's approval of this device's request: it waits "
                             "to be merged", "nothing to send again; once it is merged, `meshctl up`")
    if on_host is None or not _signed_by(keys, network_id, on_host):
        owner = _owner(on_host[0]) if on_host is not None else "unreadable"
        raise UsageError(f"branch join/{name} already holds another device's join request (key {owner})",
                         "choose another --name; meshctl never overwrites another device's join branch")
    return on_host[0], on_host[1], str(repo.references[REQUEST_REF].target)


def _owner(record: bytes) -> str:
    """The key fingerprint of a request's identity key."""
    try:
        return records.parse_peer(record, "request").identity_key.key_id()
    except MeshctlError:
        return "unreadable"


def _same_request(on_host: bytes, ours: bytes) -> bool:
    """The same record but for its creation time: nothing new to send."""
    try:
        theirs, mine = records.parse_peer(on_host, "host"), records.parse_peer(ours, "ours")
    except MeshctlError:
        return False
    return replace(theirs, created=0) == replace(mine, created=0)


def _signed_by(keys: DeviceKeys, network_id: str, request: tuple[bytes, bytes]) -> bool:
    """The request on the host carries this device's own signature."""
    data, sig = request
    try:
        sigs = signing.parse_signatures(sig, name="request")
    except MeshctlError:
        return False
    return bool(signing.valid_signers(sigs, [keys.identity.public()], "peer", network_id, data))


def _withdraw(repo: pygit2.Repository, heads: Mapping[str, str], old: str, keys: DeviceKeys, network_id: str,
              creds: gitrepo.Credentials) -> None:
    """Delete join/OLD on the host when it holds this device's own signed request (best effort:
    without push rights the admin sees the new request's name)."""
    gitrepo.delete_ref(repo, f"refs/heads/join/{old}")
    on_host = _request_on_host(repo, heads, old, creds)
    if on_host is None or not _signed_by(keys, network_id, on_host):
        return
    try:
        gitrepo.push(repo, f":refs/heads/join/{old}", creds)
    except GitError:
        pass
