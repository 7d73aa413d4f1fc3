"""A mesh on a real git host (`git daemon` on loopback) that admins sign into and devices enroll
in, and a node's view of it: for the enrollment and rotation tests."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pygit2
from git_servers import bare_copy, git_daemon
from mesh_builder import Mesh, make_mesh

from meshctl.coord import admin, changes
from meshctl.coord import repo as gitrepo
from meshctl.coord.effective import apply_view
from meshctl.coord.endpoint_sync import read_endpoints
from meshctl.coord.endpoint_verify import EndpointView
from meshctl.coord.enroll import enroll
from meshctl.coord.netmap import NetMap
from meshctl.coord.node_state import NodeState
from meshctl.keys import SigningKey


@dataclass
class Host:
    mesh: Mesh
    bare: Path
    url: str
    tmp: Path

    def sign(self, build) -> None:  # type: ignore[no-untyped-def]
        """An admin's signing command, committed and pushed to the host."""
        admin.run_change(self.mesh.path, self.mesh.admin_keys, int(time.time()), build)
        self.mesh.commit("admin")
        subprocess.run(["git", "-C", str(self.mesh.path), "push", "-q", "-f", str(self.bare), "HEAD:main"], check=True)

    def new_key(self, tags: tuple[str, ...] = ("tag:server",), reusable: bool = False) -> SigningKey:
        secret = SigningKey.generate()
        self.sign(lambda s: changes.authkey_create(s.baseline, secret.public(), s.now, tags, reusable))
        return secret

    def enroll(self, name: str, key: SigningKey, tags: tuple[str, ...] | None = None) -> Path:
        """`meshctl join URL --root FP --auth-key KEY --name NAME` on a new device: its state directory."""
        state = self.tmp / f"dev-{name}"
        enroll(state, state / "repo.git", state / "keys", self.url, name, self.mesh.fingerprint, lambda _fp: False,
               key, int(time.time()), tags=tags)
        return state

    def branch(self, name: str) -> str:
        return str(pygit2.Repository(str(self.bare)).references[f"refs/heads/endpoints/{name}"].target)

    def set_branch(self, name: str, commit: str | None) -> None:
        repo = pygit2.Repository(str(self.bare))
        ref = f"refs/heads/endpoints/{name}"
        if commit is None:
            repo.references.delete(ref)
        else:
            repo.references.create(ref, commit, force=True)


@dataclass
class Node:
    """A member's state directory and its own clone: what its sync reads."""

    dir: Path
    url: str
    name: str

    def fetch(self, mesh: Mesh) -> tuple[EndpointView, NetMap]:
        verified = mesh.verify()
        base = verified.netmap.with_self(self.name)
        now = int(time.time())
        with gitrepo.opened(self.dir / "repo.git", self.url) as repo:
            gitrepo.fetch(repo, "main", endpoints=True)
            node = NodeState(self.dir)
            view = read_endpoints(repo, node, verified.root.network_id, verified.state_sha256,
                                  lambda: base, self.name, now, node.load_own_enrollment(self.name))
        return view, apply_view(base, view, now).netmap


@contextmanager
def served_mesh(tmp_path: Path) -> Iterator[Host]:
    """A mesh with member laptop, served by git daemon."""
    mesh = make_mesh(tmp_path / "coord")
    mesh.add("laptop")
    mesh.commit("members")
    srv = tmp_path / "srv"
    srv.mkdir()
    bare = bare_copy(mesh.path, srv / "coord.git")
    with git_daemon(srv) as prefix:
        yield Host(mesh, bare, f"{prefix}/coord.git", tmp_path)
