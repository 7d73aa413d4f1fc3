"""Tailscale's policy format -> Policy (pure).

Supported, with Tailscale's meaning: `groups`, `hosts`, `tagOwners`, `acls`
(action `accept`; `src`/`dst`, or their old names `users`/`ports`; `proto`) and
`tests` (`src`, `proto`, `accept`, `deny`). Keys are matched without regard to
case, as Tailscale's Go decoder does, so old policies written with `ACLs`,
`Action`, `Users`, `Ports` still load.

A Tailscale feature meshctl does not have (`ssh`, `grants`, `autoApprovers`,
`autogroup:internet`, ...) is refused with an UnsupportedFeatureError that
names it and its `policy.hujson:line:col`, so a policy is never enforced
with a part of it silently ignored. Any other unknown key is refused too.

Aliases are resolved as far as the policy alone allows: a group becomes its
users, a host its prefix. Users and tags are matched against devices later, by
compile.py, with the NetMap.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, TypeAlias

from meshctl.errors import ParseError
from meshctl.policy import hujson
from meshctl.policy.hujson import Array, Document, Member, Node, Object, Scalar
from meshctl.policy.protocols import (
    ALL_PORTS,
    DEFAULT_PROTOS,
    MAX_PORT,
    PORT_PROTOS,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    PortRange,
)

Prefix: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

# Tailscale's protocol names (https://tailscale.com/kb/1337/policy-syntax#proto).
PROTO_NAMES: Final[Mapping[str, int]] = {
    "icmp": PROTO_ICMP,
    "igmp": 2,
    "ipv4": 4,
    "ip-in-ip": 4,
    "tcp": PROTO_TCP,
    "egp": 8,
    "igp": 9,
    "udp": PROTO_UDP,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "ipv6-icmp": PROTO_ICMPV6,
    "icmpv6": PROTO_ICMPV6,
    "sctp": PROTO_SCTP,
}

# Tailscale top-level sections meshctl does not implement (lower-case -> spelling).
UNSUPPORTED_SECTIONS: Final[Mapping[str, str]] = {
    name.lower(): name
    for name in (
        "ssh",
        "sshTests",
        "grants",
        "autoApprovers",
        "nodeAttrs",
        "derpMap",
        "postures",
        "defaultSrcPosture",
        "ipsets",
        "randomizeClientPort",
        "disableIPv4",
        "OneCGNATRoute",
        "attrConfig",
    )
}
UNSUPPORTED_ACL_FIELDS: Final[Mapping[str, str]] = {n.lower(): n for n in ("srcPosture", "via", "app", "ip")}
SUPPORTED_AUTOGROUPS: Final = frozenset({"autogroup:member", "autogroup:tagged", "autogroup:self"})
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
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_PORT_RE: Final = re.compile(r"[0-9]{1,5}")


class PolicyError(ParseError):
    """The policy is valid HuJSON but not a policy meshctl can enforce."""

    def __init__(self, filename: str, line: int, col: int, reason: str) -> None:
        super().__init__(f"{filename}:{line}:{col}: {reason}")
        self.filename = filename
        self.line = line
        self.col = col
        self.reason = reason


class UnsupportedFeatureError(PolicyError):
    """A Tailscale policy feature that meshctl does not implement."""

    def __init__(self, filename: str, line: int, col: int, feature: str) -> None:
        super().__init__(filename, line, col, f"Tailscale policy feature {feature!r} is not supported by meshctl")
        self.feature = feature


class AliasKind(enum.Enum):
    ANY = "*"
    USER = "user"
    GROUP = "group"
    TAG = "tag"
    HOST = "host"  # a `hosts` alias, resolved to its prefix
    PREFIX = "prefix"  # an IP or CIDR written in place
    MEMBER = "autogroup:member"  # every device owned by a user (not tagged)
    TAGGED = "autogroup:tagged"  # every tagged device
    SELF = "autogroup:self"  # dst only: the source user's own devices


@dataclass(frozen=True, slots=True)
class Alias:
    """One entry of a `src` or `dst` list, as written, with what it resolved to."""

    kind: AliasKind
    text: str
    users: tuple[str, ...] = ()  # USER: (the user,); GROUP: its members
    prefix: Prefix | None = None  # HOST, PREFIX


@dataclass(frozen=True, slots=True)
class Destination:
    target: Alias
    ports: tuple[PortRange, ...]

    def __str__(self) -> str:
        return f"{self.target.text}:{','.join(str(p) for p in self.ports)}"


@dataclass(frozen=True, slots=True)
class AclRule:
    index: int  # position in `acls`, from 0
    line: int
    col: int
    sources: tuple[Alias, ...]
    destinations: tuple[Destination, ...]
    protos: tuple[int, ...]  # IP protocol numbers, sorted; DEFAULT_PROTOS when `proto` is absent

    @property
    def label(self) -> str:
        return f"acls[{self.index}] (line {self.line})"


@dataclass(frozen=True, slots=True)
class TestTarget:
    target: Alias
    port: int
    line: int
    col: int
    text: str


@dataclass(frozen=True, slots=True)
class PolicyTest:
    index: int
    line: int
    col: int
    src: Alias
    proto: int
    accept: tuple[TestTarget, ...]
    deny: tuple[TestTarget, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    filename: str
    groups: Mapping[str, tuple[str, ...]]
    hosts: Mapping[str, Prefix]
    tag_owners: Mapping[str, tuple[str, ...]]
    acls: tuple[AclRule, ...]
    tests: tuple[PolicyTest, ...]

    def groups_of(self, user: str) -> tuple[str, ...]:
        return tuple(g for g, members in self.groups.items() if user in members)


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

    # -- sections -----------------------------------------------------------------------

    def parse(self) -> Policy:
        r = self.r
        top = r.obj(r.doc.root, "the policy")
        sections = r.fields(
            top,
            "the policy",
            ("acls", "groups", "hosts", "tagOwners", "tests"),
            UNSUPPORTED_SECTIONS,
        )
        # Definitions first, whatever their order in the file: acls and tests refer to them.
        if "groups" in sections:
            self.parse_groups(sections["groups"].value)
        if "hosts" in sections:
            self.parse_hosts(sections["hosts"].value)
        if "tagOwners" in sections:
            self.parse_tag_owners(sections["tagOwners"].value)
        acls: tuple[AclRule, ...] = ()
        if "acls" in sections:
            items = r.arr(sections["acls"].value, "acls").items
            acls = tuple(self.parse_acl(i, node) for i, node in enumerate(items))
        tests: tuple[PolicyTest, ...] = ()
        if "tests" in sections:
            items = r.arr(sections["tests"].value, "tests").items
            tests = tuple(self.parse_test(i, node) for i, node in enumerate(items))
        return Policy(r.doc.filename, self.groups, self.hosts, self.tag_owners, acls, tests)

    def parse_groups(self, node: Node) -> None:
        for member in self.r.obj(node, "groups").members:
            name = member.key
            if not name.startswith("group:") or not _NAME_RE.fullmatch(name[6:]):
                raise self.r.error(member.key_offset, f"group name {name!r} must look like 'group:NAME'")
            users: list[str] = []
            for user, offset in self.r.strings(member.value, f"group {name!r}"):
                if user.startswith(("group:", "tag:", "autogroup:")):
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
        sources = tuple(self.alias(text, offset, "src") for text, offset in r.strings(src.value, f"{what} src"))
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
            number = node.value
        else:
            text = self.r.text(node, f"{what} proto").strip().lower()
            if text == "":
                return DEFAULT_PROTOS
            if text in PROTO_NAMES:
                return (PROTO_NAMES[text],)
            if not text.isdigit() or len(text) > 3:
                raise self.r.error(node.offset, f"{what}: unknown protocol {text!r}")
            number = int(text)
        if not 0 <= number <= 255:
            raise self.r.error(node.offset, f"{what}: protocol number {number} is not 0-255")
        return (number,)

    def alias(self, text: str, offset: int, role: str) -> Alias:
        """Resolve one src/dst/test name; `role` is "src", "dst" or "test"."""
        r = self.r
        if text == "*":
            if role == "test":
                raise r.error(offset, "a test names one user, tag, host or IP, not '*'")
            return Alias(AliasKind.ANY, text)
        if text.startswith("autogroup:"):
            if text not in SUPPORTED_AUTOGROUPS:
                raise r.unsupported(offset, text)
            if text == "autogroup:self" and role != "dst":
                raise r.error(offset, "autogroup:self can only be a destination")
            if role == "test":
                raise r.error(offset, f"a test names one user, tag, host or IP, not {text!r}")
            kinds = {"autogroup:member": AliasKind.MEMBER, "autogroup:tagged": AliasKind.TAGGED}
            return Alias(kinds.get(text, AliasKind.SELF), text)
        if text.startswith("group:"):
            if text not in self.groups:
                raise r.error(offset, f"group {text!r} is not defined in 'groups'")
            return Alias(AliasKind.GROUP, text, users=self.groups[text])
        if text.startswith("tag:"):
            if text not in self.tag_owners:
                raise r.error(offset, f"tag {text!r} is not defined in 'tagOwners'")
            return Alias(AliasKind.TAG, text)
        if text in self.hosts:
            return Alias(AliasKind.HOST, text, prefix=self.hosts[text])
        prefix = _parse_prefix(text)
        if prefix is not None:
            return Alias(AliasKind.PREFIX, text, prefix=prefix)
        if "@" in text and not any(c.isspace() or c == ":" for c in text):
            return Alias(AliasKind.USER, text, users=(text,))
        raise r.error(offset, f"{text!r} is not a user, group, tag, host or IP")

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

    def ports(self, text: str, offset: int) -> tuple[PortRange, ...]:
        if text == "*":
            return ALL_PORTS
        ranges: list[PortRange] = []
        for part in text.split(","):
            first, dash, last = part.strip().partition("-")
            if not _PORT_RE.fullmatch(first) or (dash and not _PORT_RE.fullmatch(last)):
                raise self.r.error(offset, f"bad port {part!r}: use '*', 22, 80,443 or 1000-2000")
            lo, hi = int(first), int(last) if dash else int(first)
            if hi > MAX_PORT or lo > hi:
                raise self.r.error(offset, f"bad port range {part!r}")
            ranges.append(PortRange(lo, hi))
        return tuple(ranges)

    def destination(self, text: str, offset: int, protos: tuple[int, ...]) -> Destination:
        target, port_text = self.split_target(text, offset)
        ports = self.ports(port_text, offset)
        if ports != ALL_PORTS and protos != DEFAULT_PROTOS and not set(protos) <= PORT_PROTOS:
            raise self.r.error(offset, f"destination {text!r}: ports need proto tcp, udp or sctp")
        return Destination(self.alias(target, offset, "dst"), ports)

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
        src = self.alias(r.text(src_node, f"{what} src"), src_node.offset, "test")
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
        return TestTarget(self.alias(target, offset, "test"), int(port_text), line, col, text)


def parse_policy(text: str, filename: str = hujson.DEFAULT_FILENAME) -> Policy:
    """Policy text (HuJSON) -> Policy, or a ParseError subclass naming file:line:col.

    Raises HujsonError for syntax, UnsupportedFeatureError for a Tailscale feature
    meshctl lacks, PolicyError for anything else wrong.
    """
    return _PolicyParser(hujson.parse_document(text, filename)).parse()
