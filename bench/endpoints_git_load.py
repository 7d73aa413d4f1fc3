"""Load on the git host: requests per device per hour, idle and while a peer is unreachable (issue 18).

    a -- nat-a (port-restricted) --+-- internet: git daemon --verbose, coturn --+-- nat-b (port-restricted) -- b

Both agents run with the default sync interval (60 s), no relay, no static endpoint. The git
daemon logs every request with the client's address (each device's NAT has its own public
address), so each device's fetches (upload-pack) and pushes (receive-pack) are counted apart.
- idle: both connected; a window of WINDOW seconds.
- a peer unreachable: b's agent is stopped (`meshctl down`); a's direct path dies within
  seconds and a looks for b's record faster (record_poll) while b has no path; the same window.
- one idle fetch at 1,000 devices: the host given 1,000 device branches (one-commit branches:
  what 1,000 devices leave there), the bytes the git host sends for one fetch of a device that
  already has everything (the ref advertisement), measured on the host's interface counters.
Figures per hour are the window's counts scaled to an hour.

    sudo MESHCTL_BIN=dist/meshctl .venv/bin/python bench/endpoints_git_load.py [--window 600]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataplane_common import require_root  # noqa: E402  (also puts the lab on the path)

from lab import PORT_RESTRICTED, Lab, Node, open_lab  # noqa: E402
from lab.core import wait_for  # noqa: E402
from lab.scenario import MeshScenario, build_nat_mesh  # noqa: E402

BRANCHES = 1000


def counts(lab: Lab, url: str, ip: str) -> tuple[int, int]:
    reqs = [kind for who, kind in lab.git_requests(url) if who == ip]
    return reqs.count("upload-pack"), reqs.count("receive-pack")


def window(lab: Lab, url: str, ip: str, seconds: float) -> tuple[int, int]:
    f0, p0 = counts(lab, url, ip)
    time.sleep(seconds)
    f1, p1 = counts(lab, url, ip)
    return f1 - f0, p1 - p0


def direct(mesh: MeshScenario) -> bool:
    peers = {p["name"]: p for p in mesh.status("a")["peers"]}
    return bool(peers["b"]["path"] == "direct") and mesh.ping("a", mesh.members["b"].mesh_ipv4, 1, 1)


def tx_bytes(lab: Lab, node: Node, ifname: str) -> int:
    return int(lab.run(node, ["cat", f"/sys/class/net/{ifname}/statistics/tx_bytes"]).stdout)


def plant_branches(repo_dir: Path, n: int) -> None:
    """n one-commit device branches, as n devices would leave them (content alike: the bytes of
    a fetch that brings nothing new are the ref advertisement, one line per branch)."""
    import pygit2

    repo = pygit2.Repository(str(repo_dir))
    sig = pygit2.Signature("d", "d@example.com")
    for i in range(n):
        builder = repo.TreeBuilder()
        builder.insert("endpoint.json", repo.create_blob(f"device {i}\n".encode()), pygit2.enums.FileMode.BLOB)
        commit = repo.create_commit(None, sig, sig, "endpoints", builder.write(), [])
        repo.references.create(f"refs/heads/endpoints/dev{i:04d}", commit, force=True)


def main() -> int:
    require_root()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=float, default=600.0, help="seconds counted in each phase")
    args = ap.parse_args()
    scale = 3600.0 / args.window
    rows = []
    with open_lab("bload") as lab:
        mesh, topo = build_nat_mesh(lab, PORT_RESTRICTED, PORT_RESTRICTED, static_endpoints=False,
                                    verbose_git=True)
        mesh.up_together(("a", "b"))
        if wait_for(lambda: direct(mesh), 60.0) is None:
            print("a and b did not connect", file=sys.stderr)
            return 1
        ip_a, ip_b = str(topo.nat_a.public_ip), str(topo.nat_b.public_ip)
        time.sleep(5)  # the burst of the start is not idling
        f0, p0 = counts(lab, topo.git_url, ip_a)
        fb0, pb0 = counts(lab, topo.git_url, ip_b)
        time.sleep(args.window)
        f1, p1 = counts(lab, topo.git_url, ip_a)
        fb1, pb1 = counts(lab, topo.git_url, ip_b)
        rows.append(("idle, every peer connected (a)", f1 - f0, p1 - p0))
        rows.append(("idle, every peer connected (b)", fb1 - fb0, pb1 - pb0))
        mesh.meshctl("b", "down")
        fetches, pushes = window(lab, topo.git_url, ip_a, args.window)
        rows.append(("a peer unreachable (b down), a", fetches, pushes))
        mesh.meshctl("a", "down")

        plant_branches(topo.repo_dir, BRANCHES)
        # one fetch of a device that is up to date: what 1,000 device branches cost per request
        lab.meshctl(topo.a, ["sync", "--dry-run"])  # brings the 1,000 branches once
        wan = topo.internet.link("wan").ifname
        before = tx_bytes(lab, topo.internet, wan)
        t0 = time.monotonic()
        lab.meshctl(topo.a, ["sync", "--dry-run"])
        took = time.monotonic() - t0
        sent = tx_bytes(lab, topo.internet, wan) - before

    print(f"\nwindow {args.window:g} s per phase, sync interval 60 s, scaled to an hour")
    print(f"{'phase':<36}{'fetches/h':>11}{'pushes/h':>10}")
    for label, fetches, pushes in rows:
        print(f"{label:<36}{fetches * scale:>11.1f}{pushes * scale:>10.1f}")
    idle = rows[0][1] * scale
    print(f"\none idle fetch with {BRANCHES} device branches on the host: {sent / 1024:.1f} KiB sent by the host "
          f"(all of the internet's WAN traffic during one `sync --dry-run`, {took:.2f} s)")
    print(f"1,000 devices idle: {idle * 1000:,.0f} requests/hour at the host "
          f"({idle * 1000 / 3600:.1f}/s), {sent * idle * 1000 / 1024**3:.2f} GiB/hour")
    return 0


if __name__ == "__main__":
    sys.exit(main())
