"""NetMap <-> JSON, for the local cache of the last accepted map and for `status --json` (pure)."""

from __future__ import annotations

import ipaddress
from typing import Any

from meshctl.coord.netmap import NetMap, NetworkSettings, Peer, Relay
from meshctl.keys import DiscoPublic, NodePublic, VerifyKey


def peer_to_json(p: Peer) -> dict[str, Any]:
    return {
        "name": p.name,
        "identity_key": p.identity_key.text(),
        "wg_public_key": p.wg_public_key.b64(),
        "disco_key": p.disco_key.b64(),
        "addresses": [str(a) for a in p.addresses],
        "tags": list(p.tags),
        "owner": p.owner,
        "endpoints": list(p.endpoints),
    }


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
        peers=tuple(
            Peer(
                name=p["name"],
                identity_key=VerifyKey.from_text(p["identity_key"]),
                wg_public_key=NodePublic.from_b64(p["wg_public_key"]),
                disco_key=DiscoPublic.from_b64(p["disco_key"]),
                addresses=tuple(ipaddress.ip_address(a) for a in p["addresses"]),
                tags=tuple(p["tags"]),
                owner=p["owner"],
                endpoints=tuple(p["endpoints"]),
            )
            for p in doc["peers"]
        ),
        relays=tuple(
            Relay(r["name"], r["address"],
                  VerifyKey.from_text(r["identity_key"]) if r["identity_key"] else None)
            for r in doc["relays"]
        ),
        stun_servers=tuple(doc["stun"]),
        policy_text=doc["policy"],
        self_name=doc["self"],
    )
