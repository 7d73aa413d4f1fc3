"""The `meshctl status --json` document (DESIGN.md's stable schema), built purely."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from meshctl.coord.endpoint_publish import Published, describe
from meshctl.coord.endpoint_verify import EndpointView, freshness, keys_match
from meshctl.coord.netmap import NetMap, Peer
from meshctl.coord.records import format_time
from meshctl.wg.config import HANDSHAKE_FRESH_S, DeviceState

STALE_AFTER_S: Final = 300  # five missed one-minute syncs
ROUTES_FILE: Final = "routes.json"  # what the last full pass chose (agent/sync_pass.record_routes)
EXPIRY_WARNING_S: Final = 14 * 86400  # a membership that ends within this is warned about


def record_status(view: EndpointView | None, peer: Peer, now: int) -> str | None:
    """A peer's endpoint record as this node sees it: fresh, stale, refused, or None (none)."""
    if view is None:
        return None
    if peer.name in view.refused:
        return f"refused: {view.refused[peer.name]}"
    rec = view.records.get(peer.name)
    if rec is None:
        return None
    if not keys_match(rec, peer.wg_public_key, peer.disco_key):
        return "made for other keys than the member's"
    return freshness(rec, now) or "fresh"


def relays_status(netmap: NetMap, agent: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Each listed relay with its connection state and last error (from the agent's clients)."""
    clients = {c.get("name"): c for c in (agent or {}).get("relays", []) if isinstance(c, Mapping)}
    out = []
    for r in netmap.relays:
        c = clients.get(r.name)
        if agent is None:
            state, error = "unknown (no agent running)", None
        elif c is None:
            state, error = "not started", None
        else:
            state, error = ("connected" if c.get("connected") else "not connected"), c.get("last_error")
        out.append({"name": r.name, "address": r.address, "state": state,
                    "transport": c.get("transport") if c else None,
                    "latency_ms": c.get("latency_ms") if c else None, "last_error": error})
    return out


def build_status(
    netmap: NetMap,
    device: DeviceState | None,
    device_info: Mapping[str, Any],
    fetched_at: int | None,
    last_sync: Mapping[str, Any],
    now: int,
    agent: Mapping[str, Any] | None = None,
    endpoints: EndpointView | None = None,
    published: Published | None = None,
    routes: Mapping[str, Any] | None = None,
    prefs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`endpoints`: the endpoint records this node judged; `published`: what it last published on its
    own branch; `routes`: routes.json of the last full pass (what this node sends through whom);
    `prefs`: its route choices (prefs.json)."""
    me = netmap.self_peer
    relays = relays_status(netmap, agent)
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
            "approved_routes": [str(r) for r in p.approved_routes],
            "exit_node": p.exit_node,
            "exit_node_in_use": routes.get("exit_node") == p.name,
            "routes_via": [r for r in via.get(p.name, []) if r not in ("0.0.0.0/0", "::/0")],
            "record": record_status(endpoints, p, now),
            "membership_expires": p.expires,
            "enrolled_with": p.enrolled_with or None,
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
            "endpoint_record": _published_status(published, now),
            "membership_expires": me.expires if me else None,
            "enrolled_with": (me.enrolled_with or None) if me else None,
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
        "relays": relays,
        "peers": peers,
        "refused_enrollments": dict(endpoints.enroll_refused) if endpoints is not None else {},
        "warnings": membership_warnings(netmap, now),
    }


def membership_warnings(netmap: NetMap, now: int) -> list[str]:
    """This device's membership ending within EXPIRY_WARNING_S, or ended (`admin approve --expires`)."""
    name = netmap.self_name
    me = netmap.self_peer
    ended = dict(netmap.dropped).get(name or "")
    if ended is not None:
        return [f"{name} is no longer a member: {ended}; an admin renews it: "
                f"meshctl admin renew {name} --expires 180d"]
    if me is None or me.expires is None or me.expires - now > EXPIRY_WARNING_S:
        return []
    days = max(0, me.expires - now) / 86400
    when = f"in {days:.0f} days" if days >= 1 else f"in {max(0, me.expires - now) // 3600} hours"
    return [f"the membership of {name} expires at {format_time(me.expires)} ({when}): an admin renews it "
            f"with `meshctl admin renew {name} --expires 180d`"]


def _published_status(pub: Published | None, now: int) -> dict[str, Any] | None:
    if pub is None:
        return None
    return {"published_at": pub.at, "counter": pub.counter, "candidates": list(pub.candidates),
            "push_rights": pub.refused is None, "error": pub.refused or pub.failed,
            "summary": describe(pub, now)}


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
    if me.get("approved_routes") or me.get("exit_node"):
        lines.append(f"routes this node carries: {_offer(me.get('approved_routes', []), bool(me.get('exit_node')))}"
                     f"  (forwarding IPv{'+IPv'.join(str(v) for v in me.get('forwarding', [])) or ' off'})")
    routing = doc.get("routes", {})
    if routing.get("error"):
        lines.append(f"routes: {routing['error']}")
    lines += [f"routes: {note}" for note in routing.get("notes", [])]
    lines += [f"warning: {w}" for w in doc.get("warnings", [])]
    refused = doc.get("refused_enrollments", {})
    lines += [f"enrollment on endpoints/{name} refused: {why}" for name, why in refused.items()]
    record = me.get("endpoint_record")
    if record:
        lines.append(f"endpoint record: {record['summary']}")
    for r in doc.get("relays", []):
        how = r["state"]
        if r["state"] == "connected":
            how += f" over {r['transport']}" + (f" ({r['latency_ms']} ms)" if r.get("latency_ms") is not None else "")
        lines.append(f"relay {r['name']} {r['address']}: {how}" + (f": {r['last_error']}" if r.get("last_error")
                                                                    and r["state"] != "connected" else ""))
    for p in doc["peers"]:
        where = p["endpoint"] or (f"relay {p['relay']}{' (channel)' if p.get('relay_channel') else ''}"
                                  if p["relay"] else "-")
        lines.append(
            f"  {p['name']:<16} {' '.join(p['mesh_ips']):<42} {p['path']:<7} {where:<24} "
            f"handshake {_age(now, p['latest_handshake'])}  rx {p['rx_bytes']} tx {p['tx_bytes']}"
            + _peer_routes(p)
            + (f"  (endpoint record: {p['record'] or 'none'})" if p["path"] == "none" else "")
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
