"""Each NAT profile behaves as DESIGN.md says, shown with plain UDP through the lab.

    a (10.0.1.10) -- nat (profile) -- internet -- o1, o2 (public hosts, 203.0.113.x)
                                         `-- echo servers on 198.51.100.1:7000 and .2:7000
The echo servers answer with the source address they saw, i.e. the NAT mapping.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from lab_support import need_lab

from lab import (
    ADDRESS_RESTRICTED,
    FULL_CONE,
    MASQUERADE,
    PORT_RESTRICTED,
    PROFILES,
    SYMMETRIC,
    Lab,
    NatRouter,
    Node,
    poll,
)

pytestmark = pytest.mark.netns

ECHO_PORT = 7000
INSIDE_PORT = 40000
NEGATIVE_WAIT_S = 0.5  # how long a datagram that should be dropped is waited for
POSITIVE_WAIT_S = 3.0  # upper bound for one that should arrive (returns on arrival)
EIM = (PORT_RESTRICTED, ADDRESS_RESTRICTED, FULL_CONE, MASQUERADE)


@dataclass
class Scene:
    lab: Lab
    a: Node
    nat: NatRouter
    o1: Node
    o2: Node
    s1: str
    s2: str


def build(lab: Lab, profile: str) -> Scene:
    a = lab.host("a")
    nat = lab.nat_router("nat", profile, [a])
    o1, o2 = lab.public_host("o1"), lab.public_host("o2")
    s1, s2 = (str(ip) for ip in lab.internet().service_ips)
    lab.udp_echo(lab.internet(), ECHO_PORT, bind=s1)
    lab.udp_echo(lab.internet(), ECHO_PORT, bind=s2)
    return Scene(lab, a, nat, o1, o2, s1, s2)


@pytest.mark.parametrize("profile", PROFILES)
def test_mapping_per_destination(lab: Lab, profile: str) -> None:
    """Endpoint-independent and port-preserving, except symmetric: new port per destination."""
    s = build(lab, profile)
    agent = lab.udp_agent(s.a, INSIDE_PORT)
    first = agent.ask_echo(s.s1, ECHO_PORT)
    second = agent.ask_echo(s.s2, ECHO_PORT)
    assert first is not None and second is not None
    assert first[0] == second[0] == str(s.nat.public_ip)
    if profile in EIM:
        assert first == second == (str(s.nat.public_ip), INSIDE_PORT)
    else:
        assert first[1] != second[1]
        # The mapping is stable per destination: asking again gives the same port.
        assert agent.ask_echo(s.s1, ECHO_PORT) == first


# Who, after `a` sent one datagram to o1:5000, can reach a's mapped port.
EXPECTED_INBOUND = {
    PORT_RESTRICTED: {"o1:5000"},
    ADDRESS_RESTRICTED: {"o1:5000", "o1:5001"},
    FULL_CONE: {"o1:5000", "o1:5001", "o2:5000"},
    SYMMETRIC: {"o1:5000"},
    MASQUERADE: {"o1:5000"},
}


@pytest.mark.parametrize("profile", PROFILES)
def test_inbound_filtering(lab: Lab, profile: str) -> None:
    s = build(lab, profile)
    a = lab.udp_agent(s.a, INSIDE_PORT)
    senders = {
        "o1:5000": lab.udp_agent(s.o1, 5000),
        "o1:5001": lab.udp_agent(s.o1, 5001),
        "o2:5000": lab.udp_agent(s.o2, 5000),
    }
    a.send(s.o1.ipv4, 5000, b"hello")
    got = senders["o1:5000"].recv(2.0, max_count=1)
    assert len(got) == 1 and got[0].host == str(s.nat.public_ip)
    mapped_port = got[0].port  # what o1 saw: the mapping it can answer to
    if profile != SYMMETRIC:
        assert mapped_port == INSIDE_PORT
    for name, agent in senders.items():
        agent.send(s.nat.public_ip, mapped_port, name.encode())
    expected = EXPECTED_INBOUND[profile]
    arrived = a.recv(POSITIVE_WAIT_S, max_count=len(expected)) + a.recv(NEGATIVE_WAIT_S)
    assert {d.data.decode() for d in arrived} == expected


@pytest.mark.parametrize("profile", PROFILES)
def test_unsolicited_inbound_never_arrives(lab: Lab, profile: str) -> None:
    """Without any outbound packet nobody reaches the inside host, full cone included."""
    s = build(lab, profile)
    a = lab.udp_agent(s.a, INSIDE_PORT)
    outsider = lab.udp_agent(s.o2, 5000)
    outsider.send(s.nat.public_ip, INSIDE_PORT)
    assert a.recv(NEGATIVE_WAIT_S) == []


@pytest.mark.parametrize(("profile", "poisoned"), [(MASQUERADE, True), (PORT_RESTRICTED, False)])
def test_conntrack_poisoning_on_bare_masquerade(lab: Lab, profile: str, poisoned: bool) -> None:
    """The peer's packet arriving first leaves a conntrack entry; on a bare masquerade our own
    packet then gets another port. The home-router drop rule prevents the entry."""
    s = build(lab, profile)
    peer = lab.udp_agent(s.o1, 5000)
    peer.send(s.nat.public_ip, INSIDE_PORT)  # arrives before a has sent anything
    a = lab.udp_agent(s.a, INSIDE_PORT)
    a.send(s.o1.ipv4, 5000)
    got = peer.recv(2.0, max_count=1)
    assert len(got) == 1
    assert (got[0].port != INSIDE_PORT) == poisoned


def _conntrack_entries(lab: Lab, router: Node) -> str:
    return lab.run(router, ["conntrack", "-L", "-p", "udp", "--orig-port-src",
                            str(INSIDE_PORT)]).stdout


def test_flush_conntrack_forgets_mappings() -> None:
    need_lab("conntrack")
    with Lab() as lab:
        s = build(lab, SYMMETRIC)
        agent = lab.udp_agent(s.a, INSIDE_PORT)
        before = agent.ask_echo(s.s1, ECHO_PORT)
        assert before is not None
        assert f"dport={ECHO_PORT}" in _conntrack_entries(lab, s.nat)
        lab.flush_conntrack(s.nat)
        assert _conntrack_entries(lab, s.nat) == ""
        after = agent.ask_echo(s.s1, ECHO_PORT)
        assert after is not None and after[1] != before[1]  # symmetric: a fresh random port


def test_rebind_changes_the_public_address_and_forgets_mappings() -> None:
    need_lab("conntrack")
    with Lab() as lab:
        s = build(lab, PORT_RESTRICTED)
        agent = lab.udp_agent(s.a, INSIDE_PORT)
        old_ip = s.nat.public_ip
        assert agent.ask_echo(s.s1, ECHO_PORT) == (str(old_ip), INSIDE_PORT)
        new_ip = lab.rebind(s.nat)
        assert new_ip != old_ip and s.nat.public_ip == new_ip
        assert _conntrack_entries(lab, s.nat) == ""
        assert agent.ask_echo(s.s1, ECHO_PORT) == (str(new_ip), INSIDE_PORT)


def test_assured_mappings_use_the_short_udp_timeout() -> None:
    """Two-way traffic makes a UDP entry "assured"; it must still expire after 30 s idle."""
    need_lab("conntrack")
    with Lab() as lab:
        s = build(lab, PORT_RESTRICTED)
        agent = lab.udp_agent(s.a, INSIDE_PORT)
        entry: list[str] = []

        def assured() -> bool:  # Linux marks it after replies spanning more than 2 s
            nonlocal entry
            assert agent.ask_echo(s.s1, ECHO_PORT) is not None
            entry = _conntrack_entries(lab, s.nat).split()
            return "[ASSURED]" in entry

        poll(assured, "an assured conntrack entry", 6)
        assert 0 < int(entry[2]) <= 30  # seconds left before the mapping is forgotten


def test_loss_drops_about_the_given_share(lab: Lab) -> None:
    s = build(lab, PORT_RESTRICTED)
    a = lab.udp_agent(s.a, INSIDE_PORT)
    sink = lab.udp_agent(s.o1, 5000)
    lab.netem(s.nat, s.nat.wan_if, 50)
    for i in range(200):
        a.send(s.o1.ipv4, 5000, str(i).encode())
    arrived = len(sink.recv(NEGATIVE_WAIT_S))
    assert 55 <= arrived <= 145  # binomial(200, 0.5): mean 100, sd 7
    lab.netem(s.nat, s.nat.wan_if, 0)
    for i in range(50):
        a.send(s.o1.ipv4, 5000, str(i).encode())
    assert len(sink.recv(NEGATIVE_WAIT_S, max_count=50)) == 50


def test_block_udp_and_unblock(lab: Lab) -> None:
    s = build(lab, PORT_RESTRICTED)
    a = lab.udp_agent(s.a, INSIDE_PORT)
    lab.block_udp(s.nat)
    assert a.ask_echo(s.s1, ECHO_PORT, timeout=NEGATIVE_WAIT_S) is None
    lab.unblock_udp(s.nat)
    assert a.ask_echo(s.s1, ECHO_PORT) == (str(s.nat.public_ip), INSIDE_PORT)
    lab.block_udp(s.a, port=INSIDE_PORT)  # one port only: others still pass
    assert a.ask_echo(s.s1, ECHO_PORT, timeout=NEGATIVE_WAIT_S) is None
    other = lab.udp_agent(s.a, INSIDE_PORT + 1)
    assert other.ask_echo(s.s1, ECHO_PORT) == (str(s.nat.public_ip), INSIDE_PORT + 1)
    assert not a.send(s.s1, ECHO_PORT)  # the host's own output chain refuses it: EPERM
