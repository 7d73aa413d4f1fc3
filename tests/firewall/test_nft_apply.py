"""The filter enforced by the real kernel, in a namespace pair (see conftest.py for the picture)."""

from __future__ import annotations

import socket
import subprocess

import pytest
from firewall_lab import SAMPLE_POLICY, NsPair, sample_filter

from meshctl.firewall.apply import FirewallError, apply_filter, read_table, remove_table
from meshctl.firewall.nft import table_objects

pytestmark = pytest.mark.netns

DEV, OPS, MONITOR, STRANGER = "100.64.0.2", "100.64.0.3", "100.64.0.4", "100.64.0.9"


def _queued(listener: socket.socket) -> int:
    """How many connections reached the listening socket (accepting them all)."""
    count = 0
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


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
        ["ip", "netns", "exec", nspair.server, "nft", "insert", "rule", "inet", "meshctl", "mesh-in", "accept"],
        check=True,
    )
    assert apply_filter(pf, nspair.mesh_if, nspair.server) is True
    assert apply_filter(pf, nspair.mesh_if, nspair.server) is False


def test_allowed_port_connects_and_denied_syn_never_reaches_the_socket(nspair: NsPair) -> None:
    https, ssh = nspair.listen(443), nspair.listen(22)
    apply_filter(sample_filter("prod"), nspair.mesh_if, nspair.server)

    conn = nspair.connect(DEV, 443)
    assert conn is not None, "dev must reach prod:443"
    conn.close()
    assert _queued(https) == 1

    assert nspair.connect(DEV, 22) is None, "dev must not reach prod:22"
    assert _queued(ssh) == 0, "the denied SYN reached the listening socket"
    assert nspair.connect(STRANGER, 443) is None, "a non-member must reach nothing"
    assert _queued(https) == 0

    conn = nspair.connect(OPS, 22)
    assert conn is not None, "ops must reach prod:22"
    conn.close()
    assert _queued(ssh) == 1


def test_closed_allowed_port_is_refused_not_dropped(nspair: NsPair) -> None:
    apply_filter(sample_filter("prod"), nspair.mesh_if, nspair.server)
    cli = nspair.socket(nspair.client)
    cli.bind((DEV, 0))
    cli.settimeout(2)
    with pytest.raises(ConnectionRefusedError):
        cli.connect(("100.64.0.1", 443))  # allowed, nothing listening: the RST comes back
    cli.close()


def test_ping_only_where_the_policy_allows(nspair: NsPair) -> None:
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
    assert _queued(ssh) == 1

    # Policy change 2: dev loses :443. New connections stop being accepted.
    less = SAMPLE_POLICY.read_text().replace('"dst": ["tag:prod:443"]', '"dst": ["tag:prod:22"]')
    apply_filter(sample_filter("prod", less), nspair.mesh_if, nspair.server)
    assert nspair.connect(DEV, 443) is None
    assert _queued(https) == 0
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
    assert _queued(ssh) == 1
    tables = subprocess.run(
        ["ip", "netns", "exec", nspair.server, "nft", "list", "tables"], capture_output=True, text=True, check=True
    ).stdout
    assert "table inet other" in tables


def test_other_interfaces_are_not_filtered(nspair: NsPair) -> None:
    """The rules name the mesh interface: a filter for another interface changes nothing here."""
    ssh = nspair.listen(22)
    apply_filter(sample_filter("prod"), "not-" + nspair.mesh_if[:10], nspair.server)
    conn = nspair.connect(STRANGER, 22)
    assert conn is not None
    conn.close()
    assert _queued(ssh) == 1


def test_nft_refusal_is_a_firewall_error(nspair: NsPair) -> None:
    pf = sample_filter("prod")
    with pytest.raises(FirewallError, match="nft"):
        apply_filter(pf, "x" * 40, nspair.server)  # longer than IFNAMSIZ: nft refuses it
    assert read_table(nspair.server) is None
