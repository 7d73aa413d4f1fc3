"""The filter enforced by the real kernel, in a namespace pair (see conftest.py for the picture)."""

from __future__ import annotations

import socket
import subprocess

import pytest
from firewall_lab import SAMPLE_POLICY, NsPair, queued, sample_filter

from meshctl.firewall.apply import FirewallError, apply_filter, layout_for, read_table, remove_table
from meshctl.firewall.nft import Layout, table_objects

pytestmark = pytest.mark.netns


DEV, OPS, MONITOR, STRANGER = "100.64.0.2", "100.64.0.3", "100.64.0.4", "100.64.0.9"


def _echo(conn: socket.socket, listener_side: socket.socket, data: bytes) -> bytes:
    conn.sendall(data)
    listener_side.settimeout(2)
    return listener_side.recv(100)


def test_apply_is_skipped_when_the_kernel_already_has_it(nspair: NsPair) -> None:
    pf = sample_filter("prod")
    assert read_table(nspair.server) is None
    assert apply_filter(pf, nspair.mesh_if, nspair.server) is True
    assert read_table(nspair.server) == table_objects(pf, nspair.mesh_if)
    assert apply_filter(pf, nspair.mesh_if, nspair.server) is False
    # A manual edit is noticed and repaired on the next pass.
    subprocess.run(
        ["ip", "netns", "exec", nspair.server, "nft", "insert", "rule", "netdev", "meshctl", "ingress", "accept"],
        check=True,
    )
    assert apply_filter(pf, nspair.mesh_if, nspair.server) is True
    assert apply_filter(pf, nspair.mesh_if, nspair.server) is False


def test_allowed_port_connects_and_denied_syn_never_reaches_the_socket(nspair: NsPair, layout: Layout) -> None:
    https, ssh = nspair.listen(443), nspair.listen(22)
    apply_filter(sample_filter("prod"), nspair.mesh_if, nspair.server)

    conn = nspair.connect(DEV, 443)
    assert conn is not None, "dev must reach prod:443"
    conn.close()
    assert queued(https) == 1

    assert nspair.connect(DEV, 22) is None, "dev must not reach prod:22"
    assert queued(ssh) == 0, "the denied SYN reached the listening socket"
    assert nspair.connect(STRANGER, 443) is None, "a non-member must reach nothing"
    assert queued(https) == 0

    conn = nspair.connect(OPS, 22)
    assert conn is not None, "ops must reach prod:22"
    conn.close()
    assert queued(ssh) == 1


def test_closed_allowed_port_is_refused_not_dropped(nspair: NsPair) -> None:
    apply_filter(sample_filter("prod"), nspair.mesh_if, nspair.server)
    cli = nspair.socket(nspair.client)
    cli.bind((DEV, 0))
    cli.settimeout(2)
    with pytest.raises(ConnectionRefusedError):
        cli.connect(("100.64.0.1", 443))  # allowed, nothing listening: the RST comes back
    cli.close()


def test_ping_only_where_the_policy_allows(nspair: NsPair, layout: Layout) -> None:
    apply_filter(sample_filter("prod"), nspair.mesh_if, nspair.server)
    assert nspair.ping(DEV), "dev may reach prod:443, so it may ping prod"
    assert nspair.ping(MONITOR), "monitor may reach prod:9100, so it may ping prod"
    assert not nspair.ping(STRANGER)
    # Developers lose their only port on prod: they lose ping with it; ops keeps both.
    text = SAMPLE_POLICY.read_text().replace('"dst": ["tag:prod:443"]', '"dst": ["backup-net:443"]')
    apply_filter(sample_filter("prod", text), nspair.mesh_if, nspair.server)
    assert not nspair.ping(DEV)
    assert nspair.ping(OPS)


def test_replacing_rules_keeps_established_and_stops_newly_forbidden(nspair: NsPair) -> None:
    https, ssh = nspair.listen(443), nspair.listen(22)
    apply_filter(sample_filter("prod"), nspair.mesh_if, nspair.server)
    conn = nspair.connect(DEV, 443)
    assert conn is not None
    https.setblocking(True)
    https.settimeout(2)
    server_side, _ = https.accept()
    https.setblocking(False)
    assert _echo(conn, server_side, b"before") == b"before"

    # Policy change 1: dev also gets :22. The open :443 connection survives the replace.
    more = SAMPLE_POLICY.read_text().replace('"dst": ["tag:prod:443"]', '"dst": ["tag:prod:22,443"]')
    assert apply_filter(sample_filter("prod", more), nspair.mesh_if, nspair.server) is True
    assert _echo(conn, server_side, b"after") == b"after"
    server_side.sendall(b"reply")
    conn.settimeout(2)
    assert conn.recv(100) == b"reply"
    ssh_conn = nspair.connect(DEV, 22)
    assert ssh_conn is not None, "after the change dev reaches :22"
    ssh_conn.close()
    assert queued(ssh) == 1

    # Policy change 2: dev loses :443. New connections stop being accepted.
    less = SAMPLE_POLICY.read_text().replace('"dst": ["tag:prod:443"]', '"dst": ["tag:prod:22"]')
    apply_filter(sample_filter("prod", less), nspair.mesh_if, nspair.server)
    assert nspair.connect(DEV, 443) is None
    assert queued(https) == 0
    conn.close()
    server_side.close()


def test_down_removes_only_our_table(nspair: NsPair) -> None:
    ssh = nspair.listen(22)
    subprocess.run(["ip", "netns", "exec", nspair.server, "nft", "add", "table", "inet", "other"], check=True)
    apply_filter(sample_filter("prod"), nspair.mesh_if, nspair.server)
    assert nspair.connect(DEV, 22) is None
    assert remove_table(nspair.server) is True
    assert read_table(nspair.server) is None
    assert remove_table(nspair.server) is False
    conn = nspair.connect(DEV, 22)
    assert conn is not None, "without meshctl's table nothing is filtered"
    conn.close()
    assert queued(ssh) == 1
    tables = subprocess.run(
        ["ip", "netns", "exec", nspair.server, "nft", "list", "tables"], capture_output=True, text=True, check=True
    ).stdout
    assert "table inet other" in tables


def test_other_interfaces_are_not_filtered(nspair: NsPair) -> None:
    """The mesh filter names the mesh interface: on another interface the policy decides
    nothing, and only the mesh's own addresses are kept out (the strong host model)."""
    tag = nspair.mesh_if[4:]
    subprocess.run(["ip", "-n", nspair.server, "addr", "add", "10.9.0.1/24", "dev", nspair.mesh_if], check=True)
    subprocess.run(["ip", "-n", nspair.client, "addr", "add", "10.9.0.2/24", "dev", f"pc{tag}"], check=True)
    ssh = nspair.listen(22)
    lan_ssh = nspair.socket(nspair.server)
    lan_ssh.bind(("10.9.0.1", 22))
    lan_ssh.listen(1)
    lan_ssh.setblocking(False)
    apply_filter(sample_filter("prod"), "not-" + nspair.mesh_if[:10], nspair.server)
    cli = nspair.socket(nspair.client)
    cli.bind(("10.9.0.2", 0))
    cli.settimeout(2)
    cli.connect(("10.9.0.1", 22))  # a port the policy denies to everyone but ops: not its business here
    cli.close()
    assert queued(lan_ssh) == 1
    assert nspair.connect(STRANGER, 22) is None, "a mesh address reached from outside the mesh interface"
    assert queued(ssh) == 0
    ssh.close()
    lan_ssh.close()


def test_nft_refusal_is_a_firewall_error(nspair: NsPair) -> None:
    pf = sample_filter("prod")
    with pytest.raises(FirewallError, match="nft"):
        apply_filter(pf, "x" * 40, nspair.server)  # longer than IFNAMSIZ: nft refuses it
    assert read_table(nspair.server) is None


# --- stateless: what belongs to allowed traffic, told apart without connection tracking -----------


def _udp(nspair: NsPair, ns: str, addr: str, port: int) -> socket.socket:
    sock = nspair.socket(ns, socket.SOCK_DGRAM)
    sock.bind((addr, port))
    sock.settimeout(1)
    return sock


def _received(sock: socket.socket) -> bytes | None:
    try:
        return sock.recv(65535)
    except TimeoutError:
        return None


def test_udp_replies_to_what_the_node_sent_pass_and_nothing_else(nspair: NsPair, layout: Layout) -> None:
    apply_filter(sample_filter("prod"), nspair.mesh_if, nspair.server)
    prod = _udp(nspair, nspair.server, "100.64.0.1", 5353)
    dev = _udp(nspair, nspair.client, DEV, 7000)
    prod.sendto(b"query", (DEV, 7000))  # outbound is not filtered, and records the flow
    assert _received(dev) == b"query"
    dev.sendto(b"answer", ("100.64.0.1", 5353))
    assert _received(prod) == b"answer", "the reply to prod's datagram was dropped"

    # The same peer on another port, or to another of prod's ports: new traffic, not allowed.
    other = _udp(nspair, nspair.client, DEV, 7001)
    other.sendto(b"unsolicited", ("100.64.0.1", 5353))
    assert _received(prod) is None
    prod2 = _udp(nspair, nspair.server, "100.64.0.1", 5354)
    dev.sendto(b"unsolicited", ("100.64.0.1", 5354))
    assert _received(prod2) is None
    for sock in (prod, prod2, dev, other):
        sock.close()


def test_a_policy_change_keeps_the_recorded_udp_flows(nspair: NsPair, layout: Layout) -> None:
    apply_filter(sample_filter("prod"), nspair.mesh_if, nspair.server)
    prod = _udp(nspair, nspair.server, "100.64.0.1", 5353)
    dev = _udp(nspair, nspair.client, DEV, 7000)
    prod.sendto(b"query", (DEV, 7000))
    assert _received(dev) == b"query"
    more = SAMPLE_POLICY.read_text().replace('"dst": ["tag:prod:443"]', '"dst": ["tag:prod:22,443"]')
    assert apply_filter(sample_filter("prod", more), nspair.mesh_if, nspair.server) is True
    assert read_table(nspair.server) == table_objects(sample_filter("prod", more), nspair.mesh_if, layout)
    dev.sendto(b"late answer", ("100.64.0.1", 5353))  # no new packet from prod in between
    assert _received(prod) == b"late answer", "the policy change forgot prod's UDP flow"
    prod.close()
    dev.close()


def test_connections_the_node_opens_work_and_stay_one_way(nspair: NsPair, layout: Layout) -> None:
    apply_filter(sample_filter("prod"), nspair.mesh_if, nspair.server)
    listener = nspair.socket(nspair.client)
    listener.bind((DEV, 8080))
    listener.listen(1)
    listener.settimeout(2)
    out = nspair.socket(nspair.server)
    out.settimeout(2)
    out.connect((DEV, 8080))  # the SYN-ACK comes back through the filter
    theirs, _ = listener.accept()
    theirs.settimeout(2)
    out.sendall(b"ping")
    assert theirs.recv(10) == b"ping"
    theirs.sendall(b"pong" * 10000)
    got = b""
    while len(got) < 40000:
        got += out.recv(65536)
    assert got == b"pong" * 10000
    # dev still cannot open a connection of its own to the same port on prod
    back = nspair.listen(8080)
    assert nspair.connect(DEV, 8080) is None
    assert queued(back) == 0
    for sock in (out, theirs, listener, back):
        sock.close()


def test_fragmented_datagrams_pass_only_to_allowed_ports(nspair: NsPair, layout: Layout) -> None:
    """Without conntrack nothing reassembles before the filter: later fragments carry no ports."""
    apply_filter(sample_filter("prod"), nspair.mesh_if, nspair.server)
    https = _udp(nspair, nspair.server, "100.64.0.1", 443)  # dev may reach :443 over UDP
    closed = _udp(nspair, nspair.server, "100.64.0.1", 444)
    dev = _udp(nspair, nspair.client, DEV, 0)
    big = bytes(range(256)) * 16  # 4 KiB: three fragments on a 1500-byte link
    dev.sendto(big, ("100.64.0.1", 443))
    assert _received(https) == big
    dev.sendto(big, ("100.64.0.1", 444))
    assert _received(closed) is None
    for sock in (https, closed, dev):
        sock.close()


def test_a_table_of_an_older_layout_is_replaced(nspair: NsPair) -> None:
    """An older meshctl's table (stateful input chain, no reply sets) is rebuilt in one go."""
    old = (
        "table inet meshctl {\n"
        "  chain input { type filter hook input priority filter; policy accept;\n"
        f'    iifname "{nspair.mesh_if}" ct state established,related accept\n'
        f'    iifname "{nspair.mesh_if}" drop\n'
        "  }\n"
        "}\n"
    )
    subprocess.run(["ip", "netns", "exec", nspair.server, "nft", "-f", "-"], input=old, text=True, check=True)
    pf = sample_filter("prod")
    assert apply_filter(pf, nspair.mesh_if, nspair.server) is True
    assert read_table(nspair.server) == table_objects(pf, nspair.mesh_if)
    https = nspair.listen(443)
    conn = nspair.connect(DEV, 443)
    assert conn is not None
    conn.close()
    assert queued(https) == 1


def test_a_recreated_interface_is_filtered_again(nspair: NsPair) -> None:
    """A device-bound chain goes with its device (Linux 6.1 removes it): the next apply puts it back."""
    https, ssh = nspair.listen(443), nspair.listen(22)
    pf = sample_filter("prod")
    assert apply_filter(pf, nspair.mesh_if, nspair.server) is True
    assert layout_for(nspair.mesh_if, nspair.server) is Layout.DEVICE
    nspair.recreate_mesh_interface()
    apply_filter(pf, nspair.mesh_if, nspair.server)  # True where the kernel dropped the chains
    assert read_table(nspair.server) == table_objects(pf, nspair.mesh_if)
    assert nspair.connect(DEV, 22) is None and queued(ssh) == 0
    conn = nspair.connect(DEV, 443)
    assert conn is not None
    conn.close()
    assert queued(https) == 1


def test_a_missing_interface_is_filtered_by_name_until_it_exists(nspair: NsPair) -> None:
    """No device to bind to yet: the HOOKS layout holds the filter by name; once the interface
    exists, the next apply moves to the device's own hooks."""
    name = "later" + nspair.mesh_if[-6:]
    assert layout_for(name, nspair.server) is Layout.HOOKS
    pf = sample_filter("prod")
    assert apply_filter(pf, name, nspair.server) is True
    assert read_table(nspair.server) == table_objects(pf, name, Layout.HOOKS)
    subprocess.run(["ip", "-n", nspair.server, "link", "add", name, "type", "veth", "peer", "name", name + "p"],
                   check=True)
    assert apply_filter(pf, name, nspair.server) is True
    assert read_table(nspair.server) == table_objects(pf, name, Layout.DEVICE)  # the inet table is gone
