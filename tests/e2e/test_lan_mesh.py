"""End-to-end: three nodes on one LAN, configured by meshctl from a git server (issue 3).

One mesh is built for the whole module (init, three joins as pull-request branches, approval,
merge, `meshctl up` on each node). The tests run in file order and the ones that change the
mesh for good come last: kill mid-apply (adds 2,000 members, then removes them), revoke, down.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Final

import pytest
from e2e_support import (
    WgDump,
    add_members,
    agent_pid,
    interface,
    ip_json,
    kill_and_wait,
    mesh_prefixes,
    meshctl_up,
    pid_alive,
    remove_members,
    start_kill_mid_set,
    state_dir,
    wait_for,
    wg_dump,
)

from lab import Node, meshctl_argv
from lab.scenario import MeshScenario
from meshctl.agent.control import query_agent
from meshctl.agent.desired import KEEPALIVE_S
from meshctl.coord import admin
from meshctl.coord.admin import MAGICDNS_IP
from meshctl.wg.userspace import SOCKET_DIR, find_wireguard_go, wireguard_go_processes

pytestmark = pytest.mark.netns

NAMES: Final = ("node1", "node2", "node3")
# WireGuard starts a new handshake after REKEY_AFTER_TIME (120 s) of sending on a session:
# a handshake younger than this cannot be renewed on its own during a few seconds of test.
YOUNG_HANDSHAKE_S: Final = 90
# Adding 2,000 peers is a ~350 kB UAPI set; a UNIX socket buffers ~210 kB, so the agent is
# still writing it while wireguard-go works through the first ~40 % (a few hundred ms).
BIG_CHANGE_MEMBERS: Final = 2000


def reaches(mesh: MeshScenario, src: str, ip: str, tries: int = 3) -> bool:
    return any(mesh.ping(src, ip) for _ in range(tries))


def unreachable(mesh: MeshScenario, src: str, ip: str) -> bool:
    return not mesh.ping(src, ip, count=1, timeout_s=1)


def node_of(mesh: MeshScenario, name: str) -> Node:
    return mesh.members[name].node


@pytest.fixture(scope="module")
def keys(lan_mesh: MeshScenario) -> dict[str, str]:
    """Each member's WireGuard public key, from its own `status` (read once, while the mesh is small)."""
    return {name: str(lan_mesh.status(name)["self"]["wg_public_key"]) for name in NAMES}


def up(mesh: MeshScenario, name: str) -> None:
    meshctl_up(mesh.lab, node_of(mesh, name))


def restart_agent(mesh: MeshScenario, name: str) -> int:
    """SIGTERM the agent (it leaves the interface up) and `meshctl up` again; the new pid."""
    lab, node = mesh.lab, node_of(mesh, name)
    old = agent_pid(lab, node)
    assert old is not None, f"{name}: no agent running"
    kill_and_wait(old, signal.SIGTERM)
    up(mesh, name)
    new = agent_pid(lab, node)
    assert new is not None and new != old
    return new


def nft_rules(mesh: MeshScenario, name: str) -> list[str]:
    """Every rule of meshctl's nft table, as (chain, expression) JSON text, in order."""
    out = mesh.lab.run(node_of(mesh, name), ["nft", "-j", "list", "table", "netdev", "meshctl"]).stdout
    return [json.dumps([item["rule"]["chain"], item["rule"]["expr"]], sort_keys=True)
            for item in json.loads(out)["nftables"] if "rule" in item]


def wireguard_go_pids(ifname: str) -> list[int]:
    """Every live wireguard-go process serving `ifname` (there must be one)."""
    return [pid for name, pid in wireguard_go_processes() if name == ifname]


def assert_interface_whole(mesh: MeshScenario, name: str) -> None:
    """The node's two mesh addresses (and MagicDNS's), each once; each meshctl route once."""
    lab, node, member = mesh.lab, node_of(mesh, name), mesh.members[name]
    ifname = interface(lab, node)
    [link] = ip_json(lab, node, "addr", "show", "dev", ifname)
    addrs = Counter(f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]
                    if not a["local"].startswith("fe80:"))
    own = {f"{member.mesh_ipv4}/32", f"{member.mesh_ipv6}/128"}
    assert own <= set(addrs) <= own | {f"{MAGICDNS_IP}/32"}, addrs
    assert set(addrs.values()) == {1}, addrs
    routes = [r["dst"] for family in ("-4", "-6") for r in ip_json(lab, node, family, "route", "show",
                                                                     "dev", ifname, "proto", "109")]
    assert len(routes) == len(set(routes)), f"duplicate routes on {ifname}: {routes}"
    v4, v6 = ipaddress.ip_address(member.mesh_ipv4), ipaddress.ip_address(member.mesh_ipv6)
    assert any(v4 in ipaddress.ip_network(r) for r in routes if ":" not in r), routes
    assert any(v6 in ipaddress.ip_network(r) for r in routes if ":" in r), routes


# --- the working mesh --------------------------------------------------------------------------


def test_every_pair_pings_over_ipv4_and_ipv6(lan_mesh: MeshScenario) -> None:
    failed = [(a, b, ip) for a in NAMES for b in NAMES if a != b
              for ip in (lan_mesh.members[b].mesh_ipv4, lan_mesh.members[b].mesh_ipv6)
              if not reaches(lan_mesh, a, ip)]
    assert not failed


def test_wg_show_agrees_with_status_json(lan_mesh: MeshScenario, keys: dict[str, str]) -> None:
    for name in NAMES:
        for other in NAMES:  # traffic both ways, so every handshake and counter is set
            if other != name:
                assert reaches(lan_mesh, name, lan_mesh.members[other].mesh_ipv4)
        doc = lan_mesh.status(name)
        dump = wg_dump(lan_mesh.lab, node_of(lan_mesh, name))  # after status: counters only grow
        me = doc["self"]
        assert (me["wg_public_key"], me["listen_port"]) == (dump.public_key, dump.listen_port)
        assert me["backend"] == "userspace" and me["interface"] == interface(lan_mesh.lab, node_of(lan_mesh, name))
        peers = {p["wg_public_key"]: p for p in doc["peers"]}
        assert set(peers) == set(dump.peers) == {keys[o] for o in NAMES if o != name}
        for key, p in peers.items():
            wg = dump.peers[key]
            other = lan_mesh.members[p["name"]]
            assert keys[p["name"]] == key
            assert p["endpoint"] == wg.endpoint == f"{other.node.ipv4}:51820"
            assert mesh_prefixes(p["mesh_ips"]) == wg.allowed_ips == mesh_prefixes(
                [other.mesh_ipv4, other.mesh_ipv6])
            assert wg.keepalive == KEEPALIVE_S
            assert p["path"] == "direct"
            assert p["latest_handshake"] is not None and wg.latest_handshake is not None
            assert p["latest_handshake"] <= wg.latest_handshake
            assert 0 < p["rx_bytes"] <= wg.rx_bytes and 0 < p["tx_bytes"] <= wg.tx_bytes
        assert doc["coordination"]["stale"] is False


def test_the_agents_next_pass_heals_a_route_and_an_nft_rule_deleted_by_hand(lan_mesh: MeshScenario) -> None:
    """Every pass reads every subsystem back; `meshctl sync` asks the agent for one."""
    lab, node = lan_mesh.lab, node_of(lan_mesh, "node1")
    ifname = interface(lab, node)
    rules = nft_rules(lan_mesh, "node1")
    route = str(ipaddress.ip_network(f"{lan_mesh.members['node2'].mesh_ipv4}/10", strict=False))
    lab.run(node, ["ip", "route", "del", route, "dev", ifname, "proto", "109"])
    listing = json.loads(lab.run(node, ["nft", "-j", "-a", "list", "table", "netdev", "meshctl"]).stdout)
    rule = next(item["rule"] for item in listing["nftables"] if "rule" in item)
    lab.run(node, ["nft", "delete", "rule", "netdev", "meshctl", rule["chain"], "handle", str(rule["handle"])])
    assert nft_rules(lan_mesh, "node1") != rules
    lan_mesh.meshctl("node1", "sync")
    assert nft_rules(lan_mesh, "node1") == rules
    assert_interface_whole(lan_mesh, "node1")
    assert reaches(lan_mesh, "node1", lan_mesh.members["node2"].mesh_ipv4)


def test_wireguard_go_sockets_get_large_buffers(lan_mesh: MeshScenario) -> None:
    """Debian's wireguard-go keeps 208 KiB UDP buffers, which cap a direct TCP flow; the agent
    gives its sockets 8 MiB once the link is up (the kernel reports twice what was set)."""
    for name in NAMES:
        out = lan_mesh.lab.run(node_of(lan_mesh, name), ["ss", "-uampnH"]).stdout
        sockets = re.sub(r"\n\s+", " ", out)  # ss puts skmem on an indented second line
        lines = [ln for ln in sockets.splitlines() if '"wireguard-go"' in ln]
        assert lines, out
        for line in lines:
            mem = dict(re.findall(r"\b(rb|tb)(\d+)", line))
            assert int(mem["rb"]) >= 8 << 20 and int(mem["tb"]) >= 8 << 20, (name, line)


def test_the_agent_runs_on_files_that_outlive_up(lan_mesh: MeshScenario) -> None:
    """`meshctl up` (the one-file binary) exits once the agent runs and deletes what it unpacked;
    an agent sharing those files would fail on the first module it loads later."""
    for name in NAMES:
        pid = agent_pid(lan_mesh.lab, node_of(lan_mesh, name))
        assert pid is not None, name
        maps = Path(f"/proc/{pid}/maps").read_text()
        deleted = [ln for ln in maps.splitlines() if "(deleted)" in ln and "/_MEI" in ln]
        assert not deleted, (name, deleted[:3])


def test_agent_restart_keeps_handshakes(lan_mesh: MeshScenario) -> None:
    lab, node = lan_mesh.lab, node_of(lan_mesh, "node1")
    for other in ("node2", "node3"):
        assert reaches(lan_mesh, "node1", lan_mesh.members[other].mesh_ipv4)
    before = wg_dump(lab, node)
    wg_pid = find_wireguard_go(interface(lab, node))
    now = int(time.time())
    young = {k: p.latest_handshake for k, p in before.peers.items()
             if p.latest_handshake and now - p.latest_handshake < YOUNG_HANDSHAKE_S}
    assert young, "no recent handshake to compare (the mesh is too old for this test)"

    restart_agent(lan_mesh, "node1")  # SIGTERM + `meshctl up` (down would remove the interface)

    for other in ("node2", "node3"):  # traffic right after the restart: still no new handshake
        assert reaches(lan_mesh, "node1", lan_mesh.members[other].mesh_ipv4)
    after = wg_dump(lab, node)
    assert find_wireguard_go(interface(lab, node)) == wg_pid, "wireguard-go was restarted"
    assert {k: after.peers[k].latest_handshake for k in young} == young
    assert {k: p.endpoint for k, p in after.peers.items()} == {k: p.endpoint for k, p in before.peers.items()}


def test_agent_restart_makes_no_wireguard_call(lan_mesh: MeshScenario) -> None:
    lab, node = lan_mesh.lab, node_of(lan_mesh, "node1")
    log = state_dir(lab, node) / "agent.log"
    log_offset = log.stat().st_size
    restart_agent(lan_mesh, "node1")
    time.sleep(2)  # the path manager's first answers (a few ms on a LAN) and the pass they trigger
    with log.open() as f:
        f.seek(log_offset)
        new_lines = f.read()
    assert "applied wg:" not in new_lines, new_lines  # nothing changed, nothing written


def test_agent_log_lines_carry_timestamps(lan_mesh: MeshScenario) -> None:
    text = (state_dir(lan_mesh.lab, node_of(lan_mesh, "node1")) / "agent.log").read_text()
    records = [ln for ln in text.splitlines() if re.match(r"^(\S+ \S+ )?(DEBUG|INFO|WARNING|ERROR) meshctl", ln)]
    assert records, text
    undated = [ln for ln in records if not re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", ln)]
    assert not undated, undated


def test_two_syncs_at_once_never_interleave(lan_mesh: MeshScenario, keys: dict[str, str]) -> None:
    lab, node = lan_mesh.lab, node_of(lan_mesh, "node2")
    ifname = interface(lab, node)
    node1_key = keys["node1"]
    # Break the device so a sync has work to do: a pass that read the device before the other
    # applied would plan (and print) the same repair again.
    lab.run(node, ["wg", "set", ifname, "peer", node1_key, "remove"])
    argv = ["ip", "netns", "exec", node.ns, *meshctl_argv(), "sync"]
    env = {**os.environ, **lab.meshctl_env(node), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for proc, (_out, err) in zip(procs, outs, strict=True):
        # "One waits or exits cleanly": success, or the lock's one-line message.
        assert proc.returncode == 0 or (proc.returncode == 1 and err.startswith("meshctl: ")
                                        and "lock" in err), err
        assert "Traceback" not in err
    repairs = [out for out, _ in outs if node1_key in out]
    assert len(repairs) <= 1, outs  # at most one pass saw the broken device
    dump = wg_dump(lab, node)
    members = lan_mesh.members
    assert set(dump.peers) == {node1_key, keys["node3"]}
    assert dump.peers[node1_key].allowed_ips == mesh_prefixes([members["node1"].mesh_ipv4,
                                                               members["node1"].mesh_ipv6])
    assert dump.peers[node1_key].endpoint == f"{members['node1'].node.ipv4}:51820"
    assert_interface_whole(lan_mesh, "node2")
    assert reaches(lan_mesh, "node2", members["node1"].mesh_ipv6)


def test_git_server_down_keeps_tunnels_and_marks_coordination_stale(lan_mesh: MeshScenario) -> None:
    lab, members = lan_mesh.lab, lan_mesh.members
    with lab.git_daemon_stopped(lan_mesh.git_url):
        proc = lan_mesh.meshctl("node1", "sync", check=False)
        assert proc.returncode == 1
        lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("hint: ")]
        assert len(lines) == 1, proc.stderr  # one clear line (plus an optional hint)
        assert lines[0].startswith("meshctl: ") and lan_mesh.git_url in lines[0], proc.stderr
        for other in ("node2", "node3"):
            assert reaches(lan_mesh, "node1", members[other].mesh_ipv4)
            assert reaches(lan_mesh, "node1", members[other].mesh_ipv6)
        coordination = lan_mesh.status("node1")["coordination"]
        assert coordination["stale"] is True and coordination["error"], coordination
    lan_mesh.meshctl("node1", "sync")  # the git host is back: fresh again
    assert lan_mesh.status("node1")["coordination"]["stale"] is False


def test_agent_killed_mid_apply_heals_on_next_pass(lan_mesh: MeshScenario, keys: dict[str, str]) -> None:
    lab, node, members = lan_mesh.lab, node_of(lan_mesh, "node1"), lan_mesh.members
    admin_key = lan_mesh.admin_dir / "admin.key"
    names = [f"bulk{i}" for i in range(BIG_CHANGE_MEMBERS)]
    fakes = add_members(lan_mesh.checkout, admin_key, names, int(time.time()))
    lan_mesh.git("add", "-A")
    lan_mesh.git("commit", "-q", "-m", f"Approve {len(names)} members")
    lan_mesh.git("push", "-q", str(lan_mesh.repo_dir), "main")
    addresses = {n: [str(a) for a in asg.addresses]
                 for n, asg in admin.open_checkout(lan_mesh.checkout).state.peers.items()}
    expected = {keys[n]: addresses[n] for n in ("node2", "node3")}
    for name, fake in zip(names, fakes, strict=True):
        expected[fake.wireguard.public().b64()] = addresses[name]

    def matches(dump: WgDump) -> bool:
        return set(dump.peers) == set(expected) and all(
            dump.peers[k].allowed_ips == mesh_prefixes(ips) for k, ips in expected.items())

    ifname = interface(lab, node)
    rules_before = nft_rules(lan_mesh, "node1")
    [wg_go] = wireguard_go_pids(ifname)
    try:
        pid = agent_pid(lab, node)
        assert pid is not None
        watcher = start_kill_mid_set(lab, node, pid)
        query_agent(state_dir(lab, node) / "agent.sock", {"cmd": "sync"}, 120)  # returns when it dies
        assert watcher.wait(60) == 0, "the agent never started applying the change"
        wait_for(lambda: not pid_alive(pid), "the killed agent to vanish")
        half = wg_dump(lab, node)
        assert len(half.peers) > 2, "the kill came before wireguard-go applied anything"
        assert not matches(half), "the kill came after the whole change was applied"

        up(lan_mesh, "node1")  # the next pass (a new agent)

        dump = wg_dump(lab, node)
        assert matches(dump)
        assert_interface_whole(lan_mesh, "node1")
        # no duplicate nft rules: the same rules as before the kill (the policy did not change)
        rules = nft_rules(lan_mesh, "node1")
        assert len(rules) == len(set(rules)) and sorted(rules) == sorted(rules_before), rules
        # the same wireguard-go still serves the interface, alone, on its one UAPI socket
        assert wireguard_go_pids(ifname) == [wg_go]
        assert [p.name for p in SOCKET_DIR.glob(f"{ifname}.*")] == [f"{ifname}.sock"]
        new_pid = agent_pid(lab, node)
        assert new_pid not in (None, pid)
        reply = query_agent(state_dir(lab, node) / "agent.sock", {"cmd": "status"})
        assert reply is not None and reply["pid"] == new_pid  # the dead agent's socket was replaced
        assert reaches(lan_mesh, "node1", members["node2"].mesh_ipv4)
    finally:  # the big change goes away again, so the tests after this one stay quick
        remove_members(lan_mesh.checkout, admin_key, names, int(time.time()))
        lan_mesh.git("add", "-A")
        lan_mesh.git("commit", "-q", "-m", f"Revoke {len(names)} members")
        lan_mesh.git("push", "-q", str(lan_mesh.repo_dir), "main")
        lan_mesh.meshctl("node1", "sync", check=False)
    assert len(wg_dump(lab, node).peers) == 2


# --- destructive: the mesh loses a member, then a node goes down ------------------------------------


def test_revoked_member_is_dropped_and_cut_off(lan_mesh: MeshScenario, keys: dict[str, str]) -> None:
    members = lan_mesh.members
    node3_key = keys["node3"]
    assert reaches(lan_mesh, "node3", members["node1"].mesh_ipv4)
    lan_mesh.revoke("node3")
    for name in ("node1", "node2"):
        lan_mesh.meshctl(name, "sync")
        assert node3_key not in wg_dump(lan_mesh.lab, node_of(lan_mesh, name)).peers
        assert "node3" not in {p["name"] for p in lan_mesh.status(name)["peers"]}
    for name in ("node1", "node2"):
        for ip in (members[name].mesh_ipv4, members[name].mesh_ipv6):
            assert unreachable(lan_mesh, "node3", ip), f"node3 still reaches {name} at {ip}"
        assert unreachable(lan_mesh, name, members["node3"].mesh_ipv4)
    assert reaches(lan_mesh, "node1", members["node2"].mesh_ipv4)
    assert reaches(lan_mesh, "node2", members["node1"].mesh_ipv6)
    # node3 is told what happened, once: not "not a member yet" at every retry.
    log = state_dir(lan_mesh.lab, node_of(lan_mesh, "node3")) / "agent.log"
    proc = lan_mesh.meshctl("node3", "sync", check=False)
    assert proc.returncode == 1
    assert "node3 was removed from mesh" in proc.stderr and "at serial" in proc.stderr, proc.stderr
    lan_mesh.meshctl("node3", "sync", check=False)
    told = log.read_text()  # its own timer may have told it first: still once
    assert told.count("was removed from mesh") == 1, told
    assert "not a member of mesh" not in told, told


def test_down_removes_interface_routes_and_wireguard_go(lan_mesh: MeshScenario) -> None:
    lab, node = lan_mesh.lab, node_of(lan_mesh, "node1")
    ifname = interface(lab, node)
    wg_pid = find_wireguard_go(ifname)
    agent = agent_pid(lab, node)
    assert wg_pid is not None and agent is not None

    out = lan_mesh.meshctl("node1", "down").stdout
    assert "down" in out

    assert lab.run(node, ["ip", "link", "show", ifname], check=False).returncode != 0
    routes = [r for family in ("-4", "-6") for r in ip_json(lab, node, family, "route", "show", "table", "all")]
    mesh_v4 = ipaddress.ip_address(lan_mesh.members["node1"].mesh_ipv4)
    assert not [r for r in routes if r.get("dev") == ifname or r.get("protocol") in ("109", 109)], routes
    assert lab.run(node, ["ip", "route", "get", str(lan_mesh.members["node2"].mesh_ipv4)],
                   check=False).stdout.find(ifname) == -1
    assert not any(str(mesh_v4) == r.get("dst") for r in routes)
    wait_for(lambda: not pid_alive(wg_pid), "wireguard-go to exit")
    assert not pid_alive(agent)
    assert not (SOCKET_DIR / f"{ifname}.sock").exists()
    assert not (state_dir(lab, node) / "agent.sock").exists()
    assert not reaches(lan_mesh, "node1", lan_mesh.members["node2"].mesh_ipv4, tries=1)
