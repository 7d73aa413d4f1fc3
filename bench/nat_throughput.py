"""Throughput of a direct path through two NATs: meshctl's vs the same tunnel set up by hand.

    a -- nat-a (port-restricted) -- internet -- nat-b (port-restricted) -- b

1. meshctl: both agents up, wait until `meshctl status` says direct, iperf3 (TCP, a -> b
   and b -> a) over the mesh addresses.
2. by hand: agents down, NAT conntrack flushed, then wireguard-go + `wg set` on both
   devices with each other's NAT public address as endpoint (what an expert would type,
   knowing both NATs preserve ports), iperf3 over that tunnel.
Same userspace WireGuard on both; meshctl is not in the data path, so the goal is ratio
>= 0.95. Root; run: .venv/bin/python bench/nat_throughput.py [SECONDS]
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the lab, next to meshctl

from lab import PORT_RESTRICTED, Lab, Node, lab_unavailable, open_lab, poll  # noqa: E402
from lab.scenario import build_nat_mesh  # noqa: E402

REPEATS = 3
HAND_NET = "10.99.0"


def iperf(lab: Lab, client: Node, server: Node, server_ip: str, seconds: int) -> float:
    """Gbit/s of one TCP iperf3 run."""
    srv = lab.popen(server, ["iperf3", "-s", "-1", "-B", server_ip])
    poll(lambda: lab.run(server, ["ss", "-Hltn", "sport = :5201"]).stdout.strip() != "", "iperf3 server")
    out = lab.run(client, ["iperf3", "-J", "-c", server_ip, "-t", str(seconds)], timeout=seconds + 30).stdout
    lab.kill(srv)
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9


def hand_tunnel(lab: Lab, nodes: list[Node], publics: list[str]) -> None:
    keys = [lab.run(n, ["wg", "genkey"]).stdout.strip() for n in nodes]
    pubs = [lab.run(n, ["wg", "pubkey"], input=k + "\n").stdout.strip() for n, k in zip(nodes, keys, strict=True)]
    for i, node in enumerate(nodes):
        other = 1 - i
        ifname = lab.ifname("hand")
        lab.popen(node, ["wireguard-go", "-f", ifname])
        poll(lambda n=node, f=ifname: lab.run(n, ["wg", "show", f], check=False).returncode == 0, "wireguard-go")
        keyfile = lab.tempdir(f"hand-{node.name}") / "key"
        keyfile.write_text(keys[i] + "\n")
        lab.run(node, ["wg", "set", ifname, "listen-port", "51820", "private-key", str(keyfile),
                       "peer", pubs[other], "allowed-ips", f"{HAND_NET}.{other + 1}/32",
                       "endpoint", f"{publics[other]}:51820", "persistent-keepalive", "25"])
        lab.run(node, ["ip", "addr", "add", f"{HAND_NET}.{i + 1}/24", "dev", ifname])
        lab.run(node, ["ip", "link", "set", ifname, "mtu", "1420", "up"])


def main() -> int:
    reason = lab_unavailable()
    if reason:
        print(f"needs the lab: {reason}", file=sys.stderr)
        return 1
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with open_lab("bthr") as lab:
        mesh, topo = build_nat_mesh(lab, PORT_RESTRICTED, PORT_RESTRICTED)
        threads = [threading.Thread(target=mesh.meshctl, args=(n, "up")) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        def direct() -> bool:
            peers = json.loads(mesh.meshctl("a", "status", "--json").stdout)["peers"]
            return bool(peers[0]["path"] == "direct")

        poll(direct, "direct path", 30)
        poll(lambda: mesh.ping("a", mesh.members["b"].mesh_ipv4), "ping over the mesh", 30)
        a_ip, b_ip = mesh.members["a"].mesh_ipv4, mesh.members["b"].mesh_ipv4
        ours = [(iperf(lab, topo.a, topo.b, b_ip, seconds), iperf(lab, topo.b, topo.a, a_ip, seconds))
                for _ in range(REPEATS)]
        for name in ("a", "b"):
            mesh.meshctl(name, "down")
        lab.flush_conntrack(topo.nat_a)
        lab.flush_conntrack(topo.nat_b)
        time.sleep(0.2)
        hand_tunnel(lab, [topo.a, topo.b], [str(topo.nat_a.public_ip), str(topo.nat_b.public_ip)])
        poll(lambda: lab.run(topo.a, ["ping", "-c1", "-W1", f"{HAND_NET}.2"], check=False).returncode == 0,
             "ping over the hand-made tunnel", 30)
        hand = [(iperf(lab, topo.a, topo.b, f"{HAND_NET}.2", seconds),
                 iperf(lab, topo.b, topo.a, f"{HAND_NET}.1", seconds)) for _ in range(REPEATS)]
    print(f"\n{'tunnel (TCP, iperf3 ' + str(seconds) + ' s x ' + str(REPEATS) + ')':<40}"
          f"{'a->b Gbit/s':>13}{'b->a Gbit/s':>13}")
    rows = []
    for label, runs in (("meshctl, direct through two NATs", ours), ("by hand (wg set), same path", hand)):
        ab, ba = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        rows.append((ab, ba))
        print(f"{label:<40}{ab:>13.2f}{ba:>13.2f}")
    ratio = (rows[0][0] + rows[0][1]) / (rows[1][0] + rows[1][1])
    print(f"{'ratio meshctl / by hand':<40}{ratio:>13.2f}   goal >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
