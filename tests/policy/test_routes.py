"""Approved routes and exit nodes in the compiler (fed directly: routes are not in the netmap yet),
and `autoApprovers` (issue 19, 5)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest
from policy_samples import make_netmap, make_peer

from meshctl.coord.netmap import NetMap
from meshctl.policy.approvers import AutoApproval, auto_approved
from meshctl.policy.compile import compile_filter
from meshctl.policy.evaluate import evaluate, run_policy_tests
from meshctl.policy.parse import PolicyError, UnsupportedFeatureError, parse_policy
from meshctl.policy.protocols import PortRange

LAN = ipaddress.ip_network("192.168.1.0/24")
LAB = ipaddress.ip_network("10.20.0.0/16")

POLICY = """{
  "groups": {"group:dev": ["dana@example.com"]},
  "tagOwners": {"tag:router": [], "tag:exit": [], "tag:prod": []},
  "hosts": {"printer": "192.168.1.50"},
  "acls": [
    {"action": "accept", "src": ["group:dev"], "dst": ["192.168.1.0/25:22", "printer:631"]},
    {"action": "accept", "src": ["tag:prod"], "dst": ["*:443"]},
  ],
  "grants": [
    {"src": ["group:dev"], "dst": ["autogroup:internet"], "ip": ["tcp:443", "udp:53"]},
    {"src": ["group:dev"], "dst": ["tag:router"], "ip": ["tcp:80"]},
  ],
  "tests": [
    {"src": "dana@example.com", "accept": ["192.168.1.7:22", "printer:631", "1.1.1.1:443"],
     "deny": ["192.168.1.200:22", "printer:23", "10.20.0.5:22", "1.1.1.1:22"]},
    {"src": "tag:prod", "accept": ["192.168.1.200:443", "10.20.0.5:443", "9.9.9.9:443"]},
  ],
}"""


def _mesh(text: str = POLICY) -> NetMap:
    return make_netmap([
        replace(make_peer("r1", 1, ("tag:router",)), approved_routes=(LAN, LAB)),
        replace(make_peer("x1", 2, ("tag:exit",)), exit_node=True),
        make_peer("laptop", 3, (), "dana@example.com"),
        make_peer("prod", 4, ("tag:prod",)),
        make_peer("plain", 5, (), "eve@example.com"),
    ], text)


def _rules(pf_rules: tuple[object, ...]) -> list[tuple[str, str, str]]:
    out = []
    for r in pf_rules:
        out.append((f"{r.section}[{r.rule_index}]",  # type: ignore[attr-defined]
                    " ".join(str(d) for d in r.destinations),  # type: ignore[attr-defined]
                    ",".join(str(p) for p in r.ports)))  # type: ignore[attr-defined]
    return out


def test_a_router_forwards_only_what_the_policy_names_inside_its_routes() -> None:
    pf = compile_filter(parse_policy(POLICY), _mesh(), "r1")
    assert pf.forward.routes == (LAB, LAN)
    assert _rules(pf.forward.rules) == [
        ("acls[0]", "192.168.1.0/25", "22"),  # a CIDR inside an approved route
        ("acls[0]", "192.168.1.50/32", "631"),  # a host inside it
        ("acls[1]", "10.20.0.0/16 192.168.1.0/24", "443"),  # "*" covers every route it carries
    ]
    laptop = ipaddress.ip_network("100.64.0.3/32")
    assert laptop in pf.forward.rules[0].sources
    # the router's own addresses keep their own rules, apart from what it forwards
    assert _rules(pf.rules) == [("acls[1]", "100.64.0.1 fd7a:115c:a1e0::1", "443"),
                                ("grants[1]", "100.64.0.1 fd7a:115c:a1e0::1", "80")]


def test_an_exit_node_forwards_the_internet_and_never_the_mesh() -> None:
    pf = compile_filter(parse_policy(POLICY), _mesh(), "x1")
    routes = {str(r) for r in pf.forward.routes}
    assert "0.0.0.0/2" in routes and not any(ipaddress.ip_network(r).overlaps(ipaddress.ip_network("100.64.0.0/10"))
                                              for r in routes)
    internet = [r for r in pf.forward.rules if r.section == "grants" and r.rule_index == 0]
    assert internet and all(r.protos in ((6,), (17,)) for r in internet)
    assert not any(d.overlaps(ipaddress.ip_network("192.168.0.0/16")) for r in internet
                   for d in r.destinations)  # type: ignore[union-attr]


def test_members_without_routes_forward_nothing() -> None:
    pf = compile_filter(parse_policy(POLICY), _mesh(), "laptop")
    assert pf.forward.routes == () and pf.forward.rules == ()


@pytest.mark.parametrize(
    ("src", "dst", "port", "allowed", "note"),
    [
        ("laptop", "192.168.1.7", 22, True, False),
        ("laptop", "192.168.1.200", 22, False, False),
        ("laptop", "printer", 631, True, False),
        ("laptop", "10.20.0.5", 22, False, False),
        ("prod", "10.20.0.5", 443, True, False),
        ("laptop", "1.1.1.1", 443, True, False),  # through x1
        ("plain", "1.1.1.1", 443, False, False),
        ("laptop", "100.64.0.200", 22, False, True),  # a mesh address nobody has
    ],
)
def test_routed_destinations_in_acl_check(src: str, dst: str, port: int, allowed: bool, note: bool) -> None:
    d = evaluate(parse_policy(POLICY), _mesh(), src, dst, port)
    assert d.allowed is allowed, d.reason
    assert ("nothing would carry it" in d.reason) is note


def test_without_the_route_nothing_carries_it() -> None:
    """The same policy answer, but no router or exit node: acl check says nothing would carry it."""
    netmap = _mesh()
    netmap = replace(netmap, peers=tuple(replace(p, approved_routes=(), exit_node=False) for p in netmap.peers))
    d = evaluate(parse_policy(POLICY), netmap, "laptop", "192.168.1.7", 22)
    assert d.allowed and d.reason.endswith("nothing would carry it)")


def test_tests_over_routes_pass_and_fail_where_they_should() -> None:
    assert run_policy_tests(parse_policy(POLICY), _mesh()) == []
    narrowed = POLICY.replace('"192.168.1.0/25:22"', '"192.168.1.0/26:22"')
    problems = run_policy_tests(parse_policy(narrowed), _mesh())
    assert problems == []  # .7 is inside /26 too
    narrowed = POLICY.replace('"192.168.1.0/25:22"', '"192.168.1.128/25:22"')
    assert [p.split(": ", 2)[2] for p in run_policy_tests(parse_policy(narrowed), _mesh())] == [
        "dana@example.com -> 192.168.1.7:22 (tcp) should be accepted, but no rule accepts it",
        "dana@example.com -> 192.168.1.200:22 (tcp) should be denied, but acls[0] (line 6) accepts it",
    ]


# -- autoApprovers ---------------------------------------------------------------------------

APPROVERS = """{
  "groups": {"group:net": ["nina@example.com"]},
  "tagOwners": {"tag:router": [], "tag:exit": []},
  "hosts": {"office": "192.168.0.0/16"},
  "ipsets": {"ipset:labs": ["10.20.0.0/16", "10.30.0.0/16"]},
  "autoApprovers": {
    "routes": {
      "192.168.1.0/24": ["group:net", "tag:router"],
      "office": ["alice@example.com"],
      "ipset:labs": ["tag:router"],
      "0.0.0.0/0": ["autogroup:member"],
    },
    "exitNode": ["tag:exit"],
  },
}"""


@pytest.mark.parametrize(
    ("tags", "owner", "advertised", "exit_node", "approved", "exit_approved"),
    [
        (("tag:router",), "", ["192.168.1.0/24"], False, ["192.168.1.0/24"], False),
        (("tag:router",), "", ["192.168.1.128/25", "192.168.2.0/24"], False, ["192.168.1.128/25"], False),
        (("tag:router",), "", ["10.20.1.0/24", "10.25.0.0/16"], False, ["10.20.1.0/24"], False),  # an IP set
        (("tag:router",), "nina@example.com", ["192.168.1.0/24"], False, ["192.168.1.0/24"], False),
        ((), "nina@example.com", ["192.168.1.0/24", "192.168.0.0/23"], False,  # the /23 by 0.0.0.0/0
         ["192.168.1.0/24", "192.168.0.0/23"], False),
        ((), "alice@example.com", ["192.168.7.0/24"], False, ["192.168.7.0/24"], False),  # a host
        (("tag:other",), "alice@example.com", ["192.168.7.0/24"], False, [], False),  # tagged: not alice's
        ((), "bob@example.com", ["172.16.0.0/12"], False, ["172.16.0.0/12"], False),  # 0.0.0.0/0: any route
        ((), "bob@example.com", ["0.0.0.0/0", "::/0"], False, [], False),  # ... but not exit-node use
        (("tag:exit",), "", [], True, [], True),
        (("tag:exit",), "", ["0.0.0.0/0", "::/0"], False, [], True),  # advertised as routes
        (("tag:router",), "", [], True, [], False),
    ],
)
def test_auto_approved(tags: tuple[str, ...], owner: str, advertised: list[str], exit_node: bool,
                       approved: list[str], exit_approved: bool) -> None:
    device = replace(make_peer("d", 9, tags, owner))
    got = auto_approved(parse_policy(APPROVERS), device, advertised, exit_node)
    assert got == AutoApproval(tuple(ipaddress.ip_network(r) for r in approved), exit_approved)


def test_no_auto_approvers_approve_nothing() -> None:
    device = make_peer("d", 9, ("tag:router",))
    assert auto_approved(parse_policy("{}"), device, [LAN], True) == AutoApproval((), False)


@pytest.mark.parametrize(
    ("approvers", "reason"),
    [
        ('{"routes": {"not-a-net": ["tag:router"]}}', "'not-a-net' is not a CIDR, host or IP set"),
        ('{"routes": {"10.0.0.0/8": ["tag:nope"]}}', "tag 'tag:nope' is not defined"),
        ('{"routes": {"10.0.0.0/8": ["*"]}}', "an auto-approver cannot be '*'"),
        ('{"routes": {"10.0.0.0/8": ["10.0.0.1"]}}', "names users, groups or tags"),
        ('{"exitNode": ["autogroup:self"]}', "autogroup:self can only be a destination"),
        ('{"exitNode": "tag:router"}', "must be a list"),
        ('{"routes": []}', "autoApprovers routes must be an object"),
        ('{"colour": []}', "unknown key 'colour' in autoApprovers"),
    ],
)
def test_auto_approver_errors(approvers: str, reason: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(f'{{"tagOwners": {{"tag:router": []}}, "autoApprovers": {approvers}}}')
    assert reason in info.value.reason


def test_app_connector_approvers_are_refused_by_name() -> None:
    with pytest.raises(UnsupportedFeatureError, match="'services'"):
        parse_policy('{"autoApprovers": {"services": {"svc:web": ["tag:x"]}}}')


def test_port_ranges_of_forward_rules() -> None:
    text = '{"grants": [{"src": ["*"], "dst": ["192.168.1.0/24"], "ip": ["tcp:8000-8100"]}]}'
    pf = compile_filter(parse_policy(text), _mesh(text), "r1")
    assert [(r.protos, r.ports) for r in pf.forward.rules] == [((6,), (PortRange(8000, 8100),))]
