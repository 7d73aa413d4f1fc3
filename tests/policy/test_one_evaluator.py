"""One evaluator: the nft compiler, `acl check` and the policy's tests read one compiled RuleSet.

Issue 16 (4): with `autogroup:member -> autogroup:self:*`, a camera with no owner reached a kiosk
with no owner on every port (the compiler grouped all owner-less devices as one user), while
the identity-based test evaluator said otherwise. An owner-less device is its own owner only.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from policy_samples import MIXED_PEERS, make_netmap, make_peer, quoted

from meshctl.coord.netmap import NetMap, Peer
from meshctl.policy import addrset
from meshctl.policy.check import check_policy
from meshctl.policy.compile import compile_filter, compile_rules, first_match, mesh_prefixes, node_filter
from meshctl.policy.evaluate import evaluate, run_policy_tests
from meshctl.policy.parse import parse_policy

SELF_POLICY = """{
  "acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}],
  "tests": [
    {"src": "100.64.0.9", "deny": ["100.64.0.1:22", "100.64.0.1:443"]},
    {"src": "100.64.0.2", "accept": ["100.64.0.3:22"], "deny": ["100.64.0.1:22"]},
  ],
}"""


def _self_mesh() -> NetMap:
    return make_netmap([
        make_peer("kiosk", 1),  # untagged, no owner
        make_peer("camera", 9),  # untagged, no owner
        make_peer("laptop", 2, (), "alice@example.com"),
        make_peer("phone", 3, (), "alice@example.com"),
    ], SELF_POLICY)


def _net(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


def test_owner_less_devices_are_not_one_user() -> None:
    netmap = _self_mesh()
    policy = parse_policy(SELF_POLICY)
    kiosk = compile_filter(policy, netmap, "kiosk")
    # the kiosk's own rule names the kiosk alone: the camera is nowhere in its filter
    assert [r.sources for r in kiosk.rules] == [_net("100.64.0.1/32", "fd7a:115c:a1e0::1/128")]
    assert all("100.64.0.9" not in str(e.sources) for e in kiosk.echo)
    for port in (22, 443, 8080):
        d = evaluate(policy, netmap, "camera", "kiosk", port)
        assert not d.allowed and d.reason == "denied: no rule accepts it (default deny)"
    assert not evaluate(policy, netmap, "camera", "kiosk", None, "icmp").allowed
    # a user's devices still reach each other
    laptop = compile_filter(policy, netmap, "phone")
    assert laptop.rules[0].sources == _net("100.64.0.2/31", "fd7a:115c:a1e0::2/127")
    assert evaluate(policy, netmap, "laptop", "phone", 22).allowed
    assert not evaluate(policy, netmap, "laptop", "kiosk", 22).allowed


def test_repo_verify_tests_see_the_same_answer() -> None:
    netmap = _self_mesh()
    assert check_policy(SELF_POLICY, netmap) == []
    wrong = SELF_POLICY.replace('"deny": ["100.64.0.1:22", "100.64.0.1:443"]', '"accept": ["100.64.0.1:22"]')
    assert check_policy(wrong, netmap) == [
        "policy.hujson:4:38: tests[0]: 100.64.0.9 -> 100.64.0.1:22 (tcp) should be accepted, but no rule accepts it"
    ]


def test_self_by_identity_in_tests() -> None:
    """Tests name users who may have no device yet: their stand-in devices follow the same rules."""
    text = """{
      "groups": {"group:g": ["bob@x.com"]},
      "acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:22"]}],
      "tests": [
        {"src": "alice@example.com", "accept": ["alice@example.com:22"], "deny": ["bob@x.com:22",
         "alice@example.com:23", "100.64.0.1:22"]},
        {"src": "bob@x.com", "accept": ["bob@x.com:22"], "deny": ["alice@example.com:22", "group:g:22"]},
      ],
    }"""
    assert run_policy_tests(parse_policy(text), _self_mesh()) == []


# -- property: a node's filter and the mesh's RuleSet decide every packet alike -----------------

NAMES = ["*", "a@x.com", "b@x.com", "group:g", "tag:s", "tag:t", "autogroup:member", "autogroup:tagged",
         "100.64.0.0/30", "fd7a:115c:a1e0::5", "h", "ipset:lan", "192.168.1.0/24"]
DSTS = NAMES + ["autogroup:self", "autogroup:internet"]
IPS = ["*", "tcp:22", "udp:53", "80-90", "icmp:*", "tcp:*", "gre:*"]
BASE = ('"groups": {"group:g": ["b@x.com"]}, "tagOwners": {"tag:s": [], "tag:t": []}, "hosts": {"h": "100.64.0.2"}, '
        '"ipsets": {"ipset:lan": ["add 192.168.0.0/16", "remove 192.168.1.128/25"]}')


def _routed_peers() -> list[Peer]:
    peers = [make_peer(*p) for p in MIXED_PEERS]
    peers[3] = replace(peers[3], approved_routes=_net("192.168.1.0/24"))  # s routes a LAN
    peers[1] = replace(peers[1], exit_node=True)  # b is an exit node
    return peers


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3),
                       st.lists(st.sampled_from(DSTS), min_size=1, max_size=3),
                       st.lists(st.sampled_from(IPS), min_size=1, max_size=2)), max_size=4),
    st.sampled_from([(6, 22), (6, 85), (17, 53), (1, None), (47, None)]),
)
def test_node_filters_decide_as_the_rule_set(grants: list[tuple[list[str], list[str], list[str]]],
                                             packet: tuple[int, int | None]) -> None:
    rules = ", ".join(f'{{"src": [{quoted(s)}], "dst": [{quoted(d)}], "ip": [{quoted(i)}]}}' for s, d, i in grants)
    policy = parse_policy(f"{{{BASE}, \"grants\": [{rules}]}}")
    peers = _routed_peers()
    netmap = make_netmap(peers)
    ruleset = compile_rules(policy, netmap.peers, mesh_prefixes(netmap))
    proto, port = packet
    targets = [ipaddress.ip_address(x) for x in ("192.168.1.7", "192.168.1.200", "8.8.8.8", "10.1.2.3")]
    for dst_peer in netmap.peers:
        pf = node_filter(ruleset, dst_peer)
        for src_peer in netmap.peers:
            for s, d in zip(src_peer.addresses, dst_peer.addresses, strict=True):
                want = first_match(ruleset.rules, addrset.span_of(s), addrset.span_of(d), proto, port)
                got = first_match(pf.rules, addrset.span_of(s), addrset.span_of(d), proto, port)
                assert (want is None) == (got is None), (src_peer.name, dst_peer.name)
                if want and got:
                    assert (want.rule.section, want.rule.rule_index) == (got.rule.section, got.rule.rule_index)
                    if want.echo:  # what nft's echo rules let through: the same sources
                        echo = next(e for e in pf.echo if e.destination == d)
                        assert addrset.contains(addrset.of(echo.sources), addrset.span_of(s))
            # routed destinations: the forward part decides as the rule set does, for what it carries
            for target in targets:
                if not addrset.contains_address(addrset.of(pf.forward.routes), target):
                    continue
                s = src_peer.addresses[0]
                want = first_match(ruleset.rules, addrset.span_of(s), addrset.span_of(target), proto, port)
                got = first_match(pf.forward.rules, addrset.span_of(s), addrset.span_of(target), proto, port)
                assert (want is None) == (got is None), (src_peer.name, dst_peer.name, str(target))
