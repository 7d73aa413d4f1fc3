"""The signed documents of the coordination repository (pure).

Each document has `parse_X(data, name) -> X` (strict: unknown or missing fields,
wrong types and out-of-range values are refused with the file and field named)
and `marshal_X(x) -> bytes` (the canonical form that gets signed).
"""

from __future__ import annotations

import calendar
import ipaddress
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from meshctl.coord import routes as routing
from meshctl.coord import strictjson
from meshctl.errors import ParseError
from meshctl.keys import DiscoPublic, NodePublic, VerifyKey

ROOT_TYPE: Final = "meshctl-root"
STATE_TYPE: Final = "meshctl-state"
PEER_TYPE: Final = "meshctl-peer"

MAX_ROOT_BYTES: Final = 64 * 1024
MAX_PEER_BYTES: Final = 8 * 1024
MAX_STATE_BYTES: Final = 32 * 1024 * 1024  # ~10 MB at 30,000 peers; leaves room, bounds memory
MAX_KEYS: Final = 32
MAX_ENDPOINTS: Final = 16
MAX_TAGS: Final = 32
MAX_PEERS: Final = 100_000
MAX_RELAYS: Final = 64
MAX_STUN: Final = 16
MAX_REVOKED: Final = 100_000
MAX_PINNED: Final = 64
MAX_AUTHKEYS: Final = 256

# Every pattern is anchored with \A and \Z: `$` also matches before a trailing newline, so
# "laptop\n" would pass for a name. [0-9], not \d: \d matches every Unicode digit.
NAME_RE: Final = re.compile(r"\A[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
TAG_RE: Final = re.compile(r"\Atag:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
LABEL: Final = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
DOMAIN_RE: Final = re.compile(rf"\A(?=.{{1,200}}\Z){LABEL}(?:\.{LABEL})*\Z")
NETWORK_ID_RE: Final = re.compile(r"\A[0-9a-f]{32}\Z")
SHA256_RE: Final = re.compile(r"\A[0-9a-f]{64}\Z")
TIME_RE: Final = re.compile(r"\A([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z\Z")
HOSTPORT_RE: Final = re.compile(r"\A(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]{1,253}):[0-9]{1,5}\Z")
OWNER_RE: Final = re.compile(r"\A[A-Za-z0-9._%+@-]{0,128}\Z")
AUTHKEY_ID_RE: Final = re.compile(r"\A[0-9a-f]{16}\Z")  # the key id of the auth key's public key
# Files nodes never read (the README, CI configuration): state.json pins them by hash, so a change
# to them is signed like any other (`meshctl admin sign --update-pins`) or reported by name.
PINNABLE_RE: Final = re.compile(
    r"\A(?:README\.md|\.gitignore|\.gitlab-ci\.yml|\.github/workflows/[A-Za-z0-9_.-]{1,64}\.ya?ml)\Z")


class RecordError(ParseError):
    """A repository document is well-formed JSON but not a valid document."""


# --- time -------------------------------------------------------------------------------


def format_time(unix: int) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> int:
    """Seconds since the epoch of a `YYYY-MM-DDTHH:MM:SSZ` time (ValueError if invalid)."""
    m = TIME_RE.match(text)
    if not m:
        raise ValueError(f"invalid time {text!r}")
    year, month, day, hour, minute, second = (int(x) for x in m.groups())
    datetime(year, month, day, hour, minute, second)  # validates ranges (month 13, Feb 30, ...)
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Like ipaddress.ip_address, without trying IPv4 first on every IPv6 address."""
    return ipaddress.IPv6Address(text) if ":" in text else ipaddress.IPv4Address(text)


# --- field readers ------------------------------------------------------------------------


class _Reader:
    """Reads fields of one JSON object, naming the file and field in errors."""

    def __init__(self, doc: Any, name: str, where: str = "") -> None:
        self.name = name
        self.where = where
        if not isinstance(doc, dict):
            raise RecordError(f"{name}: {where or 'document'} must be a JSON object")
        self.doc: dict[str, Any] = doc

    def fail(self, key: str, why: str) -> RecordError:
        return RecordError(f"{self.name}: field {self.where}{key}: {why}")

    def only(self, required: set[str], optional: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        keys = set(self.doc)
        missing = sorted(required - keys)
        if missing:
            raise RecordError(f"{self.name}: missing field {self.where}{missing[0]}")
        unknown = sorted(keys - required - optional)
        if unknown:
            raise RecordError(f"{self.name}: unknown field {self.where}{unknown[0]}")

    def text(self, key: str, pattern: re.Pattern[str] | None = None, default: str | None = None) -> str:
        value = self.doc.get(key, default)
        if not isinstance(value, str):
            raise self.fail(key, "must be a string")
        if pattern is not None and not pattern.match(value):
            raise self.fail(key, f"invalid value {value[:80]!r}")
        return value

    def integer(self, key: str, lo: int, hi: int) -> int:
        value = self.doc.get(key)
        if type(value) is not int or not lo <= value <= hi:
            raise self.fail(key, f"must be an integer from {lo} to {hi}")
        return value

    def time(self, key: str) -> int:
        text = self.text(key, TIME_RE)
        try:
            return parse_time(text)
        except ValueError:
            raise self.fail(key, f"invalid time {text!r}") from None

    def items(self, key: str, limit: int, default: list[Any] | None = None) -> list[Any]:
        value = self.doc.get(key, default)
        if not isinstance(value, list) or len(value) > limit:
            raise self.fail(key, f"must be a list of at most {limit} items")
        return value

    def str_list(self, key: str, limit: int, pattern: re.Pattern[str] | None = None) -> tuple[str, ...]:
        items = self.items(key, limit, default=[])
        for item in items:
            if not isinstance(item, str) or (pattern is not None and not pattern.match(item)):
                raise self.fail(key, f"invalid item {str(item)[:80]!r}")
        if len(set(items)) != len(items):
            raise self.fail(key, "has duplicate items")
        return tuple(items)

    def routes(self, key: str) -> tuple[routing.Prefix, ...]:
        """Optional list of canonical networks, no duplicates; stored sorted (routes.canonical)."""
        texts = self.str_list(key, routing.MAX_ROUTES)
        out = []
        for text in texts:
            try:
                out.append(routing.parse_route(text))
            except ValueError as exc:
                raise self.fail(key, str(exc)) from None
        return routing.canonical(out)  # canonical text: str_list's duplicate check covers networks

    def flag(self, key: str) -> bool:
        value = self.doc.get(key, False)
        if not isinstance(value, bool):
            raise self.fail(key, "must be true or false")
        return value

    def obj(self, key: str) -> dict[str, Any]:
        value = self.doc.get(key)
        if not isinstance(value, dict):
            raise self.fail(key, "must be an object")
        return value

    def boolean(self, key: str) -> bool:
        value = self.doc.get(key)
        if type(value) is not bool:
            raise self.fail(key, "must be true or false")
        return value

    def node_public(self, key: str) -> NodePublic:
        try:
            return NodePublic.from_b64(self.text(key))
        except ParseError as exc:
            raise self.fail(key, str(exc)) from None

    def disco_public(self, key: str) -> DiscoPublic:
        try:
            return DiscoPublic.from_b64(self.text(key))
        except ParseError as exc:
            raise self.fail(key, str(exc)) from None

    def verify_key(self, key: str) -> VerifyKey:
        try:
            return VerifyKey.from_text(self.text(key))
        except ParseError as exc:
            raise self.fail(key, str(exc)) from None

    def verify_keys(self, key: str) -> tuple[VerifyKey, ...]:
        texts = self.str_list(key, MAX_KEYS)
        try:
            return tuple(VerifyKey.from_text(t) for t in texts)
        except ParseError as exc:
            raise self.fail(key, str(exc)) from None


def _type_check(r: _Reader, expected: str) -> None:
    if r.doc.get("type") != expected:
        raise RecordError(f"{r.name}: field type: expected {expected!r}")


# For the documents that live outside main (coord/endpoint_record.py): the same strict reading.
Reader = _Reader
type_check = _type_check


# --- root -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RootDoc:
    """Who may sign what: root keys sign roots, admin keys sign states."""

    network_id: str
    name: str
    version: int
    expires: int
    root_keys: tuple[VerifyKey, ...]
    root_threshold: int
    admin_keys: tuple[VerifyKey, ...]
    admin_threshold: int


def parse_root(data: bytes, name: str) -> RootDoc:
    r = _Reader(strictjson.loads(data, name=name, max_bytes=MAX_ROOT_BYTES), name)
    r.only({"type", "network_id", "name", "version", "expires", "root_keys", "root_threshold",
            "admin_keys", "admin_threshold"})
    _type_check(r, ROOT_TYPE)
    doc = RootDoc(
        network_id=r.text("network_id", NETWORK_ID_RE),
        name=r.text("name", NAME_RE),
        version=r.integer("version", 1, 1_000_000),
        expires=r.time("expires"),
        root_keys=r.verify_keys("root_keys"),
        root_threshold=r.integer("root_threshold", 1, MAX_KEYS),
        admin_keys=r.verify_keys("admin_keys"),
        admin_threshold=r.integer("admin_threshold", 1, MAX_KEYS),
    )
    if doc.root_threshold > len(doc.root_keys):
        raise r.fail("root_threshold", f"is {doc.root_threshold} but there are {len(doc.root_keys)} root keys")
    if doc.admin_threshold > len(doc.admin_keys):
        raise r.fail("admin_threshold", f"is {doc.admin_threshold} but there are {len(doc.admin_keys)} admin keys")
    return doc


def marshal_root(doc: RootDoc) -> bytes:
    return strictjson.dumps({
        "type": ROOT_TYPE,
        "network_id": doc.network_id,
        "name": doc.name,
        "version": doc.version,
        "expires": format_time(doc.expires),
        "root_keys": [k.text() for k in doc.root_keys],
        "root_threshold": doc.root_threshold,
        "admin_keys": [k.text() for k in doc.admin_keys],
        "admin_threshold": doc.admin_threshold,
    })


# --- peer record ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """A device's self-signed record (also the content of a join request)."""

    network_id: str
    name: str
    identity_key: VerifyKey
    wg_public_key: NodePublic
    disco_key: DiscoPublic
    endpoints: tuple[str, ...] = ()
    created: int = 0
    # Issue 19: what the device offers to route for others; only the admin-signed state's
    # approval (Assignment.routes) makes any of it used.
    advertise_routes: tuple[routing.Prefix, ...] = ()  # subnet routes, never a default route
    advertise_exit_node: bool = False


def parse_peer(data: bytes, name: str) -> PeerRecord:
    r = _Reader(strictjson.loads(data, name=name, max_bytes=MAX_PEER_BYTES), name)
    r.only({"type", "network_id", "name", "identity_key", "wg_public_key", "disco_key", "created"},
           {"endpoints", "advertise_routes", "advertise_exit_node"})
    _type_check(r, PEER_TYPE)
    wg_key = r.node_public("wg_public_key")
    disco = r.disco_public("disco_key")
    endpoints = r.str_list("endpoints", MAX_ENDPOINTS, HOSTPORT_RE)
    for ep in endpoints:
        if not 1 <= int(ep.rsplit(":", 1)[1]) <= 65535:
            raise r.fail("endpoints", f"invalid port in {ep!r}")
    advertised = r.routes("advertise_routes")
    if any(routing.is_exit_route(x) for x in advertised):
        raise r.fail("advertise_routes", "a default route is exit-node use (advertise_exit_node)")
    return PeerRecord(
        network_id=r.text("network_id", NETWORK_ID_RE),
        name=r.text("name", NAME_RE),
        identity_key=r.verify_key("identity_key"),
        wg_public_key=wg_key,
        disco_key=disco,
        endpoints=endpoints,
        created=r.time("created"),
        advertise_routes=advertised,
        advertise_exit_node=r.flag("advertise_exit_node"),
    )


def marshal_peer(rec: PeerRecord) -> bytes:
    doc: dict[str, Any] = {
        "type": PEER_TYPE,
        "network_id": rec.network_id,
        "name": rec.name,
        "identity_key": rec.identity_key.text(),
        "wg_public_key": rec.wg_public_key.b64(),
        "disco_key": rec.disco_key.b64(),
        "created": format_time(rec.created),
    }
    if rec.endpoints:
        doc["endpoints"] = list(rec.endpoints)
    if rec.advertise_routes:
        doc["advertise_routes"] = [str(x) for x in routing.canonical(rec.advertise_routes)]
    if rec.advertise_exit_node:
        doc["advertise_exit_node"] = True
    return strictjson.dumps(doc)


# --- state ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Assignment:
    """What an admin assigned to a member in state.json."""

    record_sha256: str
    addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    tags: tuple[str, ...] = ()
    owner: str = ""
    # Approved routes (issue 19): used only where the member's record also advertises them;
    # 0.0.0.0/0 and ::/0, always together, approve it as an exit node.
    routes: tuple[routing.Prefix, ...] = ()
    expires: int | None = None  # membership expiry (`admin approve --expires`): nodes drop it after


@dataclass(frozen=True, slots=True)
class RelayEntry:
    name: str
    address: str
    identity_key: VerifyKey | None = None


@dataclass(frozen=True, slots=True)
class Revoked:
    """A device `admin revoke` removed: its keys do not come back unnoticed under another name, and
    its addresses are not handed out again for a quarantine period (rules written by IP carry over)."""

    name: str
    identity_key: VerifyKey
    wg_public_key: NodePublic
    disco_key: DiscoPublic
    addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    at: int  # when it was revoked

    def matches(self, rec: PeerRecord) -> bool:
        """Does a record use any key of this revoked device?"""
        return (rec.identity_key == self.identity_key or rec.wg_public_key == self.wg_public_key
                or rec.disco_key == self.disco_key)


@dataclass(frozen=True, slots=True)
class AuthKey:
    """A scoped delegation (`meshctl admin authkey create`): whoever holds the private half may add
    devices without an admin, but only with these tags, inside this pool, until it expires (or is
    removed from the state), and only one device unless it is reusable (coord/delegation.py)."""

    id: str  # public_key.key_id(): names the key in enrollments and on the command line
    public_key: VerifyKey
    tags: tuple[str, ...]
    pool: ipaddress.IPv4Network  # inside the mesh's IPv4 prefix
    expires: int
    reusable: bool = False


@dataclass(frozen=True, slots=True)
class StateDoc:
    network_id: str
    serial: int
    root_version: int
    expires: int
    ipv4_cidr: ipaddress.IPv4Network
    ipv6_prefix: ipaddress.IPv6Network
    domain: str
    policy_sha256: str
    peers: dict[str, Assignment] = field(default_factory=dict)
    relays: tuple[RelayEntry, ...] = ()
    stun: tuple[str, ...] = ()
    revoked: tuple[Revoked, ...] = ()
    pinned: dict[str, str] = field(default_factory=dict)  # path of a file nodes never read -> sha256
    authkeys: dict[str, AuthKey] = field(default_factory=dict)  # id -> delegation


def _parse_assignment(doc: Any, name: str, peer: str) -> Assignment:
    r = _Reader(doc, name, f"peers.{peer}.")
    r.only({"record_sha256", "addresses"}, {"tags", "owner", "routes", "expires"})
    addrs = _addresses(r, "addresses")
    if not addrs:
        raise r.fail("addresses", "needs at least one address")
    return Assignment(
        record_sha256=r.text("record_sha256", SHA256_RE),
        addresses=addrs,
        tags=r.str_list("tags", MAX_TAGS, TAG_RE),
        owner=r.text("owner", OWNER_RE, default=""),
        routes=_approved_routes(r),
        expires=r.time("expires") if "expires" in r.doc else None,
    )


def _approved_routes(r: _Reader) -> tuple[routing.Prefix, ...]:
    approved = r.routes("routes")
    exits = [x for x in approved if routing.is_exit_route(x)]
    if exits and len(exits) != len(routing.EXIT_ROUTES):
        raise r.fail("routes", "0.0.0.0/0 and ::/0 are approved together (exit node)")
    return approved


def _parse_authkeys(doc: Any, name: str, mesh: ipaddress.IPv4Network) -> dict[str, AuthKey]:
    r = _Reader(doc, name, "authkeys.")
    if len(r.doc) > MAX_AUTHKEYS:
        raise RecordError(f"{name}: field authkeys: more than {MAX_AUTHKEYS} keys")
    out = {}
    for key_id in sorted(r.doc):
        if not AUTHKEY_ID_RE.match(key_id):
            raise RecordError(f"{name}: field authkeys: invalid key id {key_id[:80]!r}")
        e = _Reader(r.doc[key_id], name, f"authkeys.{key_id}.")
        e.only({"public_key", "tags", "pool", "expires", "reusable"})
        public = e.verify_key("public_key")
        if public.key_id() != key_id:
            raise e.fail("public_key", f"its key id is {public.key_id()}, not {key_id}")
        text = e.text("pool")
        try:
            pool = ipaddress.IPv4Network(text)
        except ValueError:
            pool = None
        if pool is None or str(pool) != text:
            raise e.fail("pool", "must be an IPv4 CIDR such as 100.64.1.0/24") from None
        if not pool.subnet_of(mesh):
            raise e.fail("pool", f"{pool} is not inside the mesh prefix {mesh}")
        out[key_id] = AuthKey(key_id, public, e.str_list("tags", MAX_TAGS, TAG_RE), pool, e.time("expires"),
                              e.boolean("reusable"))
    return out


def _parse_relay(doc: Any, name: str, i: int) -> RelayEntry:
    r = _Reader(doc, name, f"relays[{i}].")
    r.only({"name", "address"}, {"identity_key"})
    return RelayEntry(
        name=r.text("name", NAME_RE),
        address=r.text("address", HOSTPORT_RE),
        identity_key=r.verify_key("identity_key") if "identity_key" in r.doc else None,
    )


def _addresses(r: _Reader, key: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    texts = r.str_list(key, 2)
    try:
        return tuple(parse_ip(t) for t in texts)
    except ValueError:
        raise r.fail(key, "must be IP addresses") from None


def _parse_revoked(doc: Any, name: str, i: int) -> Revoked:
    r = _Reader(doc, name, f"revoked[{i}].")
    r.only({"name", "identity_key", "wg_public_key", "disco_key", "addresses", "at"})
    return Revoked(r.text("name", NAME_RE), r.verify_key("identity_key"), r.node_public("wg_public_key"),
                   r.disco_public("disco_key"), _addresses(r, "addresses"), r.time("at"))


def _parse_pinned(doc: Any, name: str) -> dict[str, str]:
    r = _Reader(doc, name, "pinned.")
    if len(r.doc) > MAX_PINNED:
        raise RecordError(f"{name}: field pinned: more than {MAX_PINNED} files")
    for path in r.doc:
        if not PINNABLE_RE.match(path):
            raise RecordError(f"{name}: field pinned: {path[:80]!r} is not a file meshctl pins")
        r.text(path, SHA256_RE)
    return dict(r.doc)


def parse_state(data: bytes, name: str = "state.json") -> StateDoc:
    r = _Reader(strictjson.loads(data, name=name, max_bytes=MAX_STATE_BYTES), name)
    r.only({"type", "network_id", "serial", "root_version", "expires", "network", "policy_sha256",
            "peers"}, {"relays", "stun", "revoked", "pinned", "authkeys"})
    _type_check(r, STATE_TYPE)
    net = _Reader(r.obj("network"), name, "network.")
    net.only({"ipv4", "ipv6", "domain"})
    try:
        v4 = ipaddress.IPv4Network(net.text("ipv4"))
    except ValueError:
        raise net.fail("ipv4", "must be an IPv4 CIDR such as 100.64.0.0/10") from None
    try:
        v6 = ipaddress.IPv6Network(net.text("ipv6"))
    except ValueError:
        raise net.fail("ipv6", "must be an IPv6 prefix such as fd7a:115c:a1e0::/48") from None
    peers_doc = r.obj("peers")
    if len(peers_doc) > MAX_PEERS:
        raise r.fail("peers", f"more than {MAX_PEERS} peers")
    peers: dict[str, Assignment] = {}
    for peer_name, assignment in peers_doc.items():
        if not NAME_RE.match(peer_name):
            raise r.fail("peers", f"invalid peer name {peer_name[:80]!r}")
        peers[peer_name] = _parse_assignment(assignment, name, peer_name)
    relays = r.items("relays", MAX_RELAYS, default=[])
    revoked = r.items("revoked", MAX_REVOKED, default=[])
    return StateDoc(
        network_id=r.text("network_id", NETWORK_ID_RE),
        serial=r.integer("serial", 1, 2**63 - 1),
        root_version=r.integer("root_version", 1, 1_000_000),
        expires=r.time("expires"),
        ipv4_cidr=v4,
        ipv6_prefix=v6,
        domain=net.text("domain", DOMAIN_RE),
        policy_sha256=r.text("policy_sha256", SHA256_RE),
        peers=peers,
        relays=tuple(_parse_relay(x, name, i) for i, x in enumerate(relays)),
        stun=r.str_list("stun", MAX_STUN, HOSTPORT_RE),
        revoked=tuple(_parse_revoked(x, name, i) for i, x in enumerate(revoked)),
        pinned=_parse_pinned(r.doc["pinned"], name) if "pinned" in r.doc else {},
        authkeys=_parse_authkeys(r.obj("authkeys"), name, v4) if "authkeys" in r.doc else {},
    )


def marshal_state(doc: StateDoc) -> bytes:
    peers: dict[str, Any] = {}
    for peer_name in sorted(doc.peers):
        a = doc.peers[peer_name]
        entry: dict[str, Any] = {"record_sha256": a.record_sha256,
                                 "addresses": [str(x) for x in a.addresses]}
        if a.tags:
            entry["tags"] = list(a.tags)
        if a.owner:
            entry["owner"] = a.owner
        if a.routes:
            entry["routes"] = [str(x) for x in routing.canonical(a.routes)]
        if a.expires is not None:
            entry["expires"] = format_time(a.expires)
        peers[peer_name] = entry
    out: dict[str, Any] = {
        "type": STATE_TYPE,
        "network_id": doc.network_id,
        "serial": doc.serial,
        "root_version": doc.root_version,
        "expires": format_time(doc.expires),
        "network": {"ipv4": str(doc.ipv4_cidr), "ipv6": str(doc.ipv6_prefix), "domain": doc.domain},
        "policy_sha256": doc.policy_sha256,
        "peers": peers,
    }
    if doc.relays:
        out["relays"] = [
            {"name": x.name, "address": x.address}
            | ({"identity_key": x.identity_key.text()} if x.identity_key else {})
            for x in doc.relays
        ]
    if doc.stun:
        out["stun"] = list(doc.stun)
    if doc.revoked:
        out["revoked"] = [
            {"name": x.name, "identity_key": x.identity_key.text(), "wg_public_key": x.wg_public_key.b64(),
             "disco_key": x.disco_key.b64(), "addresses": [str(a) for a in x.addresses],
             "at": format_time(x.at)}
            for x in doc.revoked
        ]
    if doc.pinned:
        out["pinned"] = {path: doc.pinned[path] for path in sorted(doc.pinned)}
    if doc.authkeys:
        out["authkeys"] = {
            k.id: {"public_key": k.public_key.text(), "tags": list(k.tags), "pool": str(k.pool),
                   "expires": format_time(k.expires), "reusable": k.reusable}
            for k in sorted(doc.authkeys.values(), key=lambda k: k.id)
        }
    return strictjson.dumps(out)
