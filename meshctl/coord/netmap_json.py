"""NetMap <-> JSON, for the local cache of the last accepted map (pure)."""

from __future__ import annotations

import ipaddress
from binascii import a2b_base64 as b64decode  # base64.b64decode adds a Python layer: 30,000 calls
from typing import Any

from meshctl.coord.netmap import IPAddress, NetMap, NetworkSettings, Peer, Relay
from meshctl.coord.records import AuthKey, Revoked
from meshctl.keys import DiscoPublic, NodePublic, VerifyKey


def peer_to_json(p: Peer) -> list[Any]:
    # Compact on purpose: a no-op sync at 10,000 peers reads this back and must stay fast.
    out: list[Any] = [p.name, p.identity_key.b64(), p.wg_public_key.b64(), p.disco_key.b64(),
                      [[a.version, int(a)] for a in p.addresses], list(p.tags), p.owner, list(p.endpoints)]
    # Optional tail, absent for nearly every member: [expires] or [expires, routes, exit_node].
    if p.approved_routes or p.exit_node:
        out += [p.expires, [str(r) for r in p.approved_routes], p.exit_node]
    elif p.expires is not None:
        out.append(p.expires)
    return out


def _address(version: int, value: int) -> IPAddress:
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


def peer_from_json(v: list[Any]) -> Peer:
    return Peer(
        name=v[0],
        identity_key=VerifyKey(b64decode(v[1])),
        wg_public_key=NodePublic(b64decode(v[2])),
        disco_key=DiscoPublic(b64decode(v[3])),
        addresses=tuple([_address(ver, val) for ver, val in v[4]]),  # a list: no generator per peer
        tags=tuple(v[5]),
        owner=v[6],
        endpoints=tuple(v[7]),
        expires=int(v[8]) if len(v) > 8 and v[8] is not None else None,
        approved_routes=tuple(ipaddress.ip_network(r) for r in v[9]) if len(v) > 9 else (),
        exit_node=bool(v[10]) if len(v) > 10 else False,
    )


def _authkey_to_json(k: AuthKey) -> list[Any]:
    return [k.id, k.public_key.b64(), list(k.tags), str(k.pool), k.expires, k.reusable]


def _authkey_from_json(v: list[Any]) -> AuthKey:
    return AuthKey(str(v[0]), VerifyKey(b64decode(v[1])), tuple(v[2]), ipaddress.IPv4Network(v[3]), int(v[4]),
                   bool(v[5]))


def _revoked_to_json(r: Revoked) -> list[Any]:
    return [r.name, r.identity_key.b64(), r.wg_public_key.b64(), r.disco_key.b64(),
            [[a.version, int(a)] for a in r.addresses], r.at]


def _revoked_from_json(v: list[Any]) -> Revoked:
    return Revoked(str(v[0]), VerifyKey(b64decode(v[1])), NodePublic(b64decode(v[2])), DiscoPublic(b64decode(v[3])),
                   tuple(_address(ver, val) for ver, val in v[4]), int(v[5]))


def netmap_to_json(nm: NetMap) -> dict[str, Any]:
    return {
        "network": {
            "network_id": nm.network.network_id,
            "name": nm.network.name,
            "ipv4": str(nm.network.ipv4_cidr),
            "ipv6": str(nm.network.ipv6_prefix),
            "domain": nm.network.domain,
        },
        "serial": nm.serial,
        "expires": nm.expires,
        "state_sha256": nm.state_sha256,
        "self": nm.self_name,
        "peers": [peer_to_json(p) for p in nm.peers],
        "relays": [
            {"name": r.name, "address": r.address,
             "identity_key": r.identity_key.text() if r.identity_key else None}
            for r in nm.relays
        ],
        "stun": list(nm.stun_servers),
        "policy": nm.policy_text,
        "authkeys": [_authkey_to_json(k) for k in nm.authkeys],
        "revoked": [_revoked_to_json(r) for r in nm.revoked],
    }


def netmap_from_json(doc: dict[str, Any]) -> NetMap:
    net = doc["network"]
    return NetMap(
        network=NetworkSettings(
            net["network_id"], net["name"], ipaddress.IPv4Network(net["ipv4"]),
            ipaddress.IPv6Network(net["ipv6"]), net["domain"],
        ),
        serial=int(doc["serial"]),
        expires=int(doc["expires"]),
        state_sha256=doc["state_sha256"],
        peers=tuple(peer_from_json(p) for p in doc["peers"]),
        relays=tuple(
            Relay(r["name"], r["address"],
                  VerifyKey.from_text(r["identity_key"]) if r["identity_key"] else None)
            for r in doc["relays"]
        ),
        stun_servers=tuple(doc["stun"]),
        policy_text=doc["policy"],
        self_name=doc["self"],
        # Required: a cache from before they were kept fails to load and is rebuilt from the repository.
        authkeys=tuple(_authkey_from_json(v) for v in doc["authkeys"]),
        revoked=tuple(_revoked_from_json(v) for v in doc["revoked"]),
    )
