"""Tailscale's policy format -> Policy (pure).

Supported, with Tailscale's meaning: `groups`, `hosts`, `tagOwners`, `ipsets`, `acls` (action
`accept`; `src`/`dst`, or their old names `users`/`ports`; `proto`), `grants` (`src`, `dst`,
network-level `ip`), `autoApprovers` (`routes`, `exitNode`) and `tests` (`src`, `proto`,
`accept`, `deny`). Keys are matched without regard to case, as Tailscale's Go decoder does,
so old policies written with `ACLs`, `Action`, `Users`, `Ports` still load.

`ssh` and `sshTests` grant no network access: they load with a warning (meshctl does not run
Tailscale SSH). Any other Tailscale feature meshctl does not have (`nodeAttrs`, `postures`, a
grant's `app`, `via` or `srcPosture`, `autogroup:shared`, ...) is refused with an
UnsupportedFeatureError that names it and its `policy.hujson:line:col`, so a policy is never
enforced with a part of it silently ignored. Any other unknown key is refused too.

Aliases are resolved as far as the policy alone allows: a group becomes its users, a host,
an IP set or `autogroup:internet` its addresses. Users and tags are matched against devices
later, by compile.py.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Final

from meshctl.errors import UsageError
from meshctl.policy import addrset, hujson
from meshctl.policy.addrset import AddrSet, Prefix
from meshctl.policy.hujson import Array, Document, Member, Node, Object, Scalar
from meshctl.policy.model import (
    AclRule,
    Alias,
    AliasKind,
    AutoApprovers,
    Destination,
    Grant,
    Policy,
    PolicyError,
    PolicyTest,
    RouteApproval,
    TestTarget,
    UnsupportedFeatureError,
)
from meshctl.policy.protocols import (
    DEFAULT_PROTOS,
    MAX_PORT,
    PROTO_NAMES,
    PROTO_TCP,
    Capability,
    check_ports_fit,
    merge_capabilities,
    parse_ip_capability,
    parse_ports,
    parse_proto,
)

__all__ = [  # the policy's types live in model.py; callers import them from here too
    "PROTO_NAMES", "AclRule", "Alias", "AliasKind", "Destination", "Grant", "Policy", "PolicyError",
    "PolicyTest", "Prefix", "TestTarget", "UnsupportedFeatureError", "parse_policy",
]

# Tailscale top-level sections meshctl does not implement (lower-case -> spelling).
UNSUPPORTED_SECTIONS: Final[Mapping[str, str]] = {
    name.lower(): name
    for name in (
        "nodeAttrs",
        "derpMap",
        "postures",
        "defaultSrcPosture",
        "randomizeClientPort",
        "disableIPv4",
        "OneCGNATRoute",
        "attrConfig",
    )
}
# Sections that grant no network access: loaded with a warning, their content not enforced.
IGNORED_SECTIONS: Final[Mapping[str, str]] = {"ssh": "ssh", "sshtests": "sshTests"}
UNSUPPORTED_ACL_FIELDS: Final[Mapping[str, str]] = {n.lower(): n for n in ("srcPosture", "via", "app", "ip")}
UNSUPPORTED_GRANT_FIELDS: Final[Mapping[str, str]] = {n.lower(): n for n in ("app", "via", "srcPosture")}
UNSUPPORTED_APPROVERS: Final[Mapping[str, str]] = {"services": "services"}
SUPPORTED_AUTOGROUPS: Final = frozenset(
    {"autogroup:member", "autogroup:tagged", "autogroup:self", "autogroup:internet"}
)
# autogroups that are only about who may own tags; harmless in tagOwners.
ROLE_AUTOGROUPS: Final = frozenset(
    {
        "autogroup:admin",
        "autogroup:owner",
        "autogroup:member",
        "autogroup:it-admin",
        "autogroup:network-admin",
        "autogroup:billing-admin",
        "autogroup:auditor",
    }
)
_AUTOGROUP_KINDS: Final = {
    "autogroup:member": AliasKind.MEMBER,
    "autogroup:tagged": AliasKind.TAGGED,
    "autogroup:self": AliasKind.SELF,
    "autogroup:internet": AliasKind.INTERNET,
}
# Where an alias is read: a rule's source or destination, a test's endpoint, an IP set's
# member, or a route approver. Each allows a different subset of the names.
SRC, DST, TEST, IPSET, APPROVER = "src", "dst", "test", "ipset", "approver"
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_PORT_RE: Final = re.compile(r"[0-9]{1,5}")


def _internet() -> AddrSet:
    """`autogroup:internet`: public addresses. Not the private, shared (CGNAT, where the mesh
    lives), loopback, link-local, multicast and reserved IPv4 ranges; of IPv6, the global
    unicast block 2000::/3 (ULA and link-local lie outside it)."""
    not_public = addrset.of(
        ipaddress.ip_network(n)
        for n in ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
                  "172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/3")
    )
    return addrset.subtract(addrset.of([ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("2000::/3")]),
                            not_public)


INTERNET: Final = _internet()


class _Reader:
    """Walks the HuJSON tree; every refusal names the offending node's position."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc

    def error(self, offset: int, reason: str) -> PolicyError:
        line, col = self.doc.line_col(offset)
        return PolicyError(self.doc.filename, line, col, reason)

    def unsupported(self, offset: int, feature: str) -> UnsupportedFeatureError:
        line, col = self.doc.line_col(offset)
        return UnsupportedFeatureError(self.doc.filename, line, col, feature)

    def obj(self, node: Node, what: str) -> Object:
        if not isinstance(node, Object):
            raise self.error(node.offset, f"{what} must be an object")
        return node

    def arr(self, node: Node, what: str) -> Array:
        if not isinstance(node, Array):
            raise self.error(node.offset, f"{what} must be a list")
        return node

    def text(self, node: Node, what: str) -> str:
        if not isinstance(node, Scalar) or not isinstance(node.value, str):
            raise self.error(node.offset, f"{what} must be a string")
        return node.value

    def strings(self, node: Node, what: str) -> list[tuple[str, int]]:
        return [(self.text(item, f"each of {what}"), item.offset) for item in self.arr(node, what).items]

    def fields(
        self, obj: Object, what: str, known: tuple[str, ...], unsupported: Mapping[str, str]
    ) -> dict[str, Member]:
        """Members by canonical name; keys match case-insensitively like Go's JSON decoder."""
        canonical = {k.lower(): k for k in known}
        out: dict[str, Member] = {}
        for member in obj.members:
            lower = member.key.lower()
            if lower in unsupported:
                raise self.unsupported(member.key_offset, unsupported[lower])
            if lower not in canonical:
                raise self.error(member.key_offset, f"unknown key {member.key!r} in {what}")
            name = canonical[lower]
            if name in out:
                raise self.error(member.key_offset, f"duplicate key {member.key!r} in {what}")
            out[name] = member
        return out


def _parse_prefix(text: str) -> Prefix | None:
    try:
        if "/" in text:
            return ipaddress.ip_network(text, strict=False)
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    return ipaddress.ip_network(addr)


class _PolicyParser:
    def __init__(self, doc: Document) -> None:
        self.r = _Reader(doc)
        self.groups: dict[str, tuple[str, ...]] = {}
        self.hosts: dict[str, Prefix] = {}
        self.tag_owners: dict[str, tuple[str, ...]] = {}
        self.ipset_entries: dict[str, list[tuple[str, str, int]]] = {}  # name -> (op, target, offset)
        self.ipsets: dict[str, AddrSet] = {}
        self.resolving: list[str] = []  # the ipsets being resolved, to name a cycle
        self.warnings: list[str] = []

    # -- sections -----------------------------------------------------------------------

    def parse(self) -> Policy:
        r = self.r
        top = r.obj(r.doc.root, "the policy")
        for member in top.members:
            if member.key.lower() in IGNORED_SECTIONS:
                self.warnings.append(
                    f"{r.doc.where(member.key_offset)}: {IGNORED_SECTIONS[member.key.lower()]!r} is ignored: "
                    "meshctl does not run Tailscale SSH (the section grants no network access)"
                )
        sections = r.fields(
            top,
            "the policy",
            ("acls", "grants", "groups", "hosts", "tagOwners", "ipsets", "autoApprovers", "tests",
             *IGNORED_SECTIONS.values()),
            UNSUPPORTED_SECTIONS,
        )
        # Definitions first, whatever their order in the file: rules and tests refer to them.
        if "groups" in sections:
            self.parse_groups(sections["groups"].value)
        if "hosts" in sections:
            self.parse_hosts(sections["hosts"].value)
        if "tagOwners" in sections:
            self.parse_tag_owners(sections["tagOwners"].value)
        if "ipsets" in sections:
            self.parse_ipsets(sections["ipsets"].value)
        acls = tuple(self.parse_acl(i, n) for i, n in enumerate(self.items(sections, "acls")))
        grants = tuple(self.parse_grant(i, n) for i, n in enumerate(self.items(sections, "grants")))
        approvers = AutoApprovers()
        if "autoApprovers" in sections:
            approvers = self.parse_auto_approvers(sections["autoApprovers"].value)
        tests = tuple(self.parse_test(i, n) for i, n in enumerate(self.items(sections, "tests")))
        return Policy(r.doc.filename, self.groups, self.hosts, self.tag_owners, acls, tests, grants,
                      self.ipsets, approvers, tuple(self.warnings))

    def items(self, sections: Mapping[str, Member], name: str) -> tuple[Node, ...]:
        if name not in sections:
            return ()
        return self.r.arr(sections[name].value, name).items

    def parse_groups(self, node: Node) -> None:
        for member in self.r.obj(node, "groups").members:
            name = member.key
            if not name.startswith("group:") or not _NAME_RE.fullmatch(name[6:]):
                raise self.r.error(member.key_offset, f"group name {name!r} must look like 'group:NAME'")
            users: list[str] = []
            for user, offset in self.r.strings(member.value, f"group {name!r}"):
                if user.startswith(("group:", "tag:", "autogroup:", "ipset:")):
                    raise self.r.error(offset, f"group {name!r}: {user!r}: a group may contain only users")
                if not user or user == "*" or any(c.isspace() for c in user):
                    raise self.r.error(offset, f"group {name!r}: {user!r} is not a user name")
                users.append(user)
            self.groups[name] = tuple(users)

    def parse_hosts(self, node: Node) -> None:
        for member in self.r.obj(node, "hosts").members:
            name = member.key
            if not _NAME_RE.fullmatch(name):
                raise self.r.error(member.key_offset, f"host name {name!r}: use letters, digits, '-', '_' and '.'")
            value = self.r.text(member.value, f"host {name!r}")
            prefix = _parse_prefix(value)
            if prefix is None:
                raise self.r.error(member.value.offset, f"host {name!r}: {value!r} is not an IP or CIDR")
            self.hosts[name] = prefix

    def parse_tag_owners(self, node: Node) -> None:
        members = self.r.obj(node, "tagOwners").members
        names = {m.key for m in members}
        for member in members:
            tag = member.key
            if not tag.startswith("tag:") or not _NAME_RE.fullmatch(tag[4:]):
                raise self.r.error(member.key_offset, f"tag name {tag!r} must look like 'tag:NAME'")
            owners: list[str] = []
            for owner, offset in self.r.strings(member.value, f"tagOwners {tag!r}"):
                if owner.startswith("group:") and owner not in self.groups:
                    raise self.r.error(offset, f"tagOwners {tag!r}: group {owner!r} is not defined")
                if owner.startswith("tag:") and owner not in names:
                    raise self.r.error(offset, f"tagOwners {tag!r}: tag {owner!r} is not defined")
                if owner.startswith("autogroup:") and owner not in ROLE_AUTOGROUPS:
                    raise self.r.unsupported(offset, owner)
                owners.append(owner)
            self.tag_owners[tag] = tuple(owners)

    # -- ipsets ---------------------------------------------------------------------------

    def parse_ipsets(self, node: Node) -> None:
        """`"ipset:NAME": ["add 10.0.0.0/8", "remove 10.1.0.0/16", ...]`, processed in order; the
        operation may be left out only where a set just adds. Members are IPs, CIDRs, hosts,
        other IP sets and `autogroup:internet`."""
        members = self.r.obj(node, "ipsets").members
        for member in members:
            name = member.key
            if not name.startswith("ipset:") or not _NAME_RE.fullmatch(name[6:]):
                raise self.r.error(member.key_offset, f"IP set name {name!r} must look like 'ipset:NAME'")
            if name in self.ipset_entries:
                raise self.r.error(member.key_offset, f"duplicate IP set {name!r}")
            raw = self.r.strings(member.value, f"IP set {name!r}")
            explicit = any(text.split(None, 1)[0:1] == ["remove"] for text, _ in raw)
            entries = []
            for text, offset in raw:
                op, _, target = text.strip().partition(" ")
                if op not in ("add", "remove"):
                    if explicit:
                        raise self.r.error(offset, f"IP set {name!r}: {text!r}: start each entry with 'add' or "
                                                   "'remove' where the set removes anything")
                    op, target = "add", text.strip()
                entries.append((op, target.strip(), offset))
            self.ipset_entries[name] = entries
        for name in self.ipset_entries:
            self.ipset_spans(name, 0)

    def ipset_spans(self, name: str, offset: int) -> AddrSet:
        if name in self.ipsets:
            return self.ipsets[name]
        if name not in self.ipset_entries:
            raise self.r.error(offset, f"IP set {name!r} is not defined in 'ipsets'")
        if name in self.resolving:
            cycle = " -> ".join([*self.resolving[self.resolving.index(name):], name])
            raise self.r.error(offset, f"IP sets refer to each other in a circle: {cycle}")
        self.resolving.append(name)
        spans: AddrSet = ()
        added: list[tuple[int, int, int]] = []  # adds since the last remove, merged in one go
        for op, target, entry_offset in self.ipset_entries[name]:
            got = self.alias(target, entry_offset, IPSET).spans
            if op == "add":
                added += got
            else:
                spans = addrset.subtract(addrset.merge((*spans, *added)), got)
                added = []
        spans = addrset.merge((*spans, *added))
        self.resolving.pop()
        self.ipsets[name] = spans
        return spans

    # -- acls ---------------------------------------------------------------------------

    def parse_acl(self, index: int, node: Node) -> AclRule:
        r = self.r
        what = f"acls[{index}]"
        obj = r.obj(node, what)
        f = r.fields(obj, what, ("action", "src", "dst", "proto", "users", "ports"), UNSUPPORTED_ACL_FIELDS)
        line, col = r.doc.line_col(obj.offset)
        if "action" not in f:
            raise r.error(obj.offset, f"{what}: missing 'action' (meshctl knows only \"accept\")")
        action = r.text(f["action"].value, f"{what} action")
        if action != "accept":
            raise r.error(f["action"].value.offset, f'{what}: action {action!r}: only "accept" exists')
        src = self.old_or_new(f, "src", "users", what, obj)
        dst = self.old_or_new(f, "dst", "ports", what, obj)
        protos = self.proto(f["proto"].value, what) if "proto" in f else DEFAULT_PROTOS
        sources = tuple(self.alias(text, offset, SRC) for text, offset in r.strings(src.value, f"{what} src"))
        destinations = tuple(
            self.destination(text, offset, protos) for text, offset in r.strings(dst.value, f"{what} dst")
        )
        if not sources:
            raise r.error(src.value.offset, f"{what}: src is empty")
        if not destinations:
            raise r.error(dst.value.offset, f"{what}: dst is empty")
        return AclRule(index, line, col, sources, destinations, protos)

    def old_or_new(self, f: Mapping[str, Member], new: str, old: str, what: str, obj: Object) -> Member:
        if new in f and old in f:
            raise self.r.error(f[old].key_offset, f"{what}: both {new!r} and its old name {old!r}")
        member = f.get(new) or f.get(old)
        if member is None:
            raise self.r.error(obj.offset, f"{what}: missing {new!r}")
        return member

    def proto(self, node: Node, what: str) -> tuple[int, ...]:
        if isinstance(node, Scalar) and isinstance(node.value, int) and not isinstance(node.value, bool):
            if not 0 <= node.value <= 255:
                raise self.r.error(node.offset, f"{what}: protocol number {node.value} is not 0-255")
            return (node.value,)
        text = self.r.text(node, f"{what} proto")
        if text.strip() == "":
            return DEFAULT_PROTOS
        try:
            return (parse_proto(text),)
        except ValueError as exc:
            raise self.r.error(node.offset, f"{what}: {exc}") from None

    def alias(self, text: str, offset: int, role: str) -> Alias:
        """Resolve one name where `role` (SRC, DST, TEST, IPSET, APPROVER) allows it."""
        r = self.r
        if text == "*":
            if role == TEST:
                raise r.error(offset, "a test names one user, group, tag, host or IP, not '*'")
            if role in (IPSET, APPROVER):
                raise r.error(offset, f"{_ROLE_NAMES[role]} cannot be '*'")
            return Alias(AliasKind.ANY, text)
        if text.startswith("autogroup:"):
            return self.autogroup(text, offset, role)
        if text.startswith("ipset:"):
            if role in (TEST, APPROVER):
                raise r.error(offset, f"{_ROLE_NAMES[role]} cannot be an IP set ({text!r})")
            return Alias(AliasKind.IPSET, text, spans=self.ipset_spans(text, offset))
        if text.startswith(("group:", "tag:")) and role == IPSET:
            raise r.error(offset, f"{text!r}: an IP set holds addresses, not groups, tags or users")
        if text.startswith("group:"):
            if text not in self.groups:
                raise r.error(offset, f"group {text!r} is not defined in 'groups'")
            return Alias(AliasKind.GROUP, text, users=self.groups[text])
        if text.startswith("tag:"):
            if text not in self.tag_owners:
                raise r.error(offset, f"tag {text!r} is not defined in 'tagOwners'")
            return Alias(AliasKind.TAG, text)
        if text in self.hosts:
            if role == APPROVER:
                raise r.error(offset, f"{_ROLE_NAMES[role]} names users, groups or tags, not host {text!r}")
            host = self.hosts[text]
            return Alias(AliasKind.HOST, text, prefix=host, spans=addrset.of([host]))
        written = _parse_prefix(text)
        if written is not None:
            if role == APPROVER:
                raise r.error(offset, f"{_ROLE_NAMES[role]} names users, groups or tags, not {text!r}")
            return Alias(AliasKind.PREFIX, text, prefix=written, spans=addrset.of([written]))
        if "@" in text and not any(c.isspace() or c == ":" for c in text):
            if role == IPSET:
                raise r.error(offset, f"{text!r}: an IP set holds addresses, not groups, tags or users")
            return Alias(AliasKind.USER, text, users=(text,))
        raise r.error(offset, f"{text!r} is not a user, group, tag, host or IP (nor an 'ipset:' name)")

    def autogroup(self, text: str, offset: int, role: str) -> Alias:
        r = self.r
        if text not in SUPPORTED_AUTOGROUPS:
            raise r.unsupported(offset, text)
        kind = _AUTOGROUP_KINDS[text]
        if role == TEST:
            raise r.error(offset, f"a test names one user, group, tag, host or IP, not {text!r}")
        if kind is AliasKind.SELF and role != DST:
            raise r.error(offset, "autogroup:self can only be a destination")
        if kind is AliasKind.INTERNET:
            if role not in (DST, IPSET):
                raise r.error(offset, "autogroup:internet can only be a destination (or in an IP set)")
            return Alias(kind, text, spans=INTERNET)
        if role == IPSET:
            raise r.error(offset, f"{text!r}: an IP set holds addresses; autogroup:internet is the only autogroup "
                                  "it takes")
        return Alias(kind, text)

    def split_target(self, text: str, offset: int) -> tuple[str, str]:
        if text.startswith("["):  # "[fd7a::1]:22"
            end = text.find("]:")
            if end < 0:
                raise self.r.error(offset, f"destination {text!r}: expected '[IPv6]:PORTS'")
            return text[1:end], text[end + 2 :]
        target, sep, ports = text.rpartition(":")
        if not sep or not target:
            raise self.r.error(offset, f"destination {text!r} needs ':PORTS' (for example 'tag:prod:443' or '*:*')")
        return target, ports

    def destination(self, text: str, offset: int, protos: tuple[int, ...]) -> Destination:
        target, port_text = self.split_target(text, offset)
        try:
            ports = parse_ports(port_text)
            check_ports_fit(protos, ports)
        except ValueError as exc:
            raise self.r.error(offset, f"destination {text!r}: {exc}") from None
        return Destination(self.alias(target, offset, DST), ports)

    # -- grants ---------------------------------------------------------------------------

    def parse_grant(self, index: int, node: Node) -> Grant:
        r = self.r
        what = f"grants[{index}]"
        obj = r.obj(node, what)
        f = r.fields(obj, what, ("src", "dst", "ip"), UNSUPPORTED_GRANT_FIELDS)
        line, col = r.doc.line_col(obj.offset)
        for key in ("src", "dst", "ip"):
            if key not in f:
                why = " (meshctl grants network access: 'app' is not supported)" if key == "ip" else ""
                raise r.error(obj.offset, f"{what}: missing {key!r}{why}")
        lists = {key: r.strings(f[key].value, f"{what} {key}") for key in ("src", "dst", "ip")}
        for key, items in lists.items():
            if not items:
                raise r.error(f[key].value.offset, f"{what}: {key} is empty")
        sources = tuple(self.alias(text, offset, SRC) for text, offset in lists["src"])
        destinations = tuple(self.grant_destination(text, offset) for text, offset in lists["dst"])
        ip = merge_capabilities(self.capability(text, offset, what) for text, offset in lists["ip"])
        return Grant(index, line, col, sources, destinations, ip, tuple(text for text, _ in lists["ip"]))

    def grant_destination(self, text: str, offset: int) -> Alias:
        try:
            return self.alias(text, offset, DST)
        except PolicyError:
            head, sep, tail = text.rpartition(":")
            if sep and head and (tail == "*" or _PORT_RE.fullmatch(tail.split("-")[0].split(",")[0])):
                raise self.r.error(offset, f"grant destination {text!r}: a grant's dst names no ports; "
                                           f"write {head!r} and put the ports in 'ip' (e.g. \"tcp:443\")") from None
            raise

    def capability(self, text: str, offset: int, what: str) -> Capability:
        try:
            return parse_ip_capability(text)
        except ValueError as exc:
            raise self.r.error(offset, f"{what} ip {text!r}: {exc}") from None

    # -- autoApprovers --------------------------------------------------------------------

    def parse_auto_approvers(self, node: Node) -> AutoApprovers:
        """`{"routes": {"CIDR": [approvers]}, "exitNode": [approvers]}`: who may have a route
        (inside the CIDR) or exit-node use approved without an admin naming it."""
        r = self.r
        f = r.fields(r.obj(node, "autoApprovers"), "autoApprovers", ("routes", "exitNode"), UNSUPPORTED_APPROVERS)
        routes: list[RouteApproval] = []
        if "routes" in f:
            for member in r.obj(f["routes"].value, "autoApprovers routes").members:
                spans = self.route_key(member.key, member.key_offset)
                approvers = self.approvers(member.value, f"autoApprovers routes {member.key!r}")
                routes.append(RouteApproval(member.key, spans, approvers, r.doc.line_col(member.key_offset)[0]))
        exit_node = self.approvers(f["exitNode"].value, "autoApprovers exitNode") if "exitNode" in f else ()
        return AutoApprovers(tuple(routes), exit_node)

    def route_key(self, text: str, offset: int) -> AddrSet:
        if not (text.startswith("ipset:") or text in self.hosts or _parse_prefix(text) is not None):
            raise self.r.error(offset, f"autoApprovers routes: {text!r} is not a CIDR, host or IP set")
        return self.alias(text, offset, IPSET).spans

    def approvers(self, node: Node, what: str) -> tuple[Alias, ...]:
        return tuple(self.alias(text, offset, APPROVER) for text, offset in self.r.strings(node, what))

    # -- tests --------------------------------------------------------------------------

    def parse_test(self, index: int, node: Node) -> PolicyTest:
        r = self.r
        what = f"tests[{index}]"
        obj = r.obj(node, what)
        f = r.fields(obj, what, ("src", "proto", "accept", "deny"), {})
        line, col = r.doc.line_col(obj.offset)
        if "src" not in f:
            raise r.error(obj.offset, f"{what}: missing 'src'")
        src_node = f["src"].value
        src = self.alias(r.text(src_node, f"{what} src"), src_node.offset, TEST)
        proto = PROTO_TCP
        if "proto" in f:
            protos = self.proto(f["proto"].value, what)
            if len(protos) != 1:
                raise r.error(f["proto"].value.offset, f"{what}: name one protocol")
            proto = protos[0]
        lists = {
            key: tuple(self.test_target(t, o) for t, o in r.strings(f[key].value, f"{what} {key}")) if key in f else ()
            for key in ("accept", "deny")
        }
        return PolicyTest(index, line, col, src, proto, lists["accept"], lists["deny"])

    def test_target(self, text: str, offset: int) -> TestTarget:
        target, port_text = self.split_target(text, offset)
        if not _PORT_RE.fullmatch(port_text) or int(port_text) > MAX_PORT:
            raise self.r.error(offset, f"test destination {text!r} needs one port, like 'tag:prod:443'")
        line, col = self.r.doc.line_col(offset)
        return TestTarget(self.alias(target, offset, TEST), int(port_text), line, col, text)


_ROLE_NAMES: Final = {
    TEST: "a test's source or destination",
    IPSET: "an IP set member",
    APPROVER: "an auto-approver",
    SRC: "a source",
    DST: "a destination",
}


def endpoint_alias(policy: Policy, text: str) -> Alias:
    """A name as a policy test uses it (user, group, tag, host, IP or CIDR), resolved against
    `policy`: what `meshctl acl check` takes as SRC and DST. UsageError if it is none of them."""
    parser = _PolicyParser(hujson.parse_document("{}", "<argument>"))
    parser.groups, parser.hosts = dict(policy.groups), dict(policy.hosts)
    parser.tag_owners, parser.ipsets = dict(policy.tag_owners), dict(policy.ipsets)
    try:
        return parser.alias(text, 0, TEST)
    except PolicyError as exc:
        if exc.reason.startswith(f"{text!r} is not a user"):
            raise UsageError(f"{text!r} is neither a member name nor an IP address, user, group, tag or host") from None
        raise UsageError(exc.reason if text in exc.reason else f"{text!r}: {exc.reason}") from None


def parse_policy(text: str, filename: str = hujson.DEFAULT_FILENAME) -> Policy:
    """Policy text (HuJSON) -> Policy, or a ParseError subclass naming file:line:col.

    Raises HujsonError for syntax, UnsupportedFeatureError for a Tailscale feature
    meshctl lacks, PolicyError for anything else wrong. `Policy.warnings` lists the
    sections loaded but not enforced (`ssh`, `sshTests`).
    """
    return _PolicyParser(hujson.parse_document(text, filename)).parse()
