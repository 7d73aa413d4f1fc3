from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshctl.errors import ParseError
from meshctl.policy.hujson import HujsonError
from meshctl.policy.parse import (
    AliasKind,
    Policy,
    PolicyError,
    UnsupportedFeatureError,
    parse_policy,
)
from meshctl.policy.protocols import ALL_PORTS, DEFAULT_PROTOS, PortRange


def test_sample_policy(sample_policy: Policy) -> None:
    p = sample_policy
    assert p.groups == {"group:dev": ("dana@example.com",), "group:ops": ("oscar@example.com",)}
    assert p.hosts == {"backup-net": ipaddress.ip_network("100.64.50.0/24")}
    assert set(p.tag_owners) == {"tag:prod", "tag:monitoring"}
    assert len(p.acls) == 5 and len(p.tests) == 4
    dev = p.acls[0]
    assert (dev.index, dev.line) == (0, 17)
    assert [s.text for s in dev.sources] == ["group:dev"]
    assert dev.sources[0].users == ("dana@example.com",)
    assert str(dev.destinations[0]) == "tag:prod:443"
    assert dev.protos == DEFAULT_PROTOS
    assert p.acls[2].protos == (6,)
    assert p.acls[2].destinations[0].ports == (PortRange(9100, 9101),)
    assert p.acls[3].destinations[0].target.kind is AliasKind.HOST
    assert p.acls[4].destinations[0].target.kind is AliasKind.SELF
    assert p.tests[3].proto == 17 and p.tests[3].accept[0].port == 53


def test_tailscale_default_policy_loads() -> None:
    p = parse_policy('{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}')
    assert p.acls[0].sources[0].kind is AliasKind.ANY
    assert p.acls[0].destinations[0].ports == ALL_PORTS


def test_old_capitalised_keys_and_users_ports_still_load() -> None:
    text = """{
      "Groups": {"group:eng": ["a@x.com"]},
      "Hosts": {"db": "100.64.0.9"},
      "ACLs": [{"Action": "accept", "Users": ["group:eng"], "Ports": ["db:5432"]}],
    }"""
    p = parse_policy(text)
    assert p.acls[0].sources[0].kind is AliasKind.GROUP
    assert p.acls[0].destinations[0].target.prefix == ipaddress.ip_network("100.64.0.9/32")


@pytest.mark.parametrize(
    ("dst", "target", "ports"),
    [
        ("*:*", "*", ALL_PORTS),
        ("tag:web:80,443", "tag:web", (PortRange(80, 80), PortRange(443, 443))),
        ("100.64.0.0/10:1000-2000", "100.64.0.0/10", (PortRange(1000, 2000),)),
        ("fd7a:115c:a1e0::1:22", "fd7a:115c:a1e0::1", (PortRange(22, 22),)),
        ("[fd7a:115c:a1e0::1]:22", "fd7a:115c:a1e0::1", (PortRange(22, 22),)),
        ("a@x.com:0-65535", "a@x.com", (PortRange(0, 65535),)),
        ("autogroup:member:*", "autogroup:member", ALL_PORTS),
    ],
)
def test_destinations(dst: str, target: str, ports: tuple[PortRange, ...]) -> None:
    text = f'{{"tagOwners": {{"tag:web": []}}, "acls": [{{"action": "accept", "src": ["*"], "dst": ["{dst}"]}}]}}'
    d = parse_policy(text).acls[0].destinations[0]
    assert d.target.text == target
    assert d.ports == ports


@pytest.mark.parametrize(
    ("proto", "number"),
    [('"tcp"', 6), ('"UDP"', 17), ('"icmp"', 1), ('"ipv6-icmp"', 58), ('"sctp"', 132), ('"47"', 47), ("50", 50)],
)
def test_protocols(proto: str, number: int) -> None:
    ports = "*" if number not in (6, 17, 132) else "22"
    text = f'{{"acls": [{{"action": "accept", "src": ["*"], "dst": ["*:{ports}"], "proto": {proto}}}]}}'
    assert parse_policy(text).acls[0].protos == (number,)


def _acl(**fields: str) -> str:
    body = {"action": '"accept"', "src": '["*"]', "dst": '["*:*"]'} | fields
    inner = ", ".join(f'"{k}": {v}' for k, v in body.items())
    return '{\n  "groups": {"group:a": ["a@x.com"]},\n  "acls": [\n    {' + inner + "},\n  ],\n}"


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        (_acl(action='"deny"'), "4:16", 'only "accept" exists'),
        (_acl(src='["group:nope"]'), "4:34", "group 'group:nope' is not defined"),
        (_acl(src='["tag:nope"]'), "4:34", "tag 'tag:nope' is not defined in 'tagOwners'"),
        (_acl(src='["nobody"]'), "4:34", "'nobody' is not a user, group, tag, host or IP"),
        (_acl(dst='["tag:x"]'), "4:48", "bad port 'x'"),
        (_acl(dst='["host"]'), "4:48", "needs ':PORTS'"),
        (_acl(dst='["*:70000"]'), "4:48", "bad port range"),
        (_acl(dst='["*:20-10"]'), "4:48", "bad port range"),
        (_acl(dst='["*:http"]'), "4:48", "bad port"),
        (_acl(dst='["*:22"]', proto='"icmp"'), "4:48", "ports need proto tcp, udp or sctp"),
        (_acl(proto='"bogus"'), "4:65", "unknown protocol 'bogus'"),
        (_acl(proto="300"), "4:65", "protocol number 300"),
        (_acl(src="[]"), "4:33", "src is empty"),
        (_acl(colour='"red"'), "4:56", "unknown key 'colour' in acls[0]"),
        (_acl(dst='["autogroup:self:*"]', src='["autogroup:self"]'), "4:34", "only be a destination"),
        ('{"acls": [{"action": "accept", "dst": ["*:*"]}]}', "1:11", "missing 'src'"),
        (
            '{"acls": [{"action": "accept", "src": ["*"], "users": ["*"], "dst": ["*:*"]}]}',
            "1:46",
            "both 'src' and its old name 'users'",
        ),
        ('{"groups": {"group:a": ["group:b"]}}', "1:25", "a group may contain only users"),
        ('{"groups": {"eng": []}}', "1:13", "must look like 'group:NAME'"),
        ('{"hosts": {"db": "not-an-ip"}}', "1:18", "is not an IP or CIDR"),
        ('{"hosts": {"a:b": "1.2.3.4"}}', "1:12", "host name 'a:b'"),
        ('{"tagOwners": {"web": []}}', "1:16", "must look like 'tag:NAME'"),
        ('{"tagOwners": {"tag:a": ["group:x"]}}', "1:26", "group 'group:x' is not defined"),
        ('{"acls": {}}', "1:10", "acls must be a list"),
        ("[]", "1:1", "the policy must be an object"),
        ('{"acls": [], "ACLS": []}', "1:14", "duplicate key 'ACLS'"),
        ('{"colour": 1}', "1:2", "unknown key 'colour' in the policy"),
        ('{"tests": [{"src": "*", "accept": []}]}', "1:20", "a test names one user"),
        ('{"tests": [{"src": "a@x.com", "accept": ["1.2.3.4:1-2"]}]}', "1:42", "needs one port"),
    ],
)
def test_policy_errors_name_line_and_column(text: str, where: str, reason: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    assert str(info.value).startswith(f"policy.hujson:{where}: "), str(info.value)
    assert reason in info.value.reason


@pytest.mark.parametrize(
    ("section", "feature"),
    [
        ('"nodeAttrs": []', "nodeAttrs"),
        ('"NodeAttrs": []', "nodeAttrs"),
        ('"derpMap": {}', "derpMap"),
        ('"postures": {}', "postures"),
        ('"disableIPv4": true', "disableIPv4"),
        ('"randomizeClientPort": true', "randomizeClientPort"),
    ],
)
def test_unsupported_sections_are_named(section: str, feature: str) -> None:
    with pytest.raises(UnsupportedFeatureError) as info:
        parse_policy("{\n  // our policy\n  " + section + ",\n}")
    assert info.value.feature == feature
    assert str(info.value) == (f"policy.hujson:3:3: Tailscale policy feature {feature!r} is not supported by meshctl")


@pytest.mark.parametrize("alias", ["autogroup:shared", "autogroup:danger-all", "autogroup:admin", "autogroup:nonroot"])
def test_unsupported_autogroups_are_named(alias: str) -> None:
    text = f'{{"acls": [\n {{"action": "accept", "src": ["*"], "dst": ["{alias}:*"]}}]}}'
    with pytest.raises(UnsupportedFeatureError) as info:
        parse_policy(text)
    assert info.value.feature == alias
    assert (info.value.line, info.value.col) == (2, 45)


def test_unsupported_acl_field_is_named() -> None:
    text = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"], "srcPosture": []}]}'
    with pytest.raises(UnsupportedFeatureError, match="'srcPosture'"):
        parse_policy(text)


def test_autogroup_admin_is_fine_in_tag_owners() -> None:
    p = parse_policy('{"tagOwners": {"tag:a": ["autogroup:admin"], "tag:b": ["tag:a"]}}')
    assert p.tag_owners["tag:b"] == ("tag:a",)


def test_syntax_errors_come_from_hujson() -> None:
    with pytest.raises(HujsonError, match=r"^policy\.hujson:1:11: "):
        parse_policy('{"acls": [1.5]}')


ALIASES = ["*", "group:a", "tag:a", "a@x.com", "db", "10.0.0.0/8", "autogroup:member", "x"]


@settings(max_examples=200)
@given(
    st.lists(st.sampled_from(ALIASES + ["autogroup:self", "::1", "[::1]"]), max_size=3),
    st.lists(
        st.tuples(
            st.sampled_from(ALIASES + ["autogroup:self", "[::1]", ""]),
            st.sampled_from(["*", "22", "1-2", "80,443", "x", "", "99999"]),
        ),
        max_size=3,
    ),
    st.sampled_from(['"tcp"', '"icmp"', '""', "6", '"x"', "null", "[]"]),
)
def test_generated_policies_parse_or_raise_parse_error(src: list[str], dst: list[tuple[str, str]], proto: str) -> None:
    srcs = ", ".join(f'"{s}"' for s in src)
    dsts = ", ".join(f'"{t}:{p}"' for t, p in dst)
    text = (
        '{"groups": {"group:a": ["a@x.com"]}, "tagOwners": {"tag:a": []}, "hosts": {"db": "1.2.3.4"},'
        f' "acls": [{{"action": "accept", "src": [{srcs}], "dst": [{dsts}], "proto": {proto}}}]}}'
    )
    try:
        parse_policy(text)
    except ParseError:
        pass


@given(st.text(max_size=120))
def test_any_text_parses_or_raises_parse_error(text: str) -> None:
    try:
        parse_policy(text)
    except ParseError:
        pass
