"""NetMap <-> JSON, for the local cache of the last accepted map (pure)."""

from __future__ import annotations

import ipaddress
from base64 import b64decode
from typing import Any

from meshctl.coord.netmap import IPAddress, NetMap, NetworkSettings, Peer, Relay
from meshctl.keys import DiscoPublic, NodePublic, VerifyKey


def peer_to_json(p: Peer) -> list[Any]:
    # Compact on purpose: a no-op sync at 10,000 peers reads this back and must stay fast.
    out: list[Any] = [p.name, p.identity_key.b64(), p.wg_public_key.b64(), p.disco_key.b64(),
           [[a.version, int(a)] for a in p.addresses], list(p.tags), p.owner, list(p.endpoints)]
    if p.approved_routes or p.exit_node:  # absent for nearly every member
        out += [[str(r) for r in p.approved_routes], p.exit_node]
    return out


def _address(version: int, value: int) -> IPAddress:
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


def peer_from_json(v: list[Any]) -> Peer:
    return Peer(
        name=v[0],
        identity_key=VerifyKey(b64decode(v[1])),
        wg_public_key=NodePublic(b64decode(v[2])),
        disco_key=DiscoPublic(b64decode(v[3])),
        addresses=tuple(_address(ver, val) for ver, val in v[4]),
        tags=tuple(v[5]),
        owner=v[6],
        endpoints=tuple(v[7]),
        approved_routes=tuple(ipaddress.ip_network(r) for r in v[8]) if len(v) > 8 else (),
        exit_node=bool(v[9]) if len(v) > 9 else False,
    )


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
    )
