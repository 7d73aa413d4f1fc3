"""The host side of routes (shell): meshctl's routing table and rules through netlink, IP forwarding
through /proc, and the facts the planners need (the host's networks, what must stay local).

Only meshctl's own things are read and changed: the rules at router/policy_routing.PRIORITIES,
the routes of table TABLE_ID, the forwarding switches it turned on itself (forwarding.json).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from meshctl.coord.routes import IPAddress, Prefix
from meshctl.errors import MeshctlError
from meshctl.fsutil import atomic_write
from meshctl.router.config import RTPROT_MESHCTL
from meshctl.router.forwarding import ForwardingState, SetForwarding, owned_after
from meshctl.router.linux import interface_addresses, run_ops
from meshctl.router.policy_routing import (
    PRIORITIES,
    TABLE_ID,
    THROW,
    UNICAST,
    UNREACHABLE,
    AddRule,
    AddTableRoute,
    DelRule,
    DelTableRoute,
    HostFacts,
    PolicyOp,
    PolicyRoutingPlan,
    PolicyRoutingState,
    PolicyRule,
    ReplaceTableRoute,
    TableRoute,
    describe_policy_op,
)

log = logging.getLogger(__name__)

SYSCTL: Final = {4: Path("/proc/sys/net/ipv4/ip_forward"), 6: Path("/proc/sys/net/ipv6/conf/all/forwarding")}
OWNED_FILE: Final = "forwarding.json"
RESOLV_CONF: Final = Path("/etc/resolv.conf")
RESOLVE_CACHE_S: Final = 300.0  # names of the git host, relays and STUN servers, resolved again after
_FAMILIES: Final = {4: socket.AF_INET, 6: socket.AF_INET6}
_KINDS: Final = {1: UNICAST, 7: UNREACHABLE, 9: THROW}  # rtm_type: RTN_UNICAST, RTN_UNREACHABLE, RTN_THROW
_FOREIGN: Final = "unicast-elsewhere"  # a unicast route of the table on another interface: replaced


class PolicyRoutingError(MeshctlError):
    """Some rules or routes could not be set; `state` is what the host holds now."""

    def __init__(self, message: str, state: PolicyRoutingState) -> None:
        super().__init__(message, "routes through the mesh may be incomplete; the next pass retries")
        self.state = state


# --- policy routing -------------------------------------------------------------------------


def read_policy_routing(ifname: str) -> PolicyRoutingState:
    from meshctl.netlink import IPRoute

    rules: set[PolicyRule] = set()
    table: set[TableRoute] = set()
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        idx = int(found[0]) if found else None
        for version, family in _FAMILIES.items():
            for msg in ipr.get_rules(family=family):
                prio = msg.get_attr("FRA_PRIORITY")
                if prio in PRIORITIES:
                    rules.add(_rule_of(msg, version, int(prio)))
            for msg in ipr.get_routes(family=family, table=TABLE_ID):
                if msg.get_attr("RTA_TABLE") != TABLE_ID:
                    continue
                dst = msg.get_attr("RTA_DST") or ("0.0.0.0" if version == 4 else "::")
                kind = _KINDS.get(msg["type"], _FOREIGN)
                if kind == UNICAST and (idx is None or msg.get_attr("RTA_OIF") != idx):
                    kind = _FOREIGN
                table.add(TableRoute(ipaddress.ip_network(f"{dst}/{msg['dst_len']}"), kind))
    return PolicyRoutingState(frozenset(rules), frozenset(table))


def _rule_of(msg: Any, version: int, prio: int) -> PolicyRule:
    sport = msg.get_attr("FRA_SPORT_RANGE")
    return PolicyRule(prio, version, int(msg.get_attr("FRA_TABLE") or msg["table"]),
                      int(msg.get_attr("FRA_FWMARK") or 0), int(msg.get_attr("FRA_FWMASK") or 0),
                      int(str(sport).split(":")[0]) if sport else 0)


def _rule_args(rule: PolicyRule) -> dict[str, Any]:
    args: dict[str, Any] = {"table": rule.table, "priority": rule.priority, "family": _FAMILIES[rule.version]}
    if rule.fwmark:
        args |= {"fwmark": rule.fwmark, "fwmask": rule.fwmask}
    if rule.sport:
        args |= {"ip_proto": socket.IPPROTO_UDP, "sport_range": f"{rule.sport}:{rule.sport}"}
    return args


def _route_args(route: TableRoute, idx: int) -> dict[str, Any]:
    args: dict[str, Any] = {"dst": str(route.prefix), "table": TABLE_ID, "proto": RTPROT_MESHCTL,
                            "family": _FAMILIES[route.prefix.version]}
    if route.kind == UNICAST:
        args["oif"] = idx
    else:
        args["type"] = route.kind
    return args


def _run(ipr: Any, idx: int, op: PolicyOp) -> None:
    match op:
        case AddTableRoute(r):
            ipr.route("add", **_route_args(r, idx))
        case ReplaceTableRoute(r):
            ipr.route("replace", **_route_args(r, idx))
        case DelTableRoute(r):
            args = _route_args(r, idx) if r.kind != _FOREIGN else {
                "dst": str(r.prefix), "table": TABLE_ID, "family": _FAMILIES[r.prefix.version]}
            args.pop("oif", None)
            ipr.route("del", **args)
        case AddRule(rule):
            ipr.rule("add", **_rule_args(rule))
        case DelRule(rule):
            ipr.rule("del", **_rule_args(rule))


def apply_policy_routing(ifname: str, plan: PolicyRoutingPlan) -> PolicyRoutingState:
    """Run every operation (one failing does not stop the others), then read back."""
    if plan.is_empty():
        return read_policy_routing(ifname)
    from meshctl.netlink import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found and any(isinstance(op, AddTableRoute | ReplaceTableRoute) and op.route.kind == UNICAST
                             for op in plan.ops):
            raise PolicyRoutingError(f"interface {ifname} does not exist", read_policy_routing(ifname))
        idx = int(found[0]) if found else 0
        failures = run_ops(plan.ops, lambda op: _run(ipr, idx, op), lambda op: describe_policy_op(op, ifname),
                           lambda op: isinstance(op, DelTableRoute | DelRule))
    state = read_policy_routing(ifname)
    if failures:
        raise PolicyRoutingError(f"{len(failures)} of {len(plan.ops)} routing changes failed: "
                                 + "; ".join(failures), state)
    return state


# --- IP forwarding --------------------------------------------------------------------------


def read_forwarding(state_dir: Path) -> ForwardingState:
    on = frozenset(v for v, path in SYSCTL.items() if _read_flag(path))
    try:
        doc = json.loads((state_dir / OWNED_FILE).read_text())
        owned = frozenset(int(v) for v in doc["owned"] if int(v) in SYSCTL)
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        owned = frozenset()
    return ForwardingState(on, owned & on)


def _read_flag(path: Path) -> bool:
    try:
        return path.read_text().strip() not in ("", "0")
    except OSError:
        return False  # no IPv6 in this kernel: nothing forwards it


def apply_forwarding(state_dir: Path, state: ForwardingState, ops: tuple[SetForwarding, ...]) -> ForwardingState:
    """Write the sysctls. What meshctl turns on is recorded before it is switched (a crash in
    between leaves a record of a switch still off, which the next read ignores)."""
    owned = owned_after(state, ops)
    if any(op.on for op in ops):
        _save_owned(state_dir, owned | state.owned)
    for op in ops:
        try:
            SYSCTL[op.version].write_text("1\n" if op.on else "0\n")
        except OSError as exc:
            raise MeshctlError(f"{op.describe()}: {exc.strerror or exc}",
                               "a subnet router or exit node needs IP forwarding (run as root)") from None
        log.info("%s", op.describe())
    _save_owned(state_dir, owned)
    return read_forwarding(state_dir)


def _save_owned(state_dir: Path, owned: frozenset[int]) -> None:
    path = state_dir / OWNED_FILE
    if not owned:
        path.unlink(missing_ok=True)
        return
    atomic_write(path, (json.dumps({"owned": sorted(owned)}) + "\n").encode(), mode=0o600)


# --- what the planners need to know about the host --------------------------------------------


def url_host(url: str) -> str | None:
    """The host of a git URL (https://, ssh://, git://, scp-like user@host:path); None for a path."""
    if "://" in url:
        host = urlsplit(url).hostname
        return host or None
    m = re.match(r"^(?:[^@/]+@)?(\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+):(?!//)", url)
    if m and not url.startswith(("/", ".")):
        return m.group(1).strip("[]")
    return None


def host_part(hostport: str) -> str:
    return hostport.rsplit(":", 1)[0].strip("[]")


_resolved: dict[str, tuple[float, tuple[IPAddress, ...]]] = {}


def resolve(name: str) -> tuple[IPAddress, ...]:
    """A host's addresses (a literal is itself); () when it does not resolve. Cached a while."""
    try:
        return (ipaddress.ip_address(name),)
    except ValueError:
        pass
    now = time.monotonic()
    hit = _resolved.get(name)
    if hit is not None and now - hit[0] < RESOLVE_CACHE_S:
        return hit[1]
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
        found = tuple(dict.fromkeys(ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos))
    except (OSError, UnicodeError, ValueError) as exc:
        log.debug("cannot resolve %s: %s", name, exc)
        found = hit[1] if hit else ()  # keep the last answer rather than route it into the tunnel
    _resolved[name] = (now, found)
    return found


def connected_networks(exclude_ifname: str) -> tuple[Prefix, ...]:
    """The networks of this host's interfaces, but the mesh's own, loopback and link-local."""
    nets = {i.network for i in interface_addresses(exclude_ifname) if i.network.prefixlen > 0}
    return tuple(sorted(nets, key=lambda p: (p.version, int(p.network_address), p.prefixlen)))


def system_resolvers(resolv_conf: Path = RESOLV_CONF) -> tuple[IPAddress, ...]:
    """The resolvers the host (or MagicDNS, forwarding for it) asks: nameservers and meshctl's
    record of the previous ones; loopback and MagicDNS's own address left out."""
    from meshctl.dns.resolvconf import parse_resolv_conf

    try:
        conf = parse_resolv_conf(resolv_conf.read_text(errors="replace"))
    except OSError:
        return ()
    out = []
    for text in (*conf.nameservers, *(c.split()[0] for c in conf.upstream_comments if c.split())):
        try:
            addr = ipaddress.ip_address(text.split("%")[0])
        except ValueError:
            continue
        if not addr.is_loopback and str(addr) != "100.100.100.100":
            out.append(addr)
    return tuple(dict.fromkeys(out))


def host_facts(ifname: str, repo_url: str, relays: Iterable[str], stun: Iterable[str]) -> HostFacts:
    """What must stay local: the git host, relays and STUN servers, and the DNS resolvers on the
    host's own networks (a resolver elsewhere is reached like any address: through an exit node)."""
    connected = connected_networks(ifname)
    keep: list[IPAddress] = []
    git = url_host(repo_url)
    if git:
        keep += resolve(git)
    for hostport in (*relays, *stun):
        keep += resolve(host_part(hostport))
    keep += [a for a in system_resolvers() if any(a.version == n.version and a in n for n in connected)]
    return HostFacts(connected, tuple(dict.fromkeys(keep)))
