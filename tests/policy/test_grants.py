"""Tailscale's `grants` (network-level `ip`), `ipsets`, `autogroup:internet`, ignored `ssh` (issue 19, 5)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_samples import make_netmap, make_peer

from meshctl.coord.netmap import NetMap
from meshctl.errors import ParseError
from meshctl.firewall.nft import render_text
from meshctl.policy.check import check_policy, policy_warnings
from meshctl.policy.compile import compile_filter
from meshctl.policy.evaluate import evaluate, run_policy_tests
from meshctl.policy.parse import AliasKind, PolicyError, UnsupportedFeatureError, parse_policy
from meshctl.policy.protocols import ALL_PORTS, DEFAULT_PROTOS, Capability, PortRange

TAILSCALE_DEFAULT = '{"grants":[{"src":["*"],"dst":["*"],"ip":["*"]}]}'

GRANTS = """{
  "groups": {"group:dev": ["dana@example.com"], "group:ops": ["oscar@example.com"]},
  "tagOwners": {"tag:prod": ["group:ops"], "tag:web": ["group:ops"], "tag:exit": [], "tag:router": []},
  "hosts": {"lan": "192.168.1.0/24", "nas": "192.168.1.10"},
  "ipsets": {"ipset:office": ["add lan", "remove nas"]},
  "grants": [
    {"src": ["group:dev"], "dst": ["tag:web"], "ip": ["tcp:443", "tcp:80"]},
    {"src": ["group:ops"], "dst": ["tag:prod", "tag:web"], "ip": ["*"]},
    {"src": ["tag:web"], "dst": ["tag:prod"], "ip": ["tcp:5432", "udp:53"]},
    {"src": ["group:dev"], "dst": ["ipset:office"], "ip": ["tcp:8000-8100"]},
    {"src": ["autogroup:member"], "dst": ["autogroup:internet"], "ip": ["*"]},
    {"src": ["autogroup:member"], "dst": ["autogroup:self"], "ip": ["*"]},
    {"src": ["tag:prod"], "dst": ["nas"], "ip": ["6:873", "ICMP:*"]},
    {"src": ["group:ops"], "dst": ["192.168.1.0/24"], "ip": ["gre:*", "22"]},
  ],
  "acls": [
    {"action": "accept", "src": ["tag:prod"], "dst": ["tag:web:9100"]},
  ],
  "tests": [
    {"src": "dana@example.com", "accept": ["tag:web:443", "192.168.1.20:8080", "8.8.8.8:443"],
     "deny": ["tag:web:22", "nas:8080", "10.0.0.1:443", "tag:prod:443"]},
    {"src": "tag:web", "proto": "udp", "accept": ["tag:prod:53"], "deny": ["tag:prod:5432"]},
    {"src": "tag:prod", "accept": ["tag:web:9100", "nas:873"], "deny": ["8.8.8.8:443", "192.168.1.11:873"]},
    {"src": "oscar@example.com", "proto": "gre", "accept": ["lan:0"]},
  ],
}"""


def _grants_mesh(text: str = GRANTS) -> NetMap:
    peers = [
        make_peer("prod", 1, ("tag:prod",)),
        make_peer("web", 2, ("tag:web",)),
        make_peer("dev-laptop", 3, (), "dana@example.com"),
        make_peer("dana-phone", 4, (), "dana@example.com"),
        make_peer("ops-laptop", 5, (), "oscar@example.com"),
        make_peer("printer", 6),
        replace(make_peer("exit", 7, ("tag:exit",)), exit_node=True),
        replace(make_peer("router", 8, ("tag:router",)), approved_routes=(ipaddress.ip_network("192.168.1.0/24"),)),
    ]
    return make_netmap(peers, text)


@pytest.mark.parametrize(
    ("src", "dst", "port", "proto", "rule"),
    [
        ("dev-laptop", "web", 443, "tcp", "grants[0]"),
        ("dev-laptop", "web", 80, "tcp", "grants[0]"),
        ("dev-laptop", "web", 22, "tcp", None),
        ("dev-laptop", "web", 443, "udp", None),  # tcp:443 only
        ("dev-laptop", "web", None, "icmp", "grants[0]"),  # echo: it may reach web at all
        ("ops-laptop", "prod", 22, "tcp", "grants[1]"),  # "*": TCP, UDP and ICMP on every port
        ("ops-laptop", "prod", 9999, "udp", "grants[1]"),
        ("ops-laptop", "prod", None, "gre", None),  # ... but not GRE
        ("web", "prod", 5432, "tcp", "grants[2]"),
        ("web", "prod", 53, "udp", "grants[2]"),
        ("web", "prod", 53, "tcp", None),
        ("prod", "web", 9100, "tcp", "acls[0]"),  # acls and grants together: the union
        ("prod", "web", 9101, "tcp", None),
        ("dev-laptop", "192.168.1.20", 8080, "tcp", "grants[3]"),  # an IP set, through the router
        ("dev-laptop", "192.168.1.10", 8080, "tcp", None),  # removed from the IP set
        ("dev-laptop", "8.8.8.8", 443, "tcp", "grants[4]"),  # autogroup:internet, through the exit node
        ("dev-laptop", "10.0.0.1", 443, "tcp", None),  # private: not the internet
        ("prod", "8.8.8.8", 443, "tcp", None),  # tagged: not autogroup:member
        ("dana-phone", "dev-laptop", 22, "tcp", "grants[5]"),  # autogroup:self
        ("printer", "dev-laptop", 22, "tcp", None),
        ("prod", "nas", 873, "tcp", "grants[6]"),  # protocol by number (6 = tcp), a host
        ("prod", "nas", 873, "udp", None),
        ("prod", "192.168.1.10", None, "icmp", "grants[6]"),  # "ICMP:*": any case
        ("ops-laptop", "lan", 22, "udp", "grants[7]"),  # a bare port: TCP and UDP
        ("ops-laptop", "192.168.1.99", None, "47", "grants[7]"),  # gre:*
        ("dana@example.com", "tag:web", 443, "tcp", "grants[0]"),  # users and tags, as tests name them
        ("group:ops", "tag:prod", 3306, "tcp", "grants[1]"),
    ],
)
def test_grant_decisions(src: str, dst: str, port: int | None, proto: str, rule: str | None) -> None:
    policy = parse_policy(GRANTS)
    d = evaluate(policy, _grants_mesh(), src, dst, port, proto)
    assert d.allowed is (rule is not None), d.reason
    if rule is not None:
        assert f"allowed: {rule} (line" in d.reason.replace("ICMP echo, allowed because ", ""), d.reason
        assert "nothing would carry it" not in d.reason


def test_the_grants_policy_passes_its_own_tests() -> None:
    assert check_policy(GRANTS, _grants_mesh()) == []
    broken = GRANTS.replace('"ip": ["tcp:443", "tcp:80"]', '"ip": ["tcp:443", "tcp:80", "tcp:22"]')
    assert check_policy(broken, _grants_mesh()) == [
        "policy.hujson:21:15: tests[0]: dana@example.com -> tag:web:22 (tcp) should be denied, "
        "but grants[0] (line 7) accepts it"
    ]


def test_tailscale_default_grant_works_unchanged() -> None:
    netmap = make_netmap([make_peer("a", 1), make_peer("b", 2, ("tag:x",)), make_peer("c", 3, (), "c@x.com")],
                         TAILSCALE_DEFAULT)
    policy = parse_policy(TAILSCALE_DEFAULT)
    assert policy.grants[0].ip == (Capability(DEFAULT_PROTOS, ALL_PORTS),)
    for src in ("a", "b", "c"):
        for dst in ("a", "b", "c"):
            assert evaluate(policy, netmap, src, dst, 22).allowed
            assert evaluate(policy, netmap, src, dst, 5353, "udp").allowed
            assert evaluate(policy, netmap, src, dst, None, "icmp").allowed
    assert run_policy_tests(policy, netmap) == []
    text = render_text(compile_filter(policy, netmap, "b"), "mesh0")
    assert 'ip daddr 100.64.0.2 meta l4proto { icmp, tcp, udp } accept comment "grants[0] line 1"' in text
    # the ACL that says the same compiles to the same filter
    acl = parse_policy('{"acls":[{"action":"accept","src":["*"],"dst":["*:*"]}]}')
    assert render_text(compile_filter(acl, netmap, "b"), "mesh0") == text.replace("grants[0]", "acls[0]")


@pytest.mark.parametrize(
    ("ip", "protos", "ports"),
    [
        ("*", DEFAULT_PROTOS, ALL_PORTS),
        ("443", DEFAULT_PROTOS, (PortRange(443, 443),)),
        ("8000-8100", DEFAULT_PROTOS, (PortRange(8000, 8100),)),
        ("*:22", DEFAULT_PROTOS, (PortRange(22, 22),)),
        ("tcp:443", (6,), (PortRange(443, 443),)),
        ("UDP:53", (17,), (PortRange(53, 53),)),
        ("tcp:*", (6,), ALL_PORTS),
        ("icmp:*", (1,), ALL_PORTS),
        ("ipv6-icmp:*", (58,), ALL_PORTS),
        ("sctp:9-10", (132,), (PortRange(9, 10),)),
        ("47:*", (47,), ALL_PORTS),
        ("esp:*", (50,), ALL_PORTS),
        ("6:22", (6,), (PortRange(22, 22),)),
    ],
)
def test_ip_syntax(ip: str, protos: tuple[int, ...], ports: tuple[PortRange, ...]) -> None:
    grant = parse_policy(f'{{"grants": [{{"src": ["*"], "dst": ["*"], "ip": ["{ip}"]}}]}}').grants[0]
    assert grant.ip == (Capability(protos, ports),)


def _grant(**fields: str) -> str:
    body = {"src": '["*"]', "dst": '["*"]', "ip": '["*"]'} | fields
    inner = ", ".join(f'"{k}": {v}' for k, v in body.items())
    return '{\n  "tagOwners": {"tag:web": []},\n  "grants": [\n    {' + inner + "},\n  ],\n}"


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        (_grant(ip='["tcp:80,443"]'), "4:41", "one port or range per entry"),
        (_grant(ip='["tcp:0"]'), "4:41", "ports start at 1"),
        (_grant(ip='["tcp:70000"]'), "4:41", "bad port range"),
        (_grant(ip='["icmp:22"]'), "4:41", "ports need proto tcp, udp or sctp"),
        (_grant(ip='["bogus:22"]'), "4:41", "unknown protocol 'bogus'"),
        (_grant(ip='["http"]'), "4:41", "bad port 'http'"),
        (_grant(ip='["300:*"]'), "4:41", "unknown protocol '300'"),
        (_grant(ip='[":22"]'), "4:41", "empty protocol"),
        (_grant(ip="[]"), "4:40", "ip is empty"),
        (_grant(src="[]"), "4:13", "src is empty"),
        (_grant(dst='["tag:web:443"]'), "4:28", "a grant's dst names no ports; write 'tag:web'"),
        (_grant(dst='["tag:nope"]'), "4:28", "tag 'tag:nope' is not defined"),
        (_grant(src='["autogroup:internet"]'), "4:14", "autogroup:internet can only be a destination"),
        (_grant(src='["autogroup:self"]'), "4:14", "autogroup:self can only be a destination"),
        (_grant(proto='"tcp"'), "4:47", "unknown key 'proto' in grants[0]"),
        ('{"grants": [{"src": ["*"], "dst": ["*"]}]}', "1:13", "missing 'ip'"),
        ('{"grants": {}}', "1:12", "grants must be a list"),
    ],
)
def test_grant_errors_name_line_and_column(text: str, where: str, reason: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    assert str(info.value).startswith(f"policy.hujson:{where}: "), str(info.value)
    assert reason in info.value.reason


@pytest.mark.parametrize(
    ("field", "value"),
    [("app", '{"tailscale.com/cap/webui": [{}]}'), ("via", '["tag:web"]'), ("srcPosture", '["posture:x"]'),
     ("App", '{"x": [{}]}')],
)
def test_unimplemented_grant_fields_are_refused_by_name(field: str, value: str) -> None:
    with pytest.raises(UnsupportedFeatureError) as info:
        parse_policy(_grant(**{field: value}))
    assert info.value.feature == {"App": "app"}.get(field, field)
    assert (info.value.line, info.value.col) == (4, 47)
    assert str(info.value).endswith("is not supported by meshctl")


def test_ssh_sections_load_with_a_warning() -> None:
    text = """{
      "grants": [{"src": ["*"], "dst": ["*"], "ip": ["*"]}],
      "ssh": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["root"]}],
      "sshTests": [{"src": "a@x.com", "dst": ["tag:x"], "accept": ["root"]}],
    }"""
    policy = parse_policy(text)
    assert policy.warnings == (
        "policy.hujson:3:7: 'ssh' is ignored: meshctl does not run Tailscale SSH (the section grants no network "
        "access)",
        "policy.hujson:4:7: 'sshTests' is ignored: meshctl does not run Tailscale SSH (the section grants no "
        "network access)",
    )
    assert policy_warnings(text) == list(policy.warnings)
    assert check_policy(text, make_netmap([make_peer("a", 1)])) == []
    assert policy_warnings("{") == []


# -- ipsets ---------------------------------------------------------------------------------


def test_ipsets_add_and_remove_in_order() -> None:
    text = """{
      "hosts": {"db": "10.1.2.3"},
      "ipsets": {
        "ipset:inner": ["10.1.0.0/16", "db"],
        "ipset:outer": ["add 10.0.0.0/8", "remove ipset:inner", "add db", "add fd00::/64"],
        "ipset:web": ["add autogroup:internet", "remove 8.8.8.0/24"],
      },
      "acls": [{"action": "accept", "src": ["ipset:outer"], "dst": ["ipset:web:443"]}],
    }"""
    policy = parse_policy(text)
    outer = policy.acls[0].sources[0]
    assert outer.kind is AliasKind.IPSET
    covered = [ip for ip in ("10.2.0.1", "10.1.2.3", "fd00::5") if _in(outer.spans, ip)]
    assert covered == ["10.2.0.1", "10.1.2.3", "fd00::5"]
    assert not _in(outer.spans, "10.1.9.9") and not _in(outer.spans, "11.0.0.1")
    web = policy.acls[0].destinations[0].target
    assert _in(web.spans, "1.1.1.1") and not _in(web.spans, "8.8.8.8") and not _in(web.spans, "192.168.0.1")


def _in(spans: tuple[tuple[int, int, int], ...], ip: str) -> bool:
    from meshctl.policy import addrset

    return addrset.contains_address(spans, ipaddress.ip_address(ip))


@pytest.mark.parametrize(
    ("ipsets", "reason"),
    [
        ('{"ipset:a": ["tag:x"]}', "an IP set holds addresses"),
        ('{"ipset:a": ["a@x.com"]}', "an IP set holds addresses"),
        ('{"ipset:a": ["autogroup:member"]}', "autogroup:internet is the only autogroup"),
        ('{"ipset:a": ["*"]}', "an IP set member cannot be '*'"),
        ('{"ipset:a": ["add ipset:b"], "ipset:b": ["ipset:a"]}', "in a circle: ipset:a -> ipset:b -> ipset:a"),
        ('{"ipset:a": ["ipset:nope"]}', "IP set 'ipset:nope' is not defined"),
        ('{"a": []}', "must look like 'ipset:NAME'"),
        ('{"ipset:a": ["10.0.0.0/8", "remove 10.1.0.0/16"]}', "start each entry with 'add' or 'remove'"),
        ('{"ipset:a": ["drop 10.0.0.0/8"]}', "is not a user, group, tag, host or IP"),
    ],
)
def test_ipset_errors(ipsets: str, reason: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(f'{{"tagOwners": {{"tag:x": []}}, "ipsets": {ipsets}}}')
    assert reason in info.value.reason


def test_internet_is_public_space_only() -> None:
    internet = parse_policy('{"acls": [{"action": "accept", "src": ["*"], "dst": ["autogroup:internet:*"]}]}')
    spans = internet.acls[0].destinations[0].target.spans
    for ip in ("8.8.8.8", "1.1.1.1", "2001:4860::8888"):
        assert _in(spans, ip), ip
    for ip in ("10.0.0.1", "172.16.0.1", "192.168.1.1", "100.64.0.1", "127.0.0.1", "169.254.1.1", "224.0.0.1",
               "fd7a:115c:a1e0::1", "fe80::1", "::1"):
        assert not _in(spans, ip), ip


def test_internet_never_covers_members_even_in_a_public_mesh_prefix() -> None:
    text = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["autogroup:internet:*"]}]}'
    netmap = make_netmap([make_peer("a", 1)], text)
    public = replace(netmap.network, ipv4_cidr=ipaddress.IPv4Network("44.0.0.0/16"))
    peer = replace(netmap.peers[0], addresses=(ipaddress.ip_address("44.0.0.1"),))
    netmap = replace(netmap, network=public, peers=(peer,))
    assert compile_filter(parse_policy(text), netmap, "a").rules == ()


# -- every generated grants policy parses or is refused with a ParseError ----------------------------

NAMES = ["*", "tag:web", "a@x.com", "group:g", "ipset:s", "lan", "10.0.0.0/8", "autogroup:self",
         "autogroup:internet", "autogroup:member", "x", "tag:web:443", ""]


@settings(max_examples=200)
@given(
    st.lists(st.sampled_from(NAMES), max_size=3),
    st.lists(st.sampled_from(NAMES), max_size=3),
    st.lists(st.sampled_from(["*", "tcp:443", "udp:53", "22", "1-2", "icmp:*", "gre:*", "icmp:22", "tcp:0",
                              "x:1", "tcp:", ":", "80,443", "99999", "-1"]), max_size=3),
    st.lists(st.sampled_from(["add 10.0.0.0/8", "remove lan", "ipset:s", "autogroup:internet", "tag:web",
                              "10.1.0.0/16", "remove", "add"]), max_size=3),
)
def test_generated_grants_parse_or_raise_parse_error(src: list[str], dst: list[str], ip: list[str],
                                                     ipset: list[str]) -> None:
    def q(items: list[str]) -> str:
        return ", ".join(f'"{i}"' for i in items)

    text = ('{"groups": {"group:g": ["a@x.com"]}, "tagOwners": {"tag:web": []}, "hosts": {"lan": "10.9.0.0/16"},'
            f' "ipsets": {{"ipset:s": [{q(ipset)}]}},'
            f' "grants": [{{"src": [{q(src)}], "dst": [{q(dst)}], "ip": [{q(ip)}]}}]}}')
    try:
        policy = parse_policy(text)
    except ParseError:
        return
    assert len(policy.rules) == 1 and 1 <= len(policy.rules[0].targets) <= len(ip)  # one per protocol set


def test_ip_entries_with_one_protocol_set_become_one_rule() -> None:
    """["tcp:80", "udp:53", "tcp:443"]: one nft rule for TCP 80 and 443, one for UDP 53."""
    text = '{"grants": [{"src": ["*"], "dst": ["*"], "ip": ["tcp:80", "udp:53", "tcp:443", "tcp:81", "tcp:80"]}]}'
    grant = parse_policy(text).grants[0]
    assert grant.ip == (Capability((6,), (PortRange(80, 81), PortRange(443, 443))),
                        Capability((17,), (PortRange(53, 53),)))
    pf = compile_filter(parse_policy(text), make_netmap([make_peer("a", 1)], text), "a")
    text_rules = [r for r in render_text(pf, "mesh0").splitlines() if "grants[0]" in r]
    assert [r.split("accept")[0].strip() for r in text_rules] == [
        "ip daddr 100.64.0.1 tcp dport { 80-81, 443 }", "ip6 daddr fd7a:115c:a1e0::1 tcp dport { 80-81, 443 }",
        "ip daddr 100.64.0.1 udp dport 53", "ip6 daddr fd7a:115c:a1e0::1 udp dport 53"]
