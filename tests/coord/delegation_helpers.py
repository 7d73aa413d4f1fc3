"""Meshes, auth keys and enrollments built in memory for the delegation tests (no git, no disk)."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from lab.git_host import plant_branch as plant_branch  # re-exported: the coord tests plant branches too
from meshctl.coord import addressing, records, signing
from meshctl.coord.delegation import Candidate
from meshctl.coord.enrollment import Enrollment, sign_enrollment
from meshctl.coord.netmap import NetMap, NetworkSettings, Peer, Prefix
from meshctl.coord.records import AuthKey, Revoked
from meshctl.identity import DeviceKeys
from meshctl.keys import DiscoPrivate, NodePrivate, SigningKey

NETWORK = "ab" * 16
OTHER_NETWORK = "cd" * 16
NOW = 1_733_000_000
DAY = 86400
MESH_V4 = ipaddress.IPv4Network("100.64.0.0/10")
MESH_V6 = ipaddress.IPv6Network("fd7a:115c:a1e0::/48")


def device() -> DeviceKeys:
    return DeviceKeys(SigningKey.generate(), NodePrivate.generate(), DiscoPrivate.generate())


@dataclass(frozen=True)
class Key:
    secret: SigningKey
    entry: AuthKey

    @property
    def id(self) -> str:
        return self.entry.id


def authkey(tags: Sequence[str] = ("tag:server",), pool: str = "100.64.1.0/24", expires: int = NOW + 30 * DAY,
            reusable: bool = False) -> Key:
    secret = SigningKey.generate()
    public = secret.public()
    return Key(secret, AuthKey(public.key_id(), public, tuple(tags), ipaddress.IPv4Network(pool), expires, reusable))


def v6_of(v4: str) -> ipaddress.IPv6Address:
    return addressing.mesh_ipv6_for(MESH_V6, ipaddress.IPv4Address(v4))


def member(name: str, keys: DeviceKeys, v4: str, tags: Sequence[str] = (), expires: int | None = None) -> Peer:
    return Peer(name, keys.identity.public(), keys.wireguard.public(), keys.disco.public(),
                (ipaddress.IPv4Address(v4), v6_of(v4)), tuple(tags), expires=expires)


def netmap(members: Sequence[Peer] = (), keys: Sequence[Key] = (), revoked: Sequence[Revoked] = (),
           self_name: str | None = None) -> NetMap:
    return NetMap(NetworkSettings(NETWORK, "acme", MESH_V4, MESH_V6, "acme.mesh"), 3, NOW + 30 * DAY, "0" * 64,
                  tuple(sorted(members, key=lambda p: p.name)), authkeys=tuple(k.entry for k in keys),
                  revoked=tuple(revoked), self_name=self_name)


def revoked(name: str, keys: DeviceKeys, v4: str, at: int = NOW - DAY) -> Revoked:
    return Revoked(name, keys.identity.public(), keys.wireguard.public(), keys.disco.public(),
                   (ipaddress.IPv4Address(v4), v6_of(v4)), at)


def peer_files(keys: DeviceKeys, name: str, network: str = NETWORK,
               advertise_routes: Sequence[Prefix] = ()) -> tuple[bytes, bytes]:
    rec = records.PeerRecord(network, name, keys.identity.public(), keys.wireguard.public(), keys.disco.public(),
                             (), NOW - 60, tuple(advertise_routes), bool(advertise_routes))
    data = records.marshal_peer(rec)
    return data, signing.marshal_signatures([signing.sign(keys.identity, "peer", network, data)])


def enroll(key: Key, keys: DeviceKeys, name: str, v4: str = "100.64.1.5", *, created: int = NOW - 60,
           tags: Sequence[str] | None = None, network: str = NETWORK, v6: str | None = None,
           key_id: str | None = None, signers: Sequence[SigningKey] | None = None,
           advertise_routes: Sequence[Prefix] = ()) -> Candidate:
    """A device's enrollment files, as `join --auth-key` publishes them (each part can be bent)."""
    peer, peer_sig = peer_files(keys, name, network, advertise_routes)
    doc = Enrollment(network, key_id or key.id, name, hashlib.sha256(peer).hexdigest(),
                     (ipaddress.IPv4Address(v4), ipaddress.IPv6Address(v6) if v6 else v6_of(v4)), created,
                     tuple(tags) if tags is not None else None)
    data, sig = sign_enrollment(doc, key.secret, keys.identity)
    if signers is not None:
        sig = signing.marshal_signatures([signing.sign(k, "enrollment", network, data) for k in signers])
    return Candidate(name, peer, peer_sig, data, sig)


def branch_files(c: Candidate, keys: DeviceKeys, network: str = NETWORK) -> dict[str, bytes]:
    """Everything `join --auth-key` puts on its branch: the enrollment and a signed endpoint record."""
    from meshctl.coord.endpoint_publish import build_record

    _rec, files = build_record(keys.identity, network, c.name, (), keys.disco.public(), keys.wireguard.public(),
                               False, NOW, NOW * 1000, None)
    return {**files, "peer.json": c.peer, "peer.json.sig": c.peer_sig, "enrollment.json": c.enrollment,
            "enrollment.json.sig": c.enrollment_sig}
