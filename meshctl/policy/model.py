"""What a parsed policy holds (pure data; parse.py builds it, compile.py consumes it).

`acls` and `grants` are kept as written (for messages and tests); `Policy.rules` is both in
one form, `AccessRule`: sources, and targets that pair destinations with a Capability (the
protocols and ports let through). The compiler reads only `rules`, so an ACL and the grant
that says the same thing compile to the same filter.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from meshctl.errors import ParseError
from meshctl.policy.addrset import AddrSet, Prefix
from meshctl.policy.protocols import Capability, PortRange

SECTION_ORDER: Final = ("acls", "grants")  # the order rules are numbered and matched in


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
    IPSET = "ipset"  # an `ipsets` entry, resolved to its addresses
    MEMBER = "autogroup:member"  # every device owned by a user (not tagged)
    TAGGED = "autogroup:tagged"  # every tagged device
    SELF = "autogroup:self"  # dst only: the source's owner's own devices
    INTERNET = "autogroup:internet"  # dst only: public addresses, reached through exit nodes


# Kinds that name addresses, not devices.
ADDRESS_KINDS: Final = frozenset({AliasKind.HOST, AliasKind.PREFIX, AliasKind.IPSET, AliasKind.INTERNET})


@dataclass(frozen=True, slots=True)
class Alias:
    """One entry of a `src` or `dst` list, as written, with what it resolved to."""

    kind: AliasKind
    text: str
    users: tuple[str, ...] = ()  # USER: (the user,); GROUP: its members
    prefix: Prefix | None = None  # HOST, PREFIX
    spans: AddrSet = ()  # every kind in ADDRESS_KINDS: the addresses it names

    @property
    def names_addresses(self) -> bool:
        return self.kind in ADDRESS_KINDS


@dataclass(frozen=True, slots=True)
class Destination:
    """An ACL `dst` entry: a target and its ports."""

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
class Grant:
    index: int  # position in `grants`, from 0
    line: int
    col: int
    sources: tuple[Alias, ...]
    destinations: tuple[Alias, ...]
    ip: tuple[Capability, ...]  # one per protocol set, ports merged (see merge_capabilities)
    ip_text: tuple[str, ...]  # as written, for messages

    @property
    def label(self) -> str:
        return f"grants[{self.index}] (line {self.line})"


@dataclass(frozen=True, slots=True)
class Target:
    """Destinations and what may reach them."""

    aliases: tuple[Alias, ...]
    capability: Capability


@dataclass(frozen=True, slots=True)
class AccessRule:
    """An ACL or a grant, in the one form the compiler reads."""

    section: str  # "acls" or "grants"
    index: int
    line: int
    sources: tuple[Alias, ...]
    targets: tuple[Target, ...]
    text: str  # "group:dev -> tag:prod:443", for messages

    @property
    def label(self) -> str:
        return f"{self.section}[{self.index}] (line {self.line})"


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
class RouteApproval:
    """One `autoApprovers.routes` entry: routes inside `spans` advertised by `approvers`."""

    text: str
    spans: AddrSet
    approvers: tuple[Alias, ...]
    line: int


@dataclass(frozen=True, slots=True)
class AutoApprovers:
    routes: tuple[RouteApproval, ...] = ()
    exit_node: tuple[Alias, ...] = ()


@dataclass(frozen=True, slots=True)
class Policy:
    filename: str
    groups: Mapping[str, tuple[str, ...]]
    hosts: Mapping[str, Prefix]
    tag_owners: Mapping[str, tuple[str, ...]]
    acls: tuple[AclRule, ...]
    tests: tuple[PolicyTest, ...]
    grants: tuple[Grant, ...] = ()
    ipsets: Mapping[str, AddrSet] = field(default_factory=dict)
    auto_approvers: AutoApprovers = AutoApprovers()
    warnings: tuple[str, ...] = ()  # sections loaded but not enforced, one line each

    def groups_of(self, user: str) -> tuple[str, ...]:
        return tuple(g for g, members in self.groups.items() if user in members)

    @property
    def rules(self) -> tuple[AccessRule, ...]:
        """`acls` then `grants`, each in file order: the order a decision names the first match in."""
        acls = tuple(
            AccessRule(
                "acls", a.index, a.line, a.sources,
                tuple(Target((d.target,), Capability(a.protos, d.ports)) for d in a.destinations),
                f"{_texts(a.sources)} -> {', '.join(str(d) for d in a.destinations)}",
            )
            for a in self.acls
        )
        grants = tuple(
            AccessRule(
                "grants", g.index, g.line, g.sources,
                tuple(Target(g.destinations, cap) for cap in g.ip),
                f"{_texts(g.sources)} -> {_texts(g.destinations)} (ip: {', '.join(g.ip_text)})",
            )
            for g in self.grants
        )
        return acls + grants


def _texts(aliases: tuple[Alias, ...]) -> str:
    return ", ".join(a.text for a in aliases)
