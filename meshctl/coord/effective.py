"""The map a node configures from: the signed state's, plus what the devices' own branches may
add to it (pure).

- Members whose membership expired (`admin approve --expires`) are dropped.
- Enrolled devices (coord/delegation.py) are added as members, with the tags and addresses of
  their enrollment, until an admin's next signing command puts them in the state.
- A member's (or enrolled device's) endpoint record, signed by its identity key, may carry new
  WireGuard and disco keys (`meshctl rotate-keys`): they replace the ones of its peer record, with
  no freshness limit, until a newer record says otherwise. The uniqueness rules of the signed
  state hold for the keys in force: a new key that another device uses, or that a revoked device
  had, is refused and the member keeps its keys.
Nothing here grants addresses, tags or routes beyond what the state or a delegation in it did.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from meshctl.coord.delegation import Enrolled, decide
from meshctl.coord.endpoint_record import EndpointRecord
from meshctl.coord.endpoint_verify import EndpointView
from meshctl.coord.netmap import NetMap, Peer
from meshctl.coord.records import format_time
from meshctl.keys import DiscoPublic, NodePublic


@dataclass(frozen=True, slots=True)
class Effective:
    netmap: NetMap
    rotated: frozenset[str] = frozenset()  # members whose keys come from their endpoint record
    key_refusals: Mapping[str, str] = field(default_factory=dict)  # member -> why its record's keys are not used


def enrolled_peer(e: Enrolled) -> Peer:
    return Peer(name=e.name, identity_key=e.record.identity_key, wg_public_key=e.record.wg_public_key,
                disco_key=e.record.disco_key, addresses=tuple(e.enrollment.addresses), tags=e.tags,
                endpoints=e.record.endpoints, enrolled_with=e.key.id)


def effective_netmap(base: NetMap, enrolled: Mapping[str, Enrolled], key_records: Mapping[str, EndpointRecord],
                     now: int, own_keys: tuple[NodePublic, DiscoPublic] | None = None) -> Effective:
    """`base`: the verified state's map (an effective one stands for its `signed`); `enrolled`: the
    enrollments delegation.decide accepted (for this base); `key_records`: the accepted endpoint
    record of each device; `own_keys`: this node's keys in force (after its own rotation)."""
    base = base.signed or base
    dropped = [(p.name, f"membership expired at {format_time(p.expires)}")
               for p in base.peers if p.expires is not None and p.expires <= now]
    gone = {name for name, _ in dropped}
    peers = {p.name: p for p in base.peers if p.name not in gone}
    for name, e in enrolled.items():
        if name not in peers and name not in gone:
            peers[name] = enrolled_peer(e)
    in_use = {k: p.name for p in peers.values() for k in (p.wg_public_key.raw, p.disco_key.raw)}
    revoked = {k: r.name for r in base.revoked for k in (r.wg_public_key.raw, r.disco_key.raw)}
    rotated: set[str] = set()
    refusals: dict[str, str] = {}
    for name in sorted(peers):
        peer = peers[name]
        if name == base.self_name:
            keys = own_keys
        else:
            rec = key_records.get(name)
            keys = (rec.wg_public_key, rec.disco_key) if rec is not None else None
        if keys is None or (keys[0] == peer.wg_public_key and keys[1] == peer.disco_key):
            continue
        problem = _key_problem(name, peer, keys, in_use, revoked)
        if problem is not None:
            refusals[name] = problem
            continue
        for old in (peer.wg_public_key.raw, peer.disco_key.raw):
            in_use.pop(old, None)
        for new in (keys[0].raw, keys[1].raw):
            in_use[new] = name
        peers[name] = replace(peer, wg_public_key=keys[0], disco_key=keys[1])
        rotated.add(name)
    netmap = base.replace(peers=tuple(peers[n] for n in sorted(peers)), dropped=tuple(dropped),
                          signed=base.signed or base)
    return Effective(netmap, frozenset(rotated), refusals)


def _key_problem(name: str, peer: Peer, keys: tuple[NodePublic, DiscoPublic], in_use: Mapping[bytes, str],
                 revoked: Mapping[bytes, str]) -> str | None:
    for what, new, old in (("WireGuard key", keys[0], peer.wg_public_key), ("disco key", keys[1], peer.disco_key)):
        if new == old:
            continue
        if in_use.get(new.raw, name) != name:
            return f"its record's {what} {new.short()} is {in_use[new.raw]}'s (refused; the signed keys stay)"
        if new.raw in revoked:
            return f"its record's {what} {new.short()} was revoked device {revoked[new.raw]}'s (refused)"
    return None


def apply_view(base: NetMap, view: EndpointView | None, now: int,
               own_keys: tuple[NodePublic, DiscoPublic] | None = None) -> Effective:
    """The map in force from the signed state's and what the devices' branches said (as far as this
    node accepted it): the accepted enrollments are judged again against `base` and `now` (an auth
    key that expired or left the state drops its devices at once)."""
    base = base.signed or base
    enrolled: Mapping[str, Enrolled] = {}
    if view is not None and view.enrollments:
        enrolled = decide(base, {}, view.enrollments, view.used, now).accepted
    return effective_netmap(base, enrolled, view.records if view is not None else {}, now, own_keys)


def next_change(netmap: NetMap, now: int) -> int | None:
    """When the clock alone next changes this map in force: a membership that expires, or the auth key
    of an enrolled device that expires (None: never)."""
    keys = {k.id: k.expires for k in netmap.authkeys}
    times = [p.expires for p in netmap.peers if p.expires is not None]
    times += [keys[p.enrolled_with] for p in netmap.peers if p.enrolled_with in keys]
    future = [t for t in times if t > now]
    return min(future) if future else None
