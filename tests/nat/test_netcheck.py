"""Netcheck: the pure plan/report with an injected clock, then real coturn runs and the CLI."""

from __future__ import annotations

import ipaddress
import itertools
import json
from collections.abc import Callable

import pytest
from natsupport import CoturnFactory, Namespaces, build_nat_lab, nsrun
from typer.testing import CliRunner

from meshctl.cli.app import app, build_app
from meshctl.errors import ParseError
from meshctl.nat import netcheck, stun
from meshctl.nat.addr import AddrPort, parse_addr_port
from meshctl.nat.netcheck import Netcheck, StunServer

A = StunServer("a.example:3478", parse_addr_port("192.0.2.10:3478"))
B = StunServer("b.example:3478", parse_addr_port("192.0.2.20:3478"))
C = StunServer("c.example:3478", parse_addr_port("192.0.2.30:3478"))
MAPPED = parse_addr_port("203.0.113.5:41641")


def rand() -> Callable[[int], bytes]:
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def answer(packet: bytes, mapped: AddrPort = MAPPED) -> bytes:
    return stun.marshal_binding_response(stun.parse_binding_request(packet), mapped)


def test_probe_plan_is_sorted_with_unique_txids() -> None:
    plan = netcheck.make_probe_plan([A, B], rand(), offsets=(0.0, 0.5))
    assert [(p.server.name, p.at) for p in plan] == [
        (A.name, 0.0), (B.name, 0.0), (A.name, 0.5), (B.name, 0.5)]
    assert len({p.txid for p in plan}) == 4


def test_all_answer_first_try() -> None:
    core = Netcheck([A, B], now=100.0, randbytes=rand())
    sent = core.datagrams_to_send(100.0)
    assert [dst for _, dst in sent] == [A.addr, B.addr]
    assert core.next_deadline() == 100.5
    assert core.receive_stun(answer(sent[0][0]), A.addr, 100.010)
    assert core.receive_stun(answer(sent[1][0]), B.addr, 100.030)
    assert core.done(100.03) and core.next_deadline() is None
    report = core.report()
    assert report.udp and report.mapping_varies_by_dest is False
    assert report.preferred_endpoint == MAPPED
    assert [round(s.latency_s or 0, 3) for s in report.servers] == [0.010, 0.030]


def test_lost_request_is_retried_and_latency_is_per_attempt() -> None:
    core = Netcheck([A], now=0.0, randbytes=rand())
    first = core.datagrams_to_send(0.0)
    assert core.datagrams_to_send(0.4) == []  # nothing due before the retry
    second = core.datagrams_to_send(0.5)
    assert len(second) == 1 and second[0][0] != first[0][0]  # a new txid
    assert core.receive_stun(answer(second[0][0]), A.addr, 0.52)
    assert core.datagrams_to_send(1.2) == []  # answered: the third attempt is skipped
    (result,) = core.report().servers
    assert result.latency_s == pytest.approx(0.02)


def test_late_answer_to_an_earlier_attempt_still_counts() -> None:
    core = Netcheck([A], now=0.0, randbytes=rand())
    first = core.datagrams_to_send(0.0)
    core.datagrams_to_send(0.5)
    assert core.receive_stun(answer(first[0][0]), A.addr, 0.7)
    assert core.report().servers[0].latency_s == pytest.approx(0.7)


def test_symmetric_nat_detected() -> None:
    core = Netcheck([A, B, C], now=0.0, randbytes=rand())
    sent = core.datagrams_to_send(0.0)
    other = parse_addr_port("203.0.113.5:50000")
    core.receive_stun(answer(sent[0][0], MAPPED), A.addr, 0.05)
    core.receive_stun(answer(sent[1][0], other), B.addr, 0.01)
    core.receive_stun(answer(sent[2][0], other), C.addr, 0.02)
    report = core.report()
    assert report.mapping_varies_by_dest is True
    assert report.preferred_endpoint == other  # two servers agree


def test_preferred_tie_goes_to_fastest() -> None:
    other = parse_addr_port("203.0.113.5:50000")
    report = netcheck.build_report([A, B], {A.name: (MAPPED, 0.2), B.name: (other, 0.1)})
    assert report.preferred_endpoint == other


def test_nothing_answers() -> None:
    core = Netcheck([A, B], now=0.0, randbytes=rand(), timeout=3.0)
    total = sum(len(core.datagrams_to_send(t)) for t in (0.0, 0.5, 1.2, 2.9))
    assert total == 6
    assert not core.done(2.99) and core.done(3.0)
    assert core.datagrams_to_send(3.5) == []
    report = core.report()
    assert report.udp is False and report.preferred_endpoint is None
    assert report.mapping_varies_by_dest is None
    assert [s.error for s in report.servers] == ["no reply", "no reply"]


def test_foreign_and_garbage_packets_ignored() -> None:
    core = Netcheck([A], now=0.0, randbytes=rand())
    core.datagrams_to_send(0.0)
    assert not core.receive_stun(stun.marshal_binding_response(bytes(12), MAPPED), A.addr, 0.1)
    assert not core.receive_stun(b"garbage", A.addr, 0.1)
    assert not core.report().udp


FORGED = parse_addr_port("198.51.100.66:4444")


def test_a_forged_answer_with_our_txid_counts_only_from_the_servers_address() -> None:
    """Issue 23: someone who saw our request (so knows its txid) answers first, from elsewhere,
    with a mapping of their choice: ignored; the server's own answer counts."""
    core = Netcheck([A], now=0.0, randbytes=rand())
    (request, dst), *_ = core.datagrams_to_send(0.0)
    assert dst == A.addr
    assert not core.receive_stun(answer(request, FORGED), FORGED, 0.01)
    assert not core.receive_stun(answer(request, FORGED), B.addr, 0.01)  # another server's address
    assert core.receive_stun(answer(request), A.addr, 0.05)
    assert core.report().preferred_endpoint == MAPPED


def test_a_forger_at_the_servers_address_gets_one_wrong_candidate_until_the_next_run() -> None:
    """What is left: an on-path attacker answering as the server, first. That yields one wrong
    candidate (the preferred endpoint), no more: the server's later answer changes nothing in this
    run, a replay of the forged answer nothing in the next one, which asks with new txids."""
    core = Netcheck([A], now=0.0, randbytes=rand())
    (request, _), *_ = core.datagrams_to_send(0.0)
    assert core.receive_stun(answer(request, FORGED), A.addr, 0.01)
    core.receive_stun(answer(request), A.addr, 0.05)
    assert core.report().preferred_endpoint == FORGED and core.report().mapping_varies_by_dest is None
    later = itertools.count(1000)
    again = Netcheck([A], now=20.0, randbytes=lambda n: next(later).to_bytes(n, "big"))
    (fresh, _), *_ = again.datagrams_to_send(20.0)
    assert not again.receive_stun(answer(request, FORGED), A.addr, 20.01)  # the old txid
    assert again.receive_stun(answer(fresh), A.addr, 20.05)
    assert again.report().preferred_endpoint == MAPPED


def test_unresolved_servers_are_reported() -> None:
    report = netcheck.build_report([A], {A.name: (MAPPED, 0.1)}, [("nope:1", "cannot resolve")])
    assert report.to_json()["servers"] == [
        {"server": A.name, "address": "192.0.2.10:3478", "mapped": str(MAPPED),
         "latency_ms": 100.0, "error": None},
        {"server": "nope:1", "address": None, "mapped": None, "latency_ms": None,
         "error": "cannot resolve"},
    ]


def test_resolve_rejects_malformed_spec() -> None:
    with pytest.raises(ParseError, match="Unable to parse endpoint: `nohost`"):
        netcheck.resolve_servers(["nohost"])
    servers, failed = netcheck.resolve_servers(["127.0.0.1:3478"])
    assert servers == [StunServer("127.0.0.1:3478", parse_addr_port("127.0.0.1:3478"))]
    assert failed == []


class FakeTransport:
    """A transport over a fake clock: servers answer after `rtt`, the first `drop` are lost."""

    def __init__(self, clock: list[float], rtt: float, drop: int) -> None:
        self.clock, self.rtt, self.drop = clock, rtt, drop
        self.queue: list[tuple[float, bytes, AddrPort]] = []

    def send(self, payload: bytes, dst: AddrPort) -> None:
        if self.drop:
            self.drop -= 1
            return
        self.queue.append((self.clock[0] + self.rtt, answer(payload), dst))

    def recv_wait(self, timeout: float) -> tuple[bytes, AddrPort] | None:
        self.queue.sort(key=lambda q: q[0])
        if self.queue and self.queue[0][0] <= self.clock[0] + timeout:
            at, data, src = self.queue.pop(0)
            self.clock[0] = at
            return data, src
        self.clock[0] += timeout
        return None


def test_run_shell_with_fake_clock_and_loss() -> None:
    clock = [0.0]
    transport = FakeTransport(clock, rtt=0.05, drop=1)
    report = netcheck.run(["192.0.2.10:3478", "192.0.2.20:3478"], transport,
                          clock=lambda: clock[0], randbytes=rand())
    assert report.udp
    latencies = sorted(s.latency_s or 0 for s in report.servers)
    assert latencies == [pytest.approx(0.05), pytest.approx(0.05)]
    assert clock[0] == pytest.approx(0.55)  # the lost one answered after its retry at 0.5


# --- real coturn -----------------------------------------------------------------------------


@pytest.mark.netns
def test_standalone_against_coturn(coturn: CoturnFactory) -> None:
    s1, s2 = coturn.start(), coturn.start()
    report = netcheck.standalone([f"127.0.0.1:{s1.port}", f"127.0.0.1:{s2.port}"], timeout=3)
    assert report.udp
    assert report.mapping_varies_by_dest is False
    assert report.preferred_endpoint is not None
    assert report.preferred_endpoint.ip == ipaddress.IPv4Address("127.0.0.1")
    assert all(s.latency_s is not None and s.latency_s < 3 for s in report.servers)


@pytest.mark.netns
def test_standalone_reports_silent_server(coturn: CoturnFactory) -> None:
    s1 = coturn.start()
    silent = f"127.0.0.1:{s1.port + 1 if s1.port < 65535 else s1.port - 1}"
    report = netcheck.standalone([f"127.0.0.1:{s1.port}", silent], timeout=1.5)
    assert report.udp
    assert [s.error for s in report.servers] == [None, "no reply"]
    assert report.mapping_varies_by_dest is None


@pytest.mark.netns
@pytest.mark.parametrize(("nat_rule", "varies"), [("masquerade", False),
                                                  ("masquerade random,fully-random", True)])
def test_shared_port_netcheck_through_nat(namespaces: Namespaces, coturn: CoturnFactory,
                                          nat_rule: str, varies: bool) -> None:
    """
    client:41641 (raw, WireGuard's port) --> router NAT --> inet: coturn :3478 and :3479
    A port-preserving masquerade maps both destinations alike; fully-random is symmetric.
    """
    lab = build_nat_lab(namespaces, nat_rule)
    coturn.start(lab.inet_ip, 3478, ns=lab.inet)
    coturn.start(lab.inet_ip, 3479, ns=lab.inet)
    out = nsrun(lab.client, "netcheck_shared", port=41641,
                servers=[f"{lab.inet_ip}:3478", f"{lab.inet_ip}:3479"])
    assert out["udp"] is True
    assert out["mapping_varies_by_dest"] is varies
    mapped = [s["mapped"] for s in out["servers"]]
    assert all(m.startswith(lab.router_public_ip + ":") for m in mapped)
    if not varies:
        assert out["preferred_endpoint"] == f"{lab.router_public_ip}:41641"


# --- CLI ---------------------------------------------------------------------------------------


@pytest.mark.netns
def test_cli_netcheck_json(coturn: CoturnFactory) -> None:
    s1 = coturn.start()
    result = CliRunner().invoke(build_app(), ["netcheck", "--json", "--stun", f"127.0.0.1:{s1.port}"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["udp"] is True
    assert doc["servers"][0]["server"] == f"127.0.0.1:{s1.port}"
    assert doc["servers"][0]["mapped"].startswith("127.0.0.1:")


@pytest.mark.netns
def test_cli_netcheck_human(coturn: CoturnFactory) -> None:
    s1 = coturn.start()
    result = CliRunner().invoke(build_app(), ["netcheck", "--stun", f"127.0.0.1:{s1.port}"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:2] == ["Report:", "\t* UDP: true"]
    assert "\t* Mapping varies by destination: unknown (fewer than two replies)" in lines
    assert any(line.startswith(f"\t\t- 127.0.0.1:{s1.port}: 127.0.0.1:") for line in lines)


def test_cli_netcheck_bad_server_is_usage_error() -> None:
    result = CliRunner().invoke(build_app(), ["netcheck", "--stun", "nohost"])
    assert result.exit_code == 2
    assert result.stderr == "meshctl: Unable to parse endpoint: `nohost` (expected HOST:PORT)\n"
    assert app is build_app()
