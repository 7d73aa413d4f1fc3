from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_samples import MIXED_PEERS, TEMPLATE_POLICY, make_netmap, make_peer, quoted, uncomment_examples

from meshctl.coord.netmap import NetMap
from meshctl.errors import UsageError
from meshctl.policy.compile import (
    compile_filter,
    evaluate,
    run_policy_tests,
)
from meshctl.policy.parse import Policy, parse_policy
from meshctl.policy.protocols import PortRange


def _net(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


def test_prod_names_only_its_own_allowed_sources(sample_policy: Policy, sample_netmap: NetMap) -> None:
    pf = compile_filter(sample_policy, sample_netmap, "prod")
    assert pf.node == "prod"
    got = [(r.rule_index, r.sources, r.ports, r.protos) for r in pf.rules]
    assert got == [
        # group:dev = dana's laptop and phone; 443 only
        (
            0,
            _net("100.64.0.2/32", "100.64.0.5/32", "fd7a:115c:a1e0::2/128", "fd7a:115c:a1e0::5/128"),
            (PortRange(443, 443),),
            (1, 6, 17, 58),
        ),
        # group:ops = oscar's laptop; prod itself is owned by oscar but tagged, so not a source
        (1, _net("100.64.0.3/32", "fd7a:115c:a1e0::3/128"), (PortRange(0, 65535),), (1, 6, 17, 58)),
        (2, _net("100.64.0.4/32", "fd7a:115c:a1e0::4/128"), (PortRange(9100, 9101),), (6,)),
    ]
    assert all(r.destinations == pf.addresses for r in pf.rules)
    assert [(e.destination, e.sources) for e in pf.echo] == [
        (ipaddress.ip_address("100.64.0.1"), _net("100.64.0.2/31", "100.64.0.4/31")),
        (ipaddress.ip_address("fd7a:115c:a1e0::1"), _net("fd7a:115c:a1e0::2/127", "fd7a:115c:a1e0::4/127")),
    ]


def test_autogroup_self_reaches_only_own_devices(sample_policy: Policy, sample_netmap: NetMap) -> None:
    laptop = compile_filter(sample_policy, sample_netmap, "dev-laptop")
    own = [r for r in laptop.rules if r.rule_index == 4]
    assert own[0].sources == _net("100.64.0.2/32", "100.64.0.5/32", "fd7a:115c:a1e0::2/128", "fd7a:115c:a1e0::5/128")
    # Tagged devices belong to no user: monitor gets nothing from autogroup:self.
    monitor = compile_filter(sample_policy, sample_netmap, "monitor")
    assert monitor.rules == () and monitor.echo == ()


def test_unknown_node_is_a_usage_error(sample_policy: Policy, sample_netmap: NetMap) -> None:
    with pytest.raises(UsageError, match="'ghost' is not a member"):
        compile_filter(sample_policy, sample_netmap, "ghost")


@pytest.mark.parametrize(
    ("src", "dst", "port", "proto", "allowed", "rule"),
    [
        ("dev-laptop", "prod", 443, "tcp", True, 0),
        ("dev-laptop", "prod", 22, "tcp", False, None),
        ("dev-laptop", "prod", 443, "udp", True, 0),
        ("ops-laptop", "prod", 22, "tcp", True, 1),
        ("ops-laptop", "prod", 443, "tcp", True, 1),
        ("ops-laptop", "dev-laptop", 22, "tcp", True, 1),
        ("dev-laptop", "ops-laptop", 22, "tcp", False, None),
        ("monitor", "prod", 9100, "tcp", True, 2),
        ("monitor", "prod", 9100, "udp", False, None),
        ("monitor", "prod", 443, "tcp", False, None),
        ("dana-phone", "dev-laptop", 8080, "tcp", True, 4),
        ("100.64.0.2", "100.64.0.1", 443, "tcp", True, 0),
        ("fd7a:115c:a1e0::2", "prod", 443, "tcp", True, 0),
        ("100.64.0.2", "fd7a:115c:a1e0::1", 443, "tcp", False, None),  # no common family
        ("203.0.113.9", "prod", 443, "tcp", False, None),  # not a member
        # ICMP echo: allowed wherever any port is
        ("dev-laptop", "prod", None, "icmp", True, 0),
        ("monitor", "prod", None, "icmp", True, 2),
        ("dev-laptop", "ops-laptop", None, "icmp", False, None),
    ],
)
def test_evaluate(
    sample_policy: Policy,
    sample_netmap: NetMap,
    src: str,
    dst: str,
    port: int | None,
    proto: str,
    allowed: bool,
    rule: int | None,
) -> None:
    d = evaluate(sample_policy, sample_netmap, src, dst, port, proto)
    assert (d.allowed, d.rule_index) == (allowed, rule)
    if allowed:
        assert f"acls[{rule}] (line {sample_policy.acls[rule or 0].line})" in d.reason
    else:
        assert d.reason.startswith("denied")


def test_evaluate_names_the_rule(sample_policy: Policy, sample_netmap: NetMap) -> None:
    d = evaluate(sample_policy, sample_netmap, "dev-laptop", "prod", 443)
    assert d.reason == "allowed: acls[0] (line 17) accepts group:dev -> tag:prod:443"
    assert (str(d.src), str(d.dst), d.line) == ("100.64.0.2", "100.64.0.1", 17)
    d = evaluate(sample_policy, sample_netmap, "monitor", "prod", None, "icmp")
    assert d.reason.startswith("allowed: ICMP echo, allowed because acls[2] (line 21)")


def test_evaluate_refuses_unknown_endpoints(sample_policy: Policy, sample_netmap: NetMap) -> None:
    with pytest.raises(UsageError, match="'nope' is neither a member name nor an IP"):
        evaluate(sample_policy, sample_netmap, "nope", "prod", 22)
    # An address no member has is answered from the policy, saying that nothing carries it.
    d = evaluate(sample_policy, sample_netmap, "prod", "10.9.9.9", 22)
    assert not d.allowed and "no member has 10.9.9.9 and no approved route covers it" in d.reason
    with pytest.raises(UsageError, match="unknown protocol 'bogus'"):
        evaluate(sample_policy, sample_netmap, "prod", "prod", 22, "bogus")


def test_sample_policy_tests_pass(sample_policy: Policy, sample_netmap: NetMap) -> None:
    assert run_policy_tests(sample_policy, sample_netmap) == []


def test_breaking_a_test_is_reported_with_its_position(sample_text: str, sample_netmap: NetMap) -> None:
    broken = sample_text.replace('"dst": ["tag:prod:443"]', '"dst": ["tag:prod:22,443"]')
    problems = run_policy_tests(parse_policy(broken), sample_netmap)
    assert problems == [
        "policy.hujson:28:68: tests[0]: dana@example.com -> tag:prod:22 (tcp) should be denied, "
        "but acls[0] (line 17) accepts it"
    ]
    broken = sample_text.replace('"tag:prod:9100-9101"', '"tag:prod:9101"')
    problems = run_policy_tests(parse_policy(broken), sample_netmap)
    assert problems == [
        "policy.hujson:30:40: tests[2]: tag:monitoring -> tag:prod:9100 (tcp) should be accepted, "
        "but no rule accepts it"
    ]


def test_policy_tests_need_no_devices() -> None:
    """Tests name users and tags that have no device yet: resolved from the policy alone."""
    text = """{
      "groups": {"group:dev": ["new@x.com"]},
      "tagOwners": {"tag:prod": []},
      "hosts": {"db": "100.64.9.9"},
      "acls": [
        {"action": "accept", "src": ["group:dev"], "dst": ["tag:prod:443", "db:5432"]},
        {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
      ],
      "tests": [
        {"src": "new@x.com", "accept": ["tag:prod:443", "db:5432", "100.64.9.9:5432"],
         "deny": ["tag:prod:22", "other@x.com:22"]},
        {"src": "tag:prod", "deny": ["tag:prod:443", "new@x.com:22"]},
        {"src": "group:dev", "accept": ["tag:prod:443"]},
      ],
    }"""
    assert run_policy_tests(parse_policy(text), make_netmap([])) == []


def test_policy_tests_use_member_addresses(sample_policy: Policy) -> None:
    """A test naming a device's mesh IP sees that device's tags; a rule naming an IP sees users."""
    text = """{
      "tagOwners": {"tag:prod": []},
      "acls": [{"action": "accept", "src": ["100.64.0.2"], "dst": ["tag:prod:443"]}],
      "tests": [
        {"src": "dana@example.com", "accept": ["100.64.0.1:443"], "deny": ["100.64.0.1:22"]},
        {"src": "oscar@example.com", "deny": ["tag:prod:443"]},
      ],
    }"""
    netmap = make_netmap([make_peer("prod", 1, ("tag:prod",)), make_peer("laptop", 2, (), "dana@example.com")])
    assert run_policy_tests(parse_policy(text), netmap) == []


def test_users_never_match_tagged_devices() -> None:
    text = '{"acls": [{"action": "accept", "src": ["a@x.com"], "dst": ["a@x.com:*"]}]}'
    netmap = make_netmap(
        [
            make_peer("server", 1, ("tag:s",), "a@x.com"),
            make_peer("laptop", 2, (), "a@x.com"),
            make_peer("phone", 3, (), "a@x.com"),
        ]
    )
    policy = parse_policy(text)
    assert compile_filter(policy, netmap, "server").rules == ()
    assert compile_filter(policy, netmap, "laptop").rules[0].sources == _net("100.64.0.2/31", "fd7a:115c:a1e0::2/127")


def test_cidr_destination_covers_only_matching_addresses() -> None:
    text = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["100.64.0.0/10:22"]}]}'
    netmap = make_netmap([make_peer("a", 1)])
    rule = compile_filter(parse_policy(text), netmap, "a").rules[0]
    assert rule.destinations == (ipaddress.ip_address("100.64.0.1"),)
    assert rule.sources == _net("0.0.0.0/0", "::/0")


def test_no_acls_means_deny_all() -> None:
    netmap = make_netmap([make_peer("a", 1), make_peer("b", 2)])
    pf = compile_filter(parse_policy("{}"), netmap, "a")
    assert pf.rules == () and pf.echo == ()
    assert not evaluate(parse_policy("{}"), netmap, "b", "a", 22).allowed


# -- the node's compiled filter and the identity-based test evaluator agree -----------


SRC = [
    "*",
    "a@x.com",
    "b@x.com",
    "group:g",
    "tag:s",
    "tag:t",
    "autogroup:member",
    "autogroup:tagged",
    "100.64.0.0/30",
    "fd7a:115c:a1e0::5",
    "h",
]
DST = SRC + ["autogroup:self"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.sampled_from(SRC), min_size=1, max_size=3),
            st.lists(
                st.tuples(st.sampled_from(DST), st.sampled_from(["*", "22", "80-90,443"])), min_size=1, max_size=3
            ),
            st.sampled_from(['""', '"tcp"', '"udp"']),
        ),
        max_size=4,
    ),
    st.sampled_from([22, 85, 443, 1000]),
    st.sampled_from(["tcp", "udp"]),
)
def test_compiled_filter_agrees_with_policy_tests(
    acls: list[tuple[list[str], list[tuple[str, str]], str]], port: int, proto: str
) -> None:
    rules = ",".join(
        f'{{"action": "accept", "src": [{quoted(src)}], "dst": [{quoted(f"{d}:{p}" for d, p in dst)}],'
        f' "proto": {pr}}}'
        for src, dst, pr in acls
    )
    base = (
        '{"groups": {"group:g": ["b@x.com"]}, "tagOwners": {"tag:s": [], "tag:t": []},'
        f' "hosts": {{"h": "100.64.0.2"}}, "acls": [{rules}]'
    )
    netmap = make_netmap([make_peer(*p) for p in MIXED_PEERS])
    policy = parse_policy(base + "}")
    for src in netmap.peers:
        for dst in netmap.peers:
            for s_addr, d_addr in zip(src.addresses, dst.addresses, strict=True):
                decision = evaluate(policy, netmap, str(s_addr), str(d_addr), port, proto)
                verdict = "accept" if decision.allowed else "deny"
                test = f',"tests": [{{"src": "{s_addr}", "proto": "{proto}", "{verdict}": ["{d_addr}:{port}"]}}]}}'
                with_test = parse_policy(base + test)
                assert run_policy_tests(with_test, netmap) == [], (src.name, dst.name, decision)


def test_default_template_policy_lets_all_members_reach_each_other() -> None:
    text = TEMPLATE_POLICY.read_text()
    netmap = make_netmap([make_peer("a", 1), make_peer("b", 2, ("tag:x",)), make_peer("c", 3, (), "c@x.com")])
    policy = parse_policy(text)
    assert run_policy_tests(policy, netmap) == []
    for src in ("a", "b", "c"):
        for dst in ("a", "b", "c"):
            assert evaluate(policy, netmap, src, dst, 22).allowed
            assert evaluate(policy, netmap, src, dst, 5353, "udp").allowed
    # Uncommenting the examples (grants, IP sets, autoApprovers too) yields a valid policy ...
    uncommented = uncomment_examples(text)
    live = parse_policy(uncommented)
    assert (len(live.acls), len(live.grants), len(live.ipsets), len(live.auto_approvers.routes)) == (5, 1, 1, 1)
    # ... with the allow-all rule still there, the example test catches that dev reaches :22 ...
    problems = run_policy_tests(live, netmap)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if '"dst": ["*:*"]' in t)
    assert [p.split(": ", 2)[2] for p in problems] == [
        f"alice@example.com -> tag:prod:22 (tcp) should be denied, but acls[0] (line {line}) accepts it"
    ]
    # ... and without it the examples form a zero-trust policy that passes its tests.
    zero_trust = uncommented.replace('{"action": "accept", "src": ["*"], "dst": ["*:*"]},', "")
    assert run_policy_tests(parse_policy(zero_trust), netmap) == []
