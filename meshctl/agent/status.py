"""The `meshctl status --json` document (DESIGN.md's stable schema), built purely."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from meshctl.coord.netmap import NetMap
from meshctl.wg.config import HANDSHAKE_FRESH_S, DeviceState

STALE_AFTER_S: Final = 300  # five missed one-minute syncs
ROUTES_FILE: Final = "routes.json"  # what the last full pass chose (agent/sync_pass.record_routes)


def build_status(
    netmap: NetMap,
    device: DeviceState | None,
    device_info: Mapping[str, Any],
    fetched_at: int | None,
    last_sync: Mapping[str, Any],
    now: int,
    agent: Mapping[str, Any] | None = None,
    routes: Mapping[str, Any] | None = None,
    prefs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`routes`: routes.json of the last full pass (what this node sends through whom); `prefs`:
    its route choices (prefs.json)."""
    me = netmap.self_peer
    agent = agent or {}
    routes = routes or {}
    via: Mapping[str, list[str]] = routes.get("via", {})
    paths: Mapping[str, Any] = agent.get("paths", {})
    peers = []
    by_key = {ps.public_key: ps for ps in device.peers} if device else {}  # O(1) per peer at 1,000
    for p in netmap.others():
        ps = by_key.get(p.wg_public_key)
        hs = ps.last_handshake if ps else None
        fresh = hs is not None and now - hs < HANDSHAKE_FRESH_S
        info = paths.get(p.name, {})
        path = info.get("path") or ("direct" if fresh else "none")
        peers.append({
            "name": p.name,
            "mesh_ips": [str(a) for a in p.addresses],
            "wg_public_key": p.wg_public_key.b64(),
            "path": path,
            "endpoint": info.get("endpoint", ps.endpoint if ps else None) if path != "relay" else None,
            "relay": info.get("relay"),
            "relay_channel": info.get("relay_channel") if path == "relay" else None,
            "latest_handshake": hs,
            "rx_bytes": ps.rx_bytes if ps else 0,
            "tx_bytes": ps.tx_bytes if ps else 0,
            "approved_routes": [str(r) for r in p.approved_routes],
            "exit_node": p.exit_node,
            "exit_node_in_use": routes.get("exit_node") == p.name,
            "routes_via": [r for r in via.get(p.name, []) if r not in ("0.0.0.0/0", "::/0")],
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
            "approved_routes": [str(r) for r in me.approved_routes] if me else [],
            "exit_node": bool(me and me.exit_node),
            "forwarding": list(routes.get("forwarding", [])),
        },
        "routes": {
            **dict(prefs or {}),
            "exit_node_in_use": routes.get("exit_node"),
            "error": routes.get("error"),
            "notes": list(routes.get("notes", [])),
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
    if me.get("approved_routes") or me.get("exit_node"):
        lines.append(f"routes this node carries: {_offer(me.get('approved_routes', []), bool(me.get('exit_node')))}"
                     f"  (forwarding IPv{'+IPv'.join(str(v) for v in me.get('forwarding', [])) or ' off'})")
    routing = doc.get("routes", {})
    if routing.get("error"):
        lines.append(f"routes: {routing['error']}")
    lines += [f"routes: {note}" for note in routing.get("notes", [])]
    for p in doc["peers"]:
        where = p["endpoint"] or (f"relay {p['relay']}{' (channel)' if p.get('relay_channel') else ''}"
                                  if p["relay"] else "-")
        lines.append(
            f"  {p['name']:<16} {' '.join(p['mesh_ips']):<42} {p['path']:<7} {where:<24} "
            f"handshake {_age(now, p['latest_handshake'])}  rx {p['rx_bytes']} tx {p['tx_bytes']}"
            + _peer_routes(p)
        )
    return "\n".join(lines)


def _offer(routes: list[str], exit_node: bool) -> str:
    return ", ".join([*routes, *(["exit node"] if exit_node else [])]) or "none"


def _peer_routes(p: Mapping[str, Any]) -> str:
    """`  routes 192.168.1.0/24 (primary here), exit node (in use)` for a peer offering routes."""
    if not p.get("approved_routes") and not p.get("exit_node"):
        return ""
    used = set(p.get("routes_via", []))
    parts = [f"{r}{' (in use)' if r in used else ''}" for r in p.get("approved_routes", [])]
    if p.get("exit_node"):
        parts.append("exit node (in use)" if p.get("exit_node_in_use") else "exit node")
    return "  routes " + ", ".join(parts)
