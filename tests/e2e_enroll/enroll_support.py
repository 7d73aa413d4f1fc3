"""Helpers for the enrollment end-to-end tests: a LAN mesh whose admin made auth keys, servers that
join from a script, and what the git host can do to the devices' branches."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygit2
import pytest

from lab import Lab, Node, lab_unavailable
from lab.core import meshctl_argv
from lab.git_host import branch_files, plant_branch
from lab.scenario import Member, MeshScenario
from lab.topology import OneLan, one_lan
from meshctl.coord import addressing, signing
from meshctl.coord.endpoint_publish import build_record
from meshctl.coord.enrollment import Enrollment, parse_key_text, sign_enrollment
from meshctl.coord.join import make_request
from meshctl.identity import DeviceKeys
from meshctl.keys import DiscoPrivate, NodePrivate, SigningKey


def need_lab() -> None:
    reason = lab_unavailable(("wireguard-go", "git", "ping"))
    if reason:
        pytest.skip(reason)


@dataclass
class EnrollMesh:
    mesh: MeshScenario
    topo: OneLan
    spare: list[Node]  # hosts not in the mesh yet: servers that enroll

    @property
    def lab(self) -> Lab:
        return self.mesh.lab

    def create_key(self, *args: str) -> str:
        """`meshctl admin authkey create ARGS` and `git push`: the key (the last line of stdout)."""
        out = self.mesh.admin("admin", "authkey", "create", *args)
        self.push()
        return out.strip().splitlines()[-1]

    def push(self) -> None:
        self.mesh.git("push", "-q", str(self.mesh.repo_dir), "main")

    def server(self, name: str) -> Node:
        node = self.spare.pop(0)
        self.mesh.members[name] = Member(node, name)
        return node

    def enroll_by_script(self, node: Node, name: str, key: str, *extra: str) -> subprocess.CompletedProcess[str]:
        """What cloud-init runs on a new server: join with the key (from a file), then one sync.
        No terminal, nobody to answer a question."""
        key_file = self.lab.tempdir(f"cloud-init-{name}") / "authkey"
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
        meshctl = shlex.join(meshctl_argv())
        script = (f"set -e\n{meshctl} join {self.mesh.git_url} --root {self.mesh.fingerprint} "
                  f"--auth-key file:{key_file} --name {name} --endpoint {node.ipv4}:51820 {shlex.join(extra)}\n"
                  f"{meshctl} sync\n")
        proc = self.lab.run(node, ["sh", "-c", script], env=self.lab.meshctl_env(node), check=False)
        if proc.returncode == 0:
            me = self.mesh.status(name)["self"]
            self.mesh.members[name].mesh_ipv4, self.mesh.members[name].mesh_ipv6 = me["mesh_ips"]
        return proc

    def peers_of(self, name: str) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in self.mesh.status(name)["peers"]}


def lan_mesh(lab: Lab, members: tuple[str, ...], spare: int, **approve: tuple[str, ...]) -> EnrollMesh:
    """Members joined (with their LAN address as endpoint) and approved; `spare` more hosts on the LAN."""
    topo = one_lan(lab, len(members) + spare)
    mesh = MeshScenario(lab, topo.git_url, topo.repo_dir, "enroll")
    mesh.init()
    for host, name in zip(topo.hosts, members, strict=False):
        mesh.join(host, name, f"{host.ipv4}:51820")
    for name in members:
        mesh.approve(name, *approve.get(name, ()))
    return EnrollMesh(mesh, topo, list(topo.hosts[len(members):]))


@dataclass
class GitHost:
    """The bare repository the lab's git daemon serves, written to directly: the git host's power."""

    repo_dir: Path

    def files(self, branch: str) -> dict[str, bytes]:
        return branch_files(self.repo_dir, branch)

    def plant(self, branch: str, files: dict[str, bytes]) -> None:
        plant_branch(self.repo_dir, branch, files)

    def branches(self) -> list[str]:
        return sorted(r for r in pygit2.Repository(str(self.repo_dir)).references if r.startswith("refs/heads/"))


def crafted_enrollment(mesh: MeshScenario, key_text: str, name: str, v4: str,
                       tags: tuple[str, ...] | None = None) -> dict[str, bytes]:
    """A branch made by someone holding the auth key, asking for more than it allows (another address
    or tag): signed by the real key and a real device identity."""
    state = json.loads((mesh.checkout / "state.json").read_text())
    network_id = state["network_id"]
    keys = DeviceKeys(SigningKey.generate(), NodePrivate.generate(), DiscoPrivate.generate())
    peer, peer_sig = make_request(keys, network_id, name, (), 1_700_000_000)
    v6 = addressing.mesh_ipv6_for(ipaddress.IPv6Network(state["network"]["ipv6"]), ipaddress.IPv4Address(v4))
    secret = parse_key_text(key_text)
    doc = Enrollment(network_id, secret.public().key_id(), name, hashlib.sha256(peer).hexdigest(),
                     (ipaddress.IPv4Address(v4), v6), 1_700_000_000, tags)
    data, sig = sign_enrollment(doc, secret, keys.identity)
    _rec, record = build_record(keys.identity, network_id, name, (), keys.disco.public(), keys.wireguard.public(),
                                False, 1_700_000_000, 1, None)
    return {**record, "peer.json": peer, "peer.json.sig": peer_sig, "enrollment.json": data,
            "enrollment.json.sig": sig}


def resign_enrollment(files: dict[str, bytes], network_id: str, signer: SigningKey) -> dict[str, bytes]:
    """The branch with its enrollment signed by another key only (a forgery needs the auth key)."""
    sig = signing.marshal_signatures([signing.sign(signer, "enrollment", network_id, files["enrollment.json"])])
    return {**files, "enrollment.json.sig": sig}
