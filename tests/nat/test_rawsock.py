"""Raw-socket shared-port I/O for real: BPF filtering, STUN from the WireGuard port, via a NAT."""

from __future__ import annotations

import pytest
from natsupport import CoturnFactory, Namespaces, build_nat_lab, nsrun

pytestmark = pytest.mark.netns

PORT = 41641


def test_filter_passes_only_stun_and_disco(namespaces: Namespaces) -> None:
    ns = namespaces.add("lo")
    out = nsrun(ns, "filter_loopback", port=PORT)
    kinds = [r["kind"] for r in out["received"]]
    assert kinds == ["stun", "disco"], out
    for r in out["received"]:
        assert r["dst"] == f"127.0.0.1:{PORT}"
        assert r["src"] == f"127.0.0.1:{out['peer_port']}"
    assert out["owner_count"] == 205  # the port's owner got all it was sent (we only observe)
    assert out["ttl"] == 3
    # no crash on what cannot be sent: IPv6 (IPv4-only raw path) and no route (lo only here)
    assert out["ipv6_sent"] is False and out["unroutable_sent"] is False


@pytest.mark.parametrize("plain", [False, True], ids=["recvmmsg", "recv"])
def test_only_admitted_packets_are_read_out_and_the_filter_narrows(namespaces: Namespaces, plain: bool) -> None:
    ns = namespaces.add("lo")
    out = nsrun(ns, "admitted_loopback", port=PORT, plain=plain)
    assert out["refused"] == 150 and out["admitted"] == 3 and out["sources"] == [out["peer"]], out
    assert out["after_narrowing"] is False, "disco from a key outside the list, or STUN, got through"


def test_raw_stun_from_bound_port_on_loopback(namespaces: Namespaces,
                                              coturn: CoturnFactory) -> None:
    ns = namespaces.add("lo")
    server = coturn.start("127.0.0.1", 3478, ns=ns)
    out = nsrun(ns, "stun_from_port", port=PORT, server=f"127.0.0.1:{server.port}",
                bind="127.0.0.1")
    assert out["mapped"] == f"127.0.0.1:{PORT}"
    assert out["dst"] == f"127.0.0.1:{PORT}"


@pytest.mark.parametrize("nat_rule", ["masquerade", "masquerade random,fully-random"])
def test_raw_stun_through_nat_reports_nat_address(namespaces: Namespaces, coturn: CoturnFactory,
                                                  nat_rule: str) -> None:
    """
    client 192.168.77.2:41641 --> router (masquerade, 198.18.0.1) --> inet 198.18.0.2 coturn
    The mapped address coturn reports must be the router's: the UDP checksum was right,
    so the NAT translated the packet (a bad checksum makes it leak 192.168.77.2).
    """
    lab = build_nat_lab(namespaces, nat_rule)
    server = coturn.start(lab.inet_ip, 3478, ns=lab.inet)
    out = nsrun(lab.client, "stun_from_port", port=PORT, server=f"{server.ip}:{server.port}")
    assert out["mapped"] is not None, out
    mapped_ip, mapped_port = out["mapped"].rsplit(":", 1)
    assert mapped_ip == lab.router_public_ip
    if nat_rule == "masquerade":
        assert int(mapped_port) == PORT  # Linux masquerade preserves the port when it can
    assert out["dst"] == f"{lab.client_ip}:{PORT}"  # the reply came back de-NATed to our port


def test_bad_checksum_gets_no_answer_through_nat(namespaces: Namespaces,
                                                 coturn: CoturnFactory) -> None:
    """Negative control for the test above: the checksum really matters on this path."""
    lab = build_nat_lab(namespaces)
    server = coturn.start(lab.inet_ip, 3478, ns=lab.inet)
    out = nsrun(lab.client, "stun_bad_checksum", port=PORT, server=f"{server.ip}:{server.port}")
    assert out == {"answered": False}
