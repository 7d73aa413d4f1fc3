"""`meshctl join URL --root FP --auth-key KEY`: become a member with no admin step.

The device verifies the mesh as any join does, checks that the auth key is listed in the signed
state and in scope (unexpired, the tags asked for are the key's), picks a free address in the
key's pool, signs its peer record and its enrollment (with the auth key and its identity key:
coord/enrollment.py), judges the result by the rules every node applies (coord/delegation.py,
against every enrollment already on the git host), and only then publishes it on its own branch
`endpoints/<name>` with a first endpoint record. Every node (and relay) accepts it on its next
sync; the next admin signing command makes it an ordinary member. The auth key itself is used
for these signatures and never stored.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from meshctl.coord import addressing, delegation, device_branches, endpoint_publish, enrollment, records
from meshctl.coord import repo as gitrepo
from meshctl.coord.delegation import Candidate, Enrolled
from meshctl.coord.endpoint_record import branch_of
from meshctl.coord.endpoint_sync import enrollment_files
from meshctl.coord.join import (
    Fetched,
    check_endpoints,
    check_name,
    chosen_name,
    fetch_mesh,
    kept_credential,
    make_request,
)
from meshctl.coord.netmap import NetMap
from meshctl.coord.node_state import NodeConfig
from meshctl.coord.records import AuthKey
from meshctl.errors import GitError, MeshctlError, ParseError, UsageError
from meshctl.identity import DeviceKeys, load_or_create_device_keys
from meshctl.keys import SigningKey


@dataclass(frozen=True, slots=True)
class EnrollResult:
    name: str
    mesh: str
    key_id: str
    addresses: tuple[str, ...]
    tags: tuple[str, ...]
    fingerprint: str
    branch: str
    already_member: bool = False
    again: bool = False  # this device's enrollment was published before: the same one went out again
    ssh_key: str | None = None
    ssh_agent: str | None = None


def scope_problem(key: AuthKey | None, key_id: str, tags: Sequence[str] | None, now: int) -> str | None:
    """Why a device cannot enroll with this key at all (pure): not listed, expired, another tag."""
    if key is None:
        return (f"auth key {key_id} is not in the mesh's signed state: made up, revoked, or the admin's commit "
                "is not pushed yet")
    if key.expires <= now:
        return f"auth key {key_id} expired at {records.format_time(key.expires)}"
    outside = [t for t in tags or () if t not in key.tags]
    if outside:
        return f"--tag {outside[0]}: outside auth key {key_id}'s tags ({', '.join(key.tags) or 'none'})"
    return None


def enroll(state_dir: Path, repo_dir: Path, keys_dir: Path, url: str, name: str | None, pinned: str | None,
           confirm_root: Callable[[str], bool], auth_key: SigningKey, now: int, *, tags: Sequence[str] | None = None,
           default_name: str = "device", ssh_key: str | None = None,
           candidates: tuple[str, ...] = (), endpoints: tuple[str, ...] = ()) -> EnrollResult:
    """Enroll this device (see the module docstring). `candidates`: its first endpoint record's;
    `endpoints`: static HOST:PORT endpoints for its peer record (`--endpoint`)."""
    check_name(name)
    check_endpoints(endpoints)
    got = fetch_mesh(state_dir, repo_dir, url, pinned, confirm_root, now, ssh_key, endpoints=True)
    verified, netmap = got.verified, got.verified.netmap
    key_id = auth_key.public().key_id()
    key = next((k for k in netmap.authkeys if k.id == key_id), None)
    problem = scope_problem(key, key_id, tags, now)
    if problem is not None or key is None:
        raise UsageError(problem or "", "nothing was published; ask an admin for a valid key "
                                        "(`meshctl admin authkey create`)")
    keys = load_or_create_device_keys(keys_dir)
    mine = keys.identity.public()
    previous = got.previous
    was_member = previous is not None and verified.records.get(previous.name) is not None and \
        verified.records[previous.name].identity_key == mine
    name, _withdraw = chosen_name(name, previous, got.pinned, default_name, False, was_member)
    check_name(name)
    ssh_key, agent = kept_credential(got.ssh_key, got.creds.accepted)
    base = EnrollResult(name, verified.root.name, key_id, (), (), mine.key_id(), branch_of(name), ssh_key=ssh_key,
                        ssh_agent=agent)
    if name in verified.records:
        if verified.records[name].identity_key != mine:
            raise UsageError(f"peers/{name}.json: the name {name!r} is taken by another device",
                             "choose another --name")
        _remember(got, name, now)
        return replace(base, already_member=True)
    members = set(verified.state.peers)
    tips = {n: c for n, c in gitrepo.endpoint_tips(got.repo).items() if n != name}
    others, _unusable = device_branches.candidates_in(got.repo, tips, members)
    accepted = delegation.decide(netmap, others, {}, {}, now).accepted
    used_by = sorted(n for n, e in accepted.items() if e.key.id == key.id)
    if not key.reusable and used_by:
        # Whichever would win by the fixed order, nodes that saw the first one keep it: never race it.
        raise UsageError(f"single-use auth key {key.id} was used by {used_by[0]} already",
                         "nothing was published; ask an admin for another key (or a --reusable one)")
    own = got.node.load_own_enrollment(name)
    ours = own if own is not None and _still_good(own, netmap, key, accepted, endpoints, now) else None
    if ours is None:
        ours = _new_enrollment(keys, auth_key, key, netmap, name, accepted.values(), tags, endpoints, now)
    verdict = delegation.decide(netmap, {**others, name: ours}, {}, {}, now)
    if name not in verdict.accepted:
        raise UsageError(f"endpoints/{name}: nodes would refuse this enrollment: {verdict.refused.get(name)}",
                         "nothing was published")
    e = verdict.accepted[name]
    _publish(got, keys, name, ours, candidates, now)
    _remember(got, name, now)
    got.node.save_own_enrollment(ours)
    return replace(base, addresses=tuple(map(str, e.enrollment.addresses)), tags=e.tags, again=ours is own)


def _still_good(own: Candidate, netmap: NetMap, key: AuthKey, others: Mapping[str, Enrolled],
                endpoints: tuple[str, ...], now: int) -> bool:
    """This device's earlier enrollment, with the same key and endpoints, would still be accepted:
    publish it again (its address does not change on a re-run)."""
    try:
        if records.parse_peer(own.peer, "peer.json").endpoints != endpoints:
            return False
    except ParseError:
        return False
    verdict = delegation.decide(netmap, {**{n: e.candidate for n, e in others.items()}, own.name: own}, {}, {}, now)
    e = verdict.accepted.get(own.name)
    return e is not None and e.key.id == key.id


def _new_enrollment(keys: DeviceKeys, auth_key: SigningKey, key: AuthKey, netmap: NetMap, name: str,
                    others: Iterable[Enrolled], tags: Sequence[str] | None, endpoints: tuple[str, ...],
                    now: int) -> Candidate:
    v4 = delegation.choose_address(netmap, key, others, keys.identity.public(), now)
    if not isinstance(v4, ipaddress.IPv4Address):
        raise UsageError(f"auth key {key.id}'s pool {key.pool} has no free address left",
                         "ask an admin for a key with a larger --pool")
    network_id = netmap.network.network_id
    peer, peer_sig = make_request(keys, network_id, name, endpoints, now)
    doc = enrollment.Enrollment(network_id, key.id, name, hashlib.sha256(peer).hexdigest(),
                                (v4, addressing.mesh_ipv6_for(netmap.network.ipv6_prefix, v4)), now,
                                tuple(tags) if tags is not None else None)
    data, sig = enrollment.sign_enrollment(doc, auth_key, keys.identity)
    return Candidate(name, peer, peer_sig, data, sig)


def _publish(got: Fetched, keys: DeviceKeys, name: str, ours: Candidate, candidates: tuple[str, ...],
             now: int) -> None:
    pub = got.node.load_published()
    record, files = endpoint_publish.build_record(
        keys.identity, got.verified.root.network_id, name, candidates, keys.disco.public(), keys.wireguard.public(),
        False, now, time.time_ns() // 1_000_000, pub.counter)
    try:
        gitrepo.publish_branch(got.repo, branch_of(name), {**files, **enrollment_files(ours)},
                               f"enrollment of {name}", got.creds)
    except GitError as exc:
        hint = ("the git host must let this device push branches endpoints/*: a deploy key with write access"
                if gitrepo.refused_by_host(exc) else "check that this machine reaches the git host")
        raise MeshctlError(f"{branch_of(name)}: not published: {exc.message}", hint) from None
    got.node.save_published(endpoint_publish.after_push(pub, record, now))


def _remember(got: Fetched, name: str, now: int) -> None:
    ssh_key, _agent = kept_credential(got.ssh_key, got.creds.accepted)
    network_id = got.verified.root.network_id
    got.node.save_config(NodeConfig(name, got.url, got.branch, got.pinned, network_id, ssh_key))
    got.node.save_memory(got.verified.memory(got.tip), now)
    gitrepo.set_trusted(got.repo, got.tip)
