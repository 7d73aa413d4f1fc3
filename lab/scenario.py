"""A mesh built the way a person builds one, on top of the lab: init, join as pull-request
branches, approve, merge, agents up. Shared by the end-to-end tests and `make demo`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.core import Lab, LabError, Node, meshctl_argv


@dataclass
class Member:
    node: Node
    name: str
    mesh_ipv4: str = ""
    mesh_ipv6: str = ""


@dataclass
class MeshScenario:
    """The admin's checkout lives on the host; each device runs meshctl in its namespace."""

    lab: Lab
    git_url: str
    repo_dir: Path  # the bare repository the git daemon serves (the admin pushes to it as a path)
    name: str = "demo"
    members: dict[str, Member] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.admin_dir = self.lab.tempdir("admin")
        self.checkout = self.admin_dir / "coord"
        self.admin_env = {
            **os.environ,
            "MESHCTL_ADMIN_KEY": str(self.admin_dir / "admin.key"),
            "GIT_AUTHOR_NAME": "admin", "GIT_AUTHOR_EMAIL": "admin@example.com",
            "GIT_COMMITTER_NAME": "admin", "GIT_COMMITTER_EMAIL": "admin@example.com",
        }
        self.fingerprint = ""

    # --- the admin's side ----------------------------------------------------------------

    def admin(self, *args: str, cwd: Path | None = None) -> str:
        proc = subprocess.run([*meshctl_argv(), *args], cwd=cwd or self.checkout, env=self.admin_env,
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise LabError(f"meshctl {' '.join(args)} (admin) exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def git(self, *args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=self.checkout, env=self.admin_env, capture_output=True,
                              text=True, timeout=60)
        if proc.returncode != 0:
            raise LabError(f"git {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def init(self) -> str:
        """`meshctl init --remote`: the checkout's origin is the bare repository (a path: the admin
        sits on the host), pushed at once."""
        out = self.admin("init", str(self.checkout), "--name", self.name, "--remote", str(self.repo_dir),
                         cwd=self.admin_dir)
        self.fingerprint = out.strip().split()[-1]
        return out

    def approve(self, name: str, *extra: str) -> str:
        """`meshctl admin approve NAME`: the request fetched from join/NAME, approved, merged into
        main and pushed, in one command; then the check CI runs on main."""
        out = self.admin("admin", "approve", name, *extra)
        self.admin("repo", "verify", ".")
        member = self.members[name]
        addrs = out.splitlines()[0].split(": ", 1)[1].split()
        member.mesh_ipv4, member.mesh_ipv6 = addrs[0], addrs[1]
        return out

    def revoke(self, name: str) -> str:
        out = self.admin("admin", "revoke", name)
        self.git("push", "-q", str(self.repo_dir), "main")
        return out

    def set_policy(self, text: str) -> str:
        """Edit policy.hujson on main, sign the new state (a commit) and push it."""
        (self.checkout / "policy.hujson").write_text(text)
        out = self.admin("admin", "sign")
        self.git("push", "-q", str(self.repo_dir), "main")
        return out

    # --- the devices' side ---------------------------------------------------------------

    def join(self, node: Node, name: str, endpoint: str | None = None, *extra: str) -> str:
        """`meshctl join` on `node`; `extra`: more options, e.g. --advertise-routes CIDR."""
        args = ["join", self.git_url, "--name", name, "--root", self.fingerprint]
        if endpoint:
            args += ["--endpoint", endpoint]
        args += extra
        self.members[name] = Member(node, name)
        return self.lab.meshctl(node, args).stdout

    def meshctl(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.lab.meshctl(self.members[name].node, list(args), check=check)

    def up(self, name: str, *args: str) -> str:
        """`meshctl up ARGS` on the member's node; a failure carries the agent log's tail.
        With an agent already running, this asks it for a sync pass."""
        node = self.members[name].node
        proc = self.lab.meshctl(node, ["up", *args], check=False)
        if proc.returncode != 0:
            log_path = Path(self.lab.meshctl_env(node)["MESHCTL_STATE_DIR"]) / "agent.log"
            tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else "(no agent.log)"
            raise LabError(f"meshctl up on {name} exited {proc.returncode}: {proc.stderr.strip()}\n{tail}")
        return proc.stdout

    def up_together(self, names: Sequence[str]) -> None:
        """`meshctl up` on several members at the same time (as their people would); the first
        failure is raised once all have finished."""
        errors: list[BaseException] = []

        def up(name: str) -> None:
            try:
                self.up(name)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(exc)

        threads = [threading.Thread(target=up, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def status(self, name: str) -> dict[str, Any]:
        return dict(json.loads(self.meshctl(name, "status", "--json").stdout))

    def ping(self, src: str, dst_ip: str, count: int = 3, timeout_s: int = 2) -> bool:
        """True when any of `count` echo requests is answered (the first may wait for a handshake)."""
        proc = self.lab.run(self.members[src].node,
                            ["ping", "-c", str(count), "-i", "0.3", "-W", str(timeout_s), dst_ip], check=False)
        return proc.returncode == 0

    def ping_matrix(self, names: Sequence[str] | None = None) -> dict[tuple[str, str], tuple[bool, bool]]:
        names = list(names or self.members)
        out = {}
        for a in names:
            for b in names:
                if a != b:
                    m = self.members[b]
                    out[(a, b)] = (self.ping(a, m.mesh_ipv4), self.ping(a, m.mesh_ipv6))
        return out


def build_lan_mesh(lab: Lab, n: int = 3, *, name: str = "demo", names: Sequence[str] | None = None,
                   approve_args: Mapping[str, Sequence[str]] | None = None) -> MeshScenario:
    """n devices on one LAN, each joined with its LAN address as a static endpoint, approved.

    Devices are named node1..nN unless `names` are given; `approve_args` adds options to a
    device's approval (e.g. {"prod": ["--tag", "tag:prod"]}).
    """
    from lab.topology import one_lan

    device_names = list(names) if names is not None else [f"node{i}" for i in range(1, n + 1)]
    if len(device_names) != n:
        raise LabError(f"build_lan_mesh: {n} devices but {len(device_names)} names")
    topo = one_lan(lab, n)
    mesh = MeshScenario(lab, topo.git_url, topo.repo_dir, name)
    mesh.init()
    for host, device in zip(topo.hosts, device_names, strict=True):
        mesh.join(host, device, endpoint=f"{host.ipv4}:51820")
    for device in device_names:
        mesh.approve(device, *(approve_args or {}).get(device, ()))
    return mesh


def _nat_mesh_with_lab_stun(lab: Lab, topo: Any, name: str) -> MeshScenario:
    """A new mesh on `topo`'s git server whose signed state lists the lab's coturn (both
    addresses, for the mapping test) instead of the public STUN servers."""
    mesh = MeshScenario(lab, topo.git_url, topo.repo_dir, name)
    mesh.init()
    mesh.admin("admin", "stun", *(f"{ip}:{topo.stun.rsplit(':', 1)[1]}" for ip in topo.internet.service_ips))
    mesh.git("push", "-q", str(mesh.repo_dir), "main")
    return mesh


def build_nat_mesh(lab: Lab, profile_a: str, profile_b: str, *, name: str = "natmesh",
                   listen_port: int = 51820, static_endpoints: bool = True,
                   verbose_git: bool = False) -> tuple[MeshScenario, Any]:
    """Devices "a" and "b", each behind its own NAT (lab.two_nats), joined and approved.

    Like a person would: the admin points the mesh's STUN servers at the lab's coturn
    (both of its addresses, so a symmetric NAT shows), and each device publishes as static
    endpoint its NAT's public address with the WireGuard port (what `meshctl netcheck`
    shows behind a port-preserving NAT; behind a symmetric NAT only the address is right).
    Without `static_endpoints` they join with none, as a person with no server would: the
    endpoint records on their own branches are all they learn of each other.
    Returns the scenario and the `TwoNats` topology. Agents are not started.
    """
    from lab.topology import two_nats

    topo = two_nats(lab, profile_a, profile_b, verbose_git=verbose_git)
    mesh = _nat_mesh_with_lab_stun(lab, topo, name)
    for member, node, nat in (("a", topo.a, topo.nat_a), ("b", topo.b, topo.nat_b)):
        mesh.join(node, member, endpoint=f"{nat.public_ip}:{listen_port}" if static_endpoints else None)
    for member in ("a", "b"):
        mesh.approve(member)
    return mesh, topo


@dataclass
class RelayBox:
    """`meshctl relay` on a public host of the lab, run the way its operator would run it."""

    lab: Lab
    node: Node
    name: str
    port: int
    argv: list[str]
    proc: subprocess.Popen[str] | None = None
    identity: str = ""  # the relay's identity key (text), from its start-up line

    @property
    def address(self) -> str:
        return f"{self.node.ipv4}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        from lab.core import poll

        proc = self.proc = self.lab.meshctl_popen(self.node, self.argv)
        ready = f"relay {self.name} on "
        poll(lambda: ready in self.lab.log_of(proc) or proc.poll() is not None, f"meshctl relay {self.name}",
             timeout_s)
        text = self.lab.log_of(proc)
        if proc.poll() is not None:
            raise LabError(f"meshctl relay {self.name} exited {proc.returncode}: {text[-2000:]}")
        line = next(x for x in text.splitlines() if ready in x)
        self.identity = line.rsplit("identity ", 1)[1].strip()

    def stop(self) -> None:
        if self.proc is not None:
            self.lab.kill(self.proc)
            self.proc = None

    def log(self) -> str:
        return self.lab.log_of(self.proc) if self.proc is not None else ""

    def metrics(self) -> str:
        """The relay's Prometheus text (its --metrics listens on loopback, port + 1)."""
        url = f"http://127.0.0.1:{self.port + 1}/metrics"
        return self.lab.run(self.node, [sys.executable, "-c", (
            f"import urllib.request;print(urllib.request.urlopen({url!r},timeout=5).read().decode())")]).stdout


def build_relay_mesh(lab: Lab, profile_a: str, profile_b: str, *, name: str = "relaymesh",
                     relay_name: str = "r1", relay_port: int = 3340, relay_sync_interval_s: float = 2.0,
                     listen_port: int = 51820) -> tuple[MeshScenario, Any, RelayBox]:
    """Like `build_nat_mesh`, plus a relay on a public host ("relay") listed in state.json.

    The relay operator starts `meshctl relay --name NAME` against the repository and reads its
    identity key from the start-up line; the admin lists it with `meshctl admin relay add NAME
    ADDR:PORT --identity-key KEY` before the devices are approved. Agents are not started.
    Returns the scenario, the `TwoNats` topology and the running relay.
    """
    from lab.topology import two_nats

    topo = two_nats(lab, profile_a, profile_b)
    mesh = _nat_mesh_with_lab_stun(lab, topo, name)
    node = lab.public_host("relay")
    relay = RelayBox(lab, node, relay_name, relay_port, [
        "relay", "--listen", f"0.0.0.0:{relay_port}", "--repo", topo.git_url, "--root", mesh.fingerprint,
        "--name", relay_name, "--sync-interval", str(relay_sync_interval_s),
        "--metrics", f"127.0.0.1:{relay_port + 1}"])
    relay.start()
    mesh.admin("admin", "relay", "add", relay_name, relay.address, "--identity-key", relay.identity)
    mesh.git("push", "-q", str(mesh.repo_dir), "main")
    for member, host, nat in (("a", topo.a, topo.nat_a), ("b", topo.b, topo.nat_b)):
        mesh.join(host, member, endpoint=f"{nat.public_ip}:{listen_port}")
    for member in ("a", "b"):
        mesh.approve(member)
    return mesh, topo, relay


ROUTED_POLICY = """// issue 19: a subnet router pair for the office LAN and an exit node.
{
  "tagOwners": {"tag:router": [], "tag:exit": []},
  "autoApprovers": {"routes": {"192.168.50.0/24": ["tag:router"]}},
  "grants": [
    {"src": ["alice@example.com", "bob@example.com"], "dst": ["192.168.50.12"],
     "ip": ["tcp:80", "tcp:5201", "icmp:*"]},
    {"src": ["alice@example.com"], "dst": ["autogroup:internet"], "ip": ["*"]},
    {"src": ["autogroup:member"], "dst": ["tag:router", "tag:exit"], "ip": ["tcp:5201", "icmp:*"]},
  ],
  "tests": [
    {"src": "alice@example.com", "accept": ["192.168.50.12:80"], "deny": ["192.168.50.12:22"]},
  ],
}
"""
# Who is who: (member, its node in RoutedSite, join options, approval options).
ROUTED_MEMBERS: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("r1", "r1", ("--advertise-routes", "192.168.50.0/24,10.99.0.0/24"),
     ("--tag", "tag:router", "--routes", "192.168.50.0/24")),  # 10.99.0.0/24 advertised, never approved
    ("r2", "r2", ("--advertise-routes", "192.168.50.0/24"), ("--tag", "tag:router")),  # by autoApprovers
    ("ex", "ex", ("--advertise-exit-node",), ("--tag", "tag:exit", "--routes", "exit")),
    ("client-a", "client_a", (), ("--owner", "alice@example.com")),
    ("client-b", "client_b", (), ("--owner", "bob@example.com")),
)


def build_routed_mesh(lab: Lab, name: str = "routes") -> tuple[MeshScenario, Any]:
    """The RoutedSite's members joined (routers advertising), the policy signed, approved as an
    admin would: r1's route named, r2's by autoApprovers, ex as exit node. Agents not started."""
    from lab.topology import routed_site

    site = routed_site(lab)
    mesh = MeshScenario(lab, site.git_url, site.repo_dir, name)
    mesh.init()
    mesh.set_policy(ROUTED_POLICY)
    for member, attr, join_args, _ in ROUTED_MEMBERS:
        node = getattr(site, attr)
        mesh.join(node, member, f"{node.ipv4}:51820", *join_args)
    for member, _, _, approve_args in ROUTED_MEMBERS:
        mesh.approve(member, *approve_args)
    return mesh, site
