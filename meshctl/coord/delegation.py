"""Which enrolled devices a node accepts as members (pure): the rules of a scoped delegation.

This is TUF's delegation applied to membership. The admins (the top-level role) sign, in
state.json, an auth key's public half together with its scope (records.AuthKey): the tags its
devices get, the address pool they take addresses from, an expiry, and whether it may add one
device or many. Whoever holds the private half may then add devices within that scope, and only
within it, with no admin step; the git host, which holds no key, can add nobody.

An enrollment (coord/enrollment.py), found on a device's own branch, is accepted when
- its peer record is self-signed, for this mesh, under the branch's name;
- the enrollment names that record (record_sha256), this mesh and the branch's name, and is
  signed by both the auth key it names and the record's identity key;
- that auth key is listed in the verified state now (a removed key, "revoked", adds nobody,
  and devices it added that no admin has absorbed yet are dropped) and has not expired;
- it asks for no tag outside the key's, and for an IPv4 address inside the key's pool (and the
  mesh prefix, not its network, broadcast or MagicDNS address) with the IPv6 address derived
  from it, as `admin approve` assigns them;
- its name, keys and addresses collide with no member, its keys with no revoked device, and its
  addresses with no address resting after a revocation.
Between enrollments that collide with each other (one address, one key, a single-use key used
twice), the winner is fixed: one this node accepted before, then the earliest `created`, then
the lowest identity key bytes. A node remembers what it accepted (per name, and per single-use
key the name that used it), so the git host can neither swap an accepted enrollment for another
(a second device under the name, another use of the key) nor roll one back to an older one of
the same device; withholding a branch only stops nodes that never saw it. The next admin
signing command absorbs accepted enrollments into state.json as ordinary members
(coord/changes.py), after which only the signed state speaks for them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from meshctl.coord import addressing, enrollment, records, signing
from meshctl.coord.enrollment import Enrollment
from meshctl.coord.netmap import NetMap
from meshctl.coord.records import AuthKey, PeerRecord, RecordError
from meshctl.errors import ParseError
from meshctl.keys import VerifyKey

MAX_FUTURE_S: Final = 5 * 60  # an enrollment "created" further ahead of this node's clock is refused


@dataclass(frozen=True, slots=True)
class Candidate:
    """The enrollment files of one device branch, as fetched: nothing in them is trusted yet."""

    name: str
    peer: bytes
    peer_sig: bytes
    enrollment: bytes
    enrollment_sig: bytes

    @property
    def sha256(self) -> str:
        """Names this enrollment (one device may publish a newer one, e.g. for another address)."""
        return hashlib.sha256(self.enrollment).hexdigest()


@dataclass(frozen=True, slots=True)
class Enrolled:
    """An enrollment that passed every rule that concerns it alone."""

    candidate: Candidate
    record: PeerRecord
    enrollment: Enrollment
    key: AuthKey
    tags: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.candidate.name

    def raw_keys(self) -> tuple[tuple[str, bytes], ...]:
        return (("identity key", self.record.identity_key.raw), ("WireGuard key", self.record.wg_public_key.raw),
                ("disco key", self.record.disco_key.raw))


@dataclass(frozen=True, slots=True)
class Verdict:
    accepted: dict[str, Enrolled] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # name -> why, one line
    used: dict[str, str] = field(default_factory=dict)  # single-use key id -> the name that used it


class AlreadyMember(Exception):
    """The enrollment's device is a member of the signed state already (absorbed): nothing to judge."""


@dataclass(frozen=True, slots=True)
class _Scope:
    """What an enrollment must not collide with, from the verified state."""

    netmap: NetMap
    keys: dict[tuple[str, bytes], str]  # (what, raw key) -> the member using it
    addresses: dict[addressing.IPAddress, str]
    revoked_keys: dict[bytes, str]
    resting: dict[addressing.IPAddress, records.Revoked]


def _scope(netmap: NetMap, now: int, extra_keys: Mapping[str, Iterable[tuple[str, bytes]]]) -> _Scope:
    keys: dict[tuple[str, bytes], str] = {}
    addresses: dict[addressing.IPAddress, str] = {}
    for p in netmap.peers:
        for item in (("identity key", p.identity_key.raw), ("WireGuard key", p.wg_public_key.raw),
                     ("disco key", p.disco_key.raw), *extra_keys.get(p.name, ())):
            keys[item] = p.name
        for a in p.addresses:
            addresses[a] = p.name
    revoked = {k: r.name for r in netmap.revoked for k in (r.identity_key.raw, r.wg_public_key.raw, r.disco_key.raw)}
    return _Scope(netmap, keys, addresses, revoked, addressing.quarantined(netmap.revoked, now))


def identity_signature(e: Enrolled) -> signing.Signature:
    """The one entry of the branch's peer.json.sig that is the record's own signature (what goes
    into peers/NAME.json.sig when an admin absorbs the device: no other entry rides along)."""
    sigs = signing.parse_signatures(e.candidate.peer_sig, name=enrollment.PEER_SIG_FILE)
    key = e.record.identity_key
    message = signing.signed_message("peer", e.record.network_id, e.candidate.peer)
    return next(s for s in sigs if s.keyid == key.key_id() and key.verify(s.sig, message))


def _signed_by(sig_data: bytes, key: VerifyKey, file_type: str, network_id: str, data: bytes, what: str) -> bool:
    try:
        sigs = signing.parse_signatures(sig_data, name=what)
    except ParseError:
        return False
    return bool(signing.valid_signers(sigs, [key], file_type, network_id, data))


def check(c: Candidate, scope: _Scope, now: int) -> Enrolled | str:
    """The enrollment on branch `endpoints/<c.name>` by the rules that concern it alone: the
    Enrolled, or why not (one line). Raises AlreadyMember for a device the state lists already
    (the scope's map is the signed state's, never a map in force)."""
    netmap = scope.netmap
    network_id = netmap.network.network_id
    try:
        record = records.parse_peer(c.peer, enrollment.PEER_FILE)
        enr = enrollment.parse_enrollment(c.enrollment)
    except (ParseError, RecordError) as exc:
        return str(exc)
    if record.name != c.name or enr.name != c.name:
        return f"names {record.name if record.name != c.name else enr.name!r}, but it is on endpoints/{c.name}"
    if record.network_id != network_id or enr.network_id != network_id:
        return "made for another mesh (network_id)"
    member = netmap.peer(c.name)
    if member is not None and member.identity_key == record.identity_key:
        raise AlreadyMember(c.name)
    if not _signed_by(c.peer_sig, record.identity_key, "peer", network_id, c.peer, enrollment.PEER_SIG_FILE):
        return f"{enrollment.PEER_FILE} is not signed by its identity key"
    if enr.record_sha256 != hashlib.sha256(c.peer).hexdigest():
        return f"{enrollment.ENROLLMENT_FILE} is for another peer record (record_sha256)"
    key = next((k for k in netmap.authkeys if k.id == enr.authkey), None)
    if key is None:
        return f"auth key {enr.authkey} is not in the signed state (made up, or revoked)"
    for signer, who in ((key.public_key, f"auth key {key.id}"), (record.identity_key, "its identity key")):
        if not _signed_by(c.enrollment_sig, signer, enrollment.FILE_TYPE, network_id, c.enrollment,
                          enrollment.ENROLLMENT_SIG_FILE):
            return f"{enrollment.ENROLLMENT_FILE} is not signed by {who}"
    return _in_scope(c, record, enr, key, scope, now)


def _in_scope(c: Candidate, record: PeerRecord, enr: Enrollment, key: AuthKey, scope: _Scope,
              now: int) -> Enrolled | str:
    netmap = scope.netmap
    if key.expires <= now:
        return f"auth key {key.id} expired at {records.format_time(key.expires)}"
    if enr.created > now + MAX_FUTURE_S:
        return f"created {records.format_time(enr.created)}, in the future"
    tags = key.tags if enr.tags is None else enr.tags
    outside = [t for t in tags if t not in key.tags]
    if outside:
        return f"asks for {outside[0]}, outside auth key {key.id}'s tags ({', '.join(key.tags) or 'none'})"
    v4, v6 = enr.addresses
    if v4 not in key.pool:
        return f"address {v4} is outside auth key {key.id}'s pool {key.pool}"
    unusable = addressing.unusable_reason(netmap.network.ipv4_cidr, v4)
    if unusable is not None:
        return f"address {unusable}"
    expected_v6 = addressing.mesh_ipv6_for(netmap.network.ipv6_prefix, v4)
    if v6 != expected_v6:
        return f"address {v6} is not the IPv6 address of {v4} ({expected_v6})"
    member = netmap.peer(c.name)
    if member is not None:
        return f"the name {c.name!r} is member {member.identity_key.short()}'s"
    for what, raw in (("identity key", record.identity_key.raw), ("WireGuard key", record.wg_public_key.raw),
                      ("disco key", record.disco_key.raw)):
        if (what, raw) in scope.keys:
            return f"its {what} is member {scope.keys[(what, raw)]}'s"
        if raw in scope.revoked_keys:
            return f"its {what} is revoked device {scope.revoked_keys[raw]}'s"
    for a in (v4, v6):
        if a in scope.addresses:
            return f"address {a} is member {scope.addresses[a]}'s"
        if a in scope.resting:
            held = scope.resting[a]
            return (f"address {a} rests until {records.format_time(held.at + addressing.QUARANTINE_S)} "
                    f"(revoked device {held.name})")
    return Enrolled(c, record, enr, key, tags)


def decide(netmap: NetMap, candidates: Mapping[str, Candidate], remembered: Mapping[str, Candidate],
           used: Mapping[str, str], now: int,
           extra_keys: Mapping[str, Iterable[tuple[str, bytes]]] | None = None) -> Verdict:
    """The enrolled devices this node accepts now.

    `candidates`: the enrollments the device branches hold now (name -> files); `remembered`:
    the ones this node accepted before (kept, so a withheld branch drops nobody and a replaced
    one swaps nobody); `used`: single-use key id -> the name that used it; `extra_keys`: member
    keys besides their records' (a rotation through an endpoint record)."""
    netmap = netmap.signed or netmap  # judged against the signed state, never a map in force
    scope = _scope(netmap, now, extra_keys or {})
    refused: dict[str, str] = {}
    chosen: dict[str, tuple[Enrolled, bool]] = {}  # name -> (enrollment, accepted before)
    for name in sorted(set(candidates) | set(remembered)):
        try:
            pick = _choose(name, candidates.get(name), remembered.get(name), scope, now, refused)
        except AlreadyMember:
            refused.pop(name, None)
            continue
        if pick is not None:
            chosen[name] = pick
    order = sorted(chosen.values(), key=lambda p: (not p[1], p[0].enrollment.created, p[0].record.identity_key.raw,
                                                   p[0].name))
    accepted: dict[str, Enrolled] = {}
    taken: dict[object, str] = {}
    listed = {k.id for k in netmap.authkeys}
    new_used = {key_id: name for key_id, name in used.items() if key_id in listed}
    for e, _before in order:
        clash = _clash(e, taken, new_used)
        if clash is not None:
            refused[e.name] = clash
            continue
        accepted[e.name] = e
        for item in e.raw_keys():
            taken[item] = e.name
        for a in e.enrollment.addresses:
            taken[a] = e.name
        if not e.key.reusable:
            new_used[e.key.id] = e.name
    return Verdict(accepted, refused, new_used)


def _choose(name: str, fresh: Candidate | None, before: Candidate | None, scope: _Scope, now: int,
            refused: dict[str, str]) -> tuple[Enrolled, bool] | None:
    """Of the branch's enrollment and the one accepted before, the one that stands (if any)."""
    old = check(before, scope, now) if before is not None else None
    if fresh is None or (before is not None and fresh.sha256 == before.sha256):
        if isinstance(old, str):
            refused[name] = old
        return (old, True) if isinstance(old, Enrolled) else None
    new = check(fresh, scope, now)
    if isinstance(new, str):
        refused[name] = new
        return (old, True) if isinstance(old, Enrolled) else None
    if not isinstance(old, Enrolled):
        return new, False
    if new.record.identity_key != old.record.identity_key:
        refused[name] = (f"another device's enrollment (key {new.record.identity_key.key_id()}) for the name "
                         f"accepted before with key {old.record.identity_key.key_id()} (refused)")
        return old, True
    if new.enrollment.created <= old.enrollment.created:
        refused[name] = (f"an enrollment created {records.format_time(new.enrollment.created)}, not after the one "
                         f"accepted before ({records.format_time(old.enrollment.created)}): replay refused")
        return old, True
    return new, False  # the same device enrolled again (another address, a newer key): it replaces the old one


def _clash(e: Enrolled, taken: Mapping[object, str], used: Mapping[str, str]) -> str | None:
    """Why `e` loses to an enrollment accepted before it in the fixed order, or None."""
    if not e.key.reusable:
        owner = used.get(e.key.id)
        if owner is not None and owner != e.name:
            return f"single-use auth key {e.key.id} was used by {owner} (refused)"
    for item in e.raw_keys():
        if item in taken:
            return f"its {item[0]} is also {taken[item]}'s, enrolled first"
    for a in e.enrollment.addresses:
        if a in taken:
            return f"address {a} is also {taken[a]}'s, enrolled first"
    return None


def choose_address(netmap: NetMap, key: AuthKey, others: Iterable[Enrolled], identity: VerifyKey,
                   now: int) -> addressing.IPAddress | None:
    """The IPv4 address an enrolling device asks for: free in the key's pool (no member's, no other
    accepted enrollment's, none resting after a revocation), looked for from a place derived from
    its identity key, so that devices enrolling at once rarely ask for the same one. None: the
    pool is full."""
    taken: set[addressing.IPAddress] = {a for p in netmap.peers for a in p.addresses}
    taken |= {a for e in others for a in e.enrollment.addresses}
    taken |= set(addressing.quarantined(netmap.revoked, now))
    start = int.from_bytes(hashlib.sha256(identity.raw).digest()[:8], "big") % key.pool.num_addresses
    return addressing.free_ipv4(netmap.network.ipv4_cidr, taken, key.pool, start)
