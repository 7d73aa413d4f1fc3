"""One coordination pass for a node: fetch, verify, remember (the shell around verify)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from meshctl.coord import repo as gitrepo
from meshctl.coord.node_state import NodeConfig, NodeState
from meshctl.coord.trust import TrustMemory
from meshctl.errors import MeshctlError

if TYPE_CHECKING:
    import pygit2

    from meshctl.coord.endpoint_verify import EndpointView
    from meshctl.coord.netmap import NetMap


@dataclass(frozen=True, slots=True)
class UpdateResult:
    memory: TrustMemory  # the state in force after this pass
    changed: bool  # a new state was accepted in this pass
    previous_serial: int | None
    netmap: NetMap | None  # the map just verified; None when the tip was already accepted
    endpoints: EndpointView | None = None  # the devices' own branches, when asked for


def fetch_and_verify(state_dir: Path, repo_dir: Path, now: int, *, force: bool = False,
                     cfg: NodeConfig | None = None, endpoints: bool = False) -> UpdateResult:
    """Fetch the coordination repo and accept its tip if it verifies.

    When the tip is the commit accepted last, nothing is parsed or rebuilt: the trust memory
    alone says the state still holds (and whether it has expired). `force` re-verifies anyway,
    e.g. when the cached map turns out damaged. On any failure nothing is written: the last
    accepted state stays in force. `cfg`: node.json, when the caller has read it already. With
    `endpoints`, the same fetch brings the devices' own branches, judged against the state in
    force (coord/endpoint_sync.py).
    """
    node = NodeState(state_dir)
    cfg = cfg or node.load_config()
    memory = node.load_memory()
    with gitrepo.opened(repo_dir, cfg.repo_url) as repo:
        tip = gitrepo.fetch(repo, cfg.branch, gitrepo.Credentials(cfg.ssh_key), endpoints=endpoints)
        trusted = gitrepo.trusted_tip(repo)
        gitrepo.check_descends(repo, tip, trusted)
        if (not force and memory is not None and memory.commit == tip and memory.expires is not None
                and node.has_netmap()):
            # Nothing new (git ids match): no re-verification, but expiry still counts.
            if memory.expires <= now:
                from meshctl.coord.verify import expired_error

                raise expired_error(memory.expires)
            node.save_memory(memory, now)  # status shows when the repository was last reached
            view = _endpoints(repo, node, cfg, memory.state_sha256, node.load_netmap, now) if endpoints else None
            return UpdateResult(memory, False, memory.serial, None, view)
        from meshctl.coord import verify  # the verifier and its parsers: only for a new tip

        record_cache = node.load_record_cache(cfg.network_id)
        snap = gitrepo.GitSnapshot(repo, tip)
        verified = verify.verify_snapshot(snap, cfg.root_fingerprint, now, memory, record_cache)
        netmap = verified.netmap.with_self(cfg.name)
        changed = memory is None or memory.state_sha256 != verified.state_sha256
        accepted = verified.memory(tip)
        # Memory first: once it is on disk, an older state can never be accepted again.
        node.save_memory(accepted, now)
        gitrepo.set_trusted(repo, tip)
        node.save_netmap(netmap)
        used = {f"{snap.files()[f'peers/{n}.json']}:{snap.files()[f'peers/{n}.json.sig']}"
                for n in verified.records}
        node.save_record_cache(cfg.network_id, record_cache, used)
        view = _endpoints(repo, node, cfg, accepted.state_sha256, lambda: netmap, now) if endpoints else None
        return UpdateResult(accepted, changed, memory.serial if memory else None, netmap, view)


def _endpoints(repo: pygit2.Repository, node: NodeState, cfg: NodeConfig, state_sha256: str,
               load_netmap: Callable[[], NetMap | None], now: int) -> EndpointView:
    from meshctl.coord.endpoint_sync import read_endpoints

    own = node.load_own_enrollment(cfg.name)
    if own is not None:
        from meshctl.coord.records import parse_peer

        base = load_netmap()
        member = base.peer(cfg.name) if base is not None else None
        try:
            mine = parse_peer(own.peer, "own-enrollment.json: peer.json").identity_key
        except MeshctlError:
            mine = None  # the rules refuse it with the reason; the device sees it in status
        if member is not None and member.identity_key == mine:
            node.save_own_enrollment(None)  # an admin absorbed it: the signed state speaks for this device now
            own = None
    return read_endpoints(repo, node, cfg.network_id, state_sha256, load_netmap, cfg.name, now, own)
