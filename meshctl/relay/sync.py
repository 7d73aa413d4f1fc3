"""The relay's view of the coordination repository: fetch, verify, remember (shell).

The same library a node uses (meshctl.coord.repo + meshctl.coord.verify), with the relay's
own trust memory in its state directory: trust.json only moves forward, so a git host that
serves an older state (to resurrect a revoked member) is refused exactly as on a node.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pygit2

from meshctl.coord import repo as gitrepo
from meshctl.coord import verify
from meshctl.coord.effective import apply_view
from meshctl.coord.endpoint_sync import read_endpoints
from meshctl.coord.netmap import NetMap, Relay
from meshctl.coord.node_state import NodeState
from meshctl.fsutil import ensure_private_dir
from meshctl.keys import NodePublic, VerifyKey

REPO_DIR_NAME = "repo.git"


def sync_once(state_dir: Path, url: str, root_fingerprint: str, now: int) -> NetMap:
    """Fetch and verify the repository tip (and, in the same fetch, the devices' own branches);
    return the NetMap in force: the signed state's, with the devices enrolled without an admin and
    the keys members rotated (coord/effective.py), as every node uses them.

    Raises GitError / VerificationError; on any failure nothing is written, so the last
    accepted state (and its member list) stays in force.
    """
    ensure_private_dir(state_dir)
    node = NodeState(state_dir)
    memory = node.load_memory()
    with gitrepo.opened(state_dir / REPO_DIR_NAME, url) as repo:
        tip = gitrepo.fetch(repo, gitrepo.default_branch(repo), endpoints=True)
        gitrepo.check_descends(repo, tip, gitrepo.trusted_tip(repo))
        cached = node.load_netmap()
        if memory is not None and memory.commit == tip and cached is not None:
            if cached.expires <= now:
                raise verify.expired_error(cached.expires)
            node.touch_fetched(now)
            return _in_force(repo, node, cached, now)
        network_id = cached.network.network_id if cached is not None else ""
        record_cache = node.load_record_cache(network_id) if network_id else {}
        snap = gitrepo.GitSnapshot(repo, tip)
        verified = verify.verify_snapshot(snap, root_fingerprint, now, memory, record_cache)
        node.save_memory(verified.memory(tip), now)  # memory first: never accept an older state again
        gitrepo.set_trusted(repo, tip)
        node.save_netmap(verified.netmap)
        files = snap.files()
        used = {f"{files[f'peers/{n}.json']}:{files[f'peers/{n}.json.sig']}" for n in verified.records}
        node.save_record_cache(verified.root.network_id, record_cache, used)
        return _in_force(repo, node, verified.netmap, now)


def _in_force(repo: pygit2.Repository, node: NodeState, base: NetMap, now: int) -> NetMap:
    view = read_endpoints(repo, node, base.network.network_id, base.state_sha256, lambda: base, "", now)
    return apply_view(base, view, now).netmap


def cached_netmap(state_dir: Path, now: int) -> NetMap | None:
    """The last accepted NetMap, in force as the devices' branches said last, if it has not expired
    (lets a relay restart while git is down)."""
    node = NodeState(state_dir)
    nm = node.load_netmap()
    if nm is None or nm.expires <= now:
        return None
    return apply_view(nm, node.load_endpoint_view(nm.network.network_id), now).netmap


def members_of(netmap: NetMap) -> Mapping[VerifyKey, NodePublic]:
    """Who may use the relay: every current member's identity key with its WireGuard key."""
    return {p.identity_key: p.wg_public_key for p in netmap.peers}


def listing_problem(listed: tuple[Relay, ...], name: str, identity: VerifyKey | None) -> str | None:
    """Why members will not use this relay, as the state lists relays (None: it is listed as it runs).

    Members log in only to a relay that introduces itself under the listed name (and, when the
    state gives one, proves the listed identity key); a relay run under another `--name` is
    refused by every client. Say so on the relay too, with the fix.
    """
    mine = [r for r in listed if identity is not None and r.identity_key == identity]
    if any(r.name == name for r in mine):
        return None
    if mine and identity is not None:
        other = mine[0].name
        return (f"relay {name}: the coordination state lists this relay (identity {identity.short()}) as "
                f"{other!r}; members refuse it, since it introduces itself as {name!r}: "
                f"restart it with --name {other}")
    same_name = [r for r in listed if r.name == name]
    if same_name:
        if same_name[0].identity_key is None:
            key = f" --identity-key {identity.text()}" if identity is not None else ""
            return (f"relay {name}: the coordination state lists it without its identity key; members never "
                    f"use such a relay: list it again with meshctl admin relay add {name} HOST:PORT{key}")
        if identity is None:
            return None
        return (f"relay {name}: the coordination state lists relay {name!r} with identity key "
                f"{same_name[0].identity_key.short()}, not this relay's {identity.short()}; members refuse it")
    listed_names = ", ".join(repr(r.name) for r in listed) or "none"
    return (f"relay {name}: the coordination state lists no relay named {name!r} (it lists {listed_names}); "
            f"members will not use it until it is listed: meshctl admin relay add {name} HOST:PORT"
            + (f" --identity-key {identity.text()}" if identity is not None else ""))
