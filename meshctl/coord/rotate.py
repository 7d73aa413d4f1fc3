"""`meshctl rotate-keys`: new WireGuard and disco keys, with no admin step (shell).

The device announces its new keys in its own endpoint record (ROUND2.md 1, "Keys in the record"),
signed by its identity key, which does not change; nodes and relays use them in place of the
keys of its peer record (coord/effective.py). Addresses, tags and the signed state stay as they
are. The order matters for the tunnels:

1. The new keys are made and kept beside the keys in force (`*.next`: an interrupted rotation
   resumes with the same keys, whatever the git host took).
2. The record announcing them is published (one force-pushed commit on `endpoints/<name>`, with
   a higher counter; an enrolled device's enrollment rides along as always).
3. Only once the host took it do the new keys replace the old ones (the old private keys are
   gone), and the interface switches: at once (the agent, or `meshctl rotate-keys` running a
   pass itself).

WireGuard knows one key per peer, so a tunnel to a peer is down from this device's switch until
that peer's next sync, which brings the record; a peer that syncs between 2 and 3 waits for the
switch, which follows at once. A failed push changes nothing in force.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from meshctl.coord import endpoint_publish
from meshctl.coord import repo as gitrepo
from meshctl.coord.endpoint_record import branch_of
from meshctl.coord.endpoint_sync import enrollment_files
from meshctl.coord.node_state import NodeState
from meshctl.errors import GitError, MeshctlError, UsageError
from meshctl.identity import commit_next_keys, keys_made_at, load_device_keys, next_keys
from meshctl.keys import DiscoPublic, NodePublic

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Rotated:
    old_wireguard: NodePublic
    new_wireguard: NodePublic
    new_disco: DiscoPublic
    counter: int


def rotation_due(every: int | None, made_at: int | None, now: int) -> bool:
    """Automatic rotation (pure): `every` seconds after the keys in force were made."""
    return every is not None and made_at is not None and now - made_at >= every


def due(state_dir: Path, keys_dir: Path, now: int) -> bool:
    return rotation_due(NodeState(state_dir).load_rotate_every(), keys_made_at(keys_dir), now)


def rotate_keys(state_dir: Path, repo_dir: Path, keys_dir: Path, now: int) -> Rotated:
    """Steps 1 to 3 of the module docstring; the caller then switches the interface (a pass)."""
    node = NodeState(state_dir)
    cfg = node.load_config()
    base = node.load_netmap()
    own = node.load_own_enrollment(cfg.name)
    if (base is None or base.peer(cfg.name) is None) and own is None:
        raise UsageError(f"{cfg.name} is not a member of the mesh: it has no keys in use to rotate",
                         "rotate after joining (and `meshctl sync`)")
    keys = load_device_keys(keys_dir)
    wireguard, disco = next_keys(keys_dir)
    pub = node.load_published()
    record, files = endpoint_publish.build_record(
        keys.identity, cfg.network_id, cfg.name, pub.candidates, disco.public(), wireguard.public(), pub.agent, now,
        time.time_ns() // 1_000_000, pub.counter)
    extra = enrollment_files(own) if own is not None else {}
    try:
        with gitrepo.opened(repo_dir, cfg.repo_url) as repo:
            gitrepo.publish_branch(repo, branch_of(cfg.name), {**files, **extra}, f"keys of {cfg.name} rotated",
                                   gitrepo.Credentials(cfg.ssh_key))
    except GitError as exc:
        node.save_published(endpoint_publish.after_failure(pub, record, exc.message, now))
        hint = ("this device needs push rights to endpoints/* to announce its keys"
                if gitrepo.refused_by_host(exc) else "run it again when the git host answers (the same new keys)")
        raise MeshctlError(f"keys not rotated: {branch_of(cfg.name)} not published: {exc.message}", hint) from None
    node.save_published(endpoint_publish.after_push(pub, record, now))
    commit_next_keys(keys_dir)
    log.info("keys rotated: WireGuard %s -> %s, record counter %d", keys.wireguard.public().short(),
             wireguard.public().short(), record.counter)
    return Rotated(keys.wireguard.public(), wireguard.public(), disco.public(), record.counter)
