"""coturn and git daemon in the lab, reached from behind a NAT; one_lan addressing.

    a -- nat-a (port-restricted) --+                          +-- nat-b (symmetric) -- b
                                   +-- internet: git, coturn -+
"""

from __future__ import annotations

import subprocess

import pytest
from lab_support import need_lab

from lab import PORT_RESTRICTED, SYMMETRIC, Lab, Node, one_lan, two_nats
from lab.core import udptool_argv

pytestmark = pytest.mark.netns


def _git(lab: Lab, node: Node, *args: str) -> str:
    return lab.run(node, ["git", "-c", "user.name=lab", "-c", "user.email=lab@example.org",
                          *args]).stdout


def test_coturn_answers_through_nat_with_the_public_address() -> None:
    need_lab("turnserver", "git")
    with Lab() as lab:
        t = two_nats(lab, PORT_RESTRICTED, SYMMETRIC)
        host, port = t.stun.split(":")
        assert (host, int(port)) == (str(t.internet.service_ips[0]), 3478)
        # One-shot request: mapping plus RFC 5780 OTHER-ADDRESS on the second address.
        out = lab.run(t.a, udptool_argv("stun", host, port, "2")).stdout.split()
        assert out[:2] == ["mapped", str(t.nat_a.public_ip)]
        assert out[3:] == ["other", str(t.internet.service_ips[1]), "3479"]
        # From a fixed port: port-restricted keeps it, on both server addresses.
        a = lab.udp_agent(t.a, 41641)
        for server in t.internet.service_ips:
            assert a.stun(server) == (str(t.nat_a.public_ip), 41641)
        # Symmetric: both answers carry the public address, with different ports.
        b = lab.udp_agent(t.b, 41641)
        first, second = (b.stun(server) for server in t.internet.service_ips)
        assert first is not None and second is not None
        assert first[0] == second[0] == str(t.nat_b.public_ip)
        assert first[1] != second[1]


def test_git_daemon_serves_clone_and_accepts_push() -> None:
    need_lab("git", "turnserver")
    with Lab() as lab:
        t = two_nats(lab, PORT_RESTRICTED, PORT_RESTRICTED)
        # The admin seeds the repository through the filesystem (the lab's root side).
        seed = lab.tempdir("seed")
        subprocess.run(["git", "init", "-q", "-b", "main", str(seed)], check=True)
        (seed / "state.json").write_text("{}\n")
        for args in (["add", "state.json"], ["commit", "-qm", "init"],
                     ["push", "-q", str(t.repo_dir), "main"]):
            subprocess.run(["git", "-C", str(seed), "-c", "user.name=lab",
                            "-c", "user.email=lab@example.org", *args], check=True)
        # a, behind its NAT, clones over git://, commits on a join branch and pushes it.
        work = lab.tempdir("a-clone") / "repo"
        _git(lab, t.a, "clone", "-q", t.git_url, str(work))
        assert (work / "state.json").read_text() == "{}\n"
        (work / "requests").mkdir()
        (work / "requests" / "a.json").write_text('{"name": "a"}\n')
        _git(lab, t.a, "-C", str(work), "checkout", "-qb", "join/a")
        _git(lab, t.a, "-C", str(work), "add", "requests/a.json")
        _git(lab, t.a, "-C", str(work), "commit", "-qm", "join a")
        _git(lab, t.a, "-C", str(work), "push", "-q", "origin", "join/a")
        pushed = subprocess.run(["git", "-C", str(t.repo_dir), "rev-parse", "join/a"],
                                capture_output=True, text=True, check=True).stdout.strip()
        assert pushed == _git(lab, t.a, "-C", str(work), "rev-parse", "HEAD").strip()
        # b sees the branch through the other NAT.
        assert f"{pushed}\trefs/heads/join/a" in _git(lab, t.b, "ls-remote", t.git_url)


def test_one_lan_pairs_reach_each_other_over_ipv4_and_ipv6() -> None:
    need_lab("git", "ping")
    with Lab() as lab:
        net = one_lan(lab, 3)
        assert [h.name for h in net.hosts] == ["n1", "n2", "n3"]
        addrs = {h.ipv4 for h in (*net.hosts, net.git)}
        assert len(addrs) == 4 and all(a in net.lan.ipv4 for a in addrs)
        for src in net.hosts:
            for dst in net.hosts:
                if src is dst:
                    continue
                for addr in (str(dst.ipv4), str(dst.ipv6)):
                    lab.run(src, ["ping", "-c1", "-W2", addr])
        assert net.hosts[0].ipv6.is_private  # ULA
        assert lab.run(net.hosts[0], ["git", "ls-remote", net.git_url]).returncode == 0


def test_meshctl_runs_in_a_namespace_with_its_own_state(lab: Lab) -> None:
    a, b = lab.host("a"), lab.host("b")
    env_a, env_b = lab.meshctl_env(a), lab.meshctl_env(b)
    assert env_a["MESHCTL_STATE_DIR"] != env_b["MESHCTL_STATE_DIR"]
    assert env_a["MESHCTL_INTERFACE"] != env_b["MESHCTL_INTERFACE"]
    assert lab.meshctl_env(a) == env_a  # stable per node
    assert env_a["MESHCTL_INTERFACE"].startswith(lab.run_id)
    assert lab.meshctl(a, ["version"]).stdout.startswith("meshctl ")
    shown = lab.run(a, ["sh", "-c", "echo $MESHCTL_INTERFACE"], env=env_a).stdout.strip()
    assert shown == env_a["MESHCTL_INTERFACE"]


def test_the_gateway_keeps_its_address_when_hosts_join_later(lab: Lab) -> None:
    """A host resolves the internet's gateway, then more hosts join the internet (one with a lower
    MAC than any): its neighbour entry must stay right. A bridge without an address of its own takes
    its lowest port's and changes with the ports, and the first host's packets went to the old
    address (a relay's git fetch hung in SYN-SENT)."""
    first = lab.public_host("first")
    inet = lab.internet()
    lab.run(first, ["ping", "-c1", "-W2", str(inet.service_ips[0])])
    bridge = inet.link("wan").ifname
    mac = lab.run(inet, ["cat", f"/sys/class/net/{bridge}/address"]).stdout.strip()
    lab.public_host("second")
    low = lab.ifname("low")
    lab.run(inet, ["ip", "link", "add", low, "address", "02:00:00:00:00:01", "type", "veth", "peer", "name",
                   lab.ifname("lowp")])
    lab.run(inet, ["ip", "link", "set", low, "master", bridge, "up"])
    assert lab.run(inet, ["cat", f"/sys/class/net/{bridge}/address"]).stdout.strip() == mac
    gateway = inet.link("wan").ipv4
    assert gateway is not None
    neigh = lab.run(first, ["ip", "neigh", "show", str(gateway.ip)]).stdout
    assert f"lladdr {mac} " in neigh, neigh
    lab.run(first, ["ping", "-c1", "-W2", str(inet.service_ips[0])])
