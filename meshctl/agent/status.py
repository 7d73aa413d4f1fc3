"""The `meshctl status --json` document (DESIGN.md's stable schema), built purely."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from meshctl.coord.netmap import NetMap
from meshctl.wg.config import HANDSHAKE_FRESH_S, DeviceState

STALE_AFTER_S: Final = 300  # five missed one-minute syncs


def build_status(
    netmap: NetMap,
    device: DeviceState | None,
    device_info: Mapping[str, Any],
    fetched_at: int | None,
    last_sync: Mapping[str, Any],
    now: int,
    agent: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    me = netmap.self_peer
    agent = agent or {}
    paths: Mapping[str, Any] = agent.get("paths", {})
    peers = []
    by_key = {ps.public_key: ps for ps in device.peers} if device else {}  # O(1) per peer at 1,000
    for p in netmap.others():
        ps = by_key.get(p.wg_public_key)
        hs = ps.last_handshake if ps else None
        fresh = hs is not None and now - hs < HANDSHAKE_FRESH_S
        info = paths.get(p.name, {})
        path = info.get("path") or "none"
        if path == "none" and fresh:  # a live tunnel has a path, whatever the agent knows (or if none runs)
            path = "relay" if ps is not None and _through_proxy(ps.endpoint) else "direct"
        peers.append({
            "name": p.name,
            "mesh_ips": [str(a) for a in p.addresses],
            "wg_public_key": p.wg_public_key.b64(),
            "path": path,
            "endpoint": (info.get("endpoint") or (ps.endpoint if ps else None)) if path != "relay" else None,
            "relay": info.get("relay"),
            "relay_channel": info.get("relay_channel") if path == "relay" else None,
            # set only while the agent's own pongs prove the direct path (WireGuard may keep an
            # endpoint, and a live tunnel, without such a proof)
            "latency_ms": info.get("latency_ms") if path == "direct" else None,
            "latest_handshake": hs,
            "rx_bytes": ps.rx_bytes if ps else 0,
            "tx_bytes": ps.tx_bytes if ps else 0,
        })
    coordination_error = last_sync.get("coordination_error")
    stale = fetched_at is None or now - fetched_at > STALE_AFTER_S or bool(coordination_error)
    return {
        "self": {
            "name": netmap.self_name,
            "mesh_ips": [str(a) for a in me.addresses] if me else [],
            "wg_public_key": me.wg_public_key.b64() if me else None,
            "backend": device_info.get("backend"),
            "backend_reason": device_info.get("reason"),
            "interface": device_info.get("interface"),
            "listen_port": device.listen_port if device else device_info.get("listen_port"),
            "endpoints": list(agent.get("endpoints", [])),
            "nat": dict(agent.get("nat", {})),
            "up": device is not None,
        },
        "coordination": {
            "serial": netmap.serial,
            "expires": netmap.expires,
            "fetched_at": fetched_at,
            "stale": stale,
            "error": coordination_error,
        },
        "peers": peers,
    }


def _through_proxy(endpoint: str | None) -> bool:
    """WireGuard sends to a loopback address only through the agent's relay proxy."""
    return endpoint is not None and endpoint.startswith("127.")


def _age(now: int, then: int | None) -> str:
    if then is None:
        return "never"
    secs = max(0, now - then)
    if secs < 120:
        return f"{secs}s ago"
    if secs < 7200:
        return f"{secs // 60}m ago"
    return f"{secs // 3600}h ago"


def render_status(doc: Mapping[str, Any], now: int) -> str:
    me, coord = doc["self"], doc["coordination"]
    lines = [
        f"{me['name']}  {' '.join(me['mesh_ips'])}  backend {me['backend'] or '-'}"
        f"{' (' + me['backend_reason'] + ')' if me.get('backend_reason') else ''}"
        f"{'' if me['up'] else '  [interface down]'}",
        f"coordination: serial {coord['serial']}, fetched {_age(now, coord['fetched_at'])}"
        f"{'  STALE' if coord['stale'] else ''}"
        f"{'  (' + coord['error'] + ')' if coord.get('error') else ''}",
    ]
    for p in doc["peers"]:
        where = p["endpoint"] or (f"relay {p['relay']}{' (channel)' if p.get('relay_channel') else ''}"
                                  if p["relay"] else "-")
        lines.append(
            f"  {p['name']:<16} {' '.join(p['mesh_ips']):<42} {p['path']:<7} {where:<24} "
            f"handshake {_age(now, p['latest_handshake'])}  rx {p['rx_bytes']} tx {p['tx_bytes']}"
        )
    return "\n".join(lines)
