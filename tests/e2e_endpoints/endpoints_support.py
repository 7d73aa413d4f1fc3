"""Helpers for the endpoint-record end-to-end tests: meshes with no relay and no static
endpoint, a cron-synced server, and what a git host with write access can plant."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygit2
import pytest

from lab import Lab, Node, lab_unavailable
from lab.git_host import branch_files, plant_branch
from lab.scenario import MeshScenario, build_nat_mesh
from meshctl.coord import signing
from meshctl.coord.endpoint_publish import build_record
from meshctl.identity import load_device_keys


def need_lab() -> None:
    reason = lab_unavailable(("wireguard-go", "turnserver", "git", "ping"))
    if reason:
        pytest.skip(reason)


def state_dir(lab: Lab, node: Node) -> Path:
    return Path(lab.meshctl_env(node)["MESHCTL_STATE_DIR"])


def agent_log(lab: Lab, node: Node) -> str:
    path = state_dir(lab, node) / "agent.log"
    return path.read_text(errors="replace") if path.exists() else ""


def peer(mesh: MeshScenario, name: str, other: str) -> dict[str, Any]:
    return next(p for p in mesh.status(name)["peers"] if p["name"] == other)


def pings(mesh: MeshScenario, src: str, dst: str) -> bool:
    return mesh.ping(src, mesh.members[dst].mesh_ipv4, 1, 1)


@dataclass
class GitHost:
    """The bare repository the lab's git daemon serves, written to directly: the git host's power."""

    repo_dir: Path

    def branch(self, name: str) -> tuple[dict[str, Any], str] | None:
        """(endpoint.json as a document, commit id) of `endpoints/<name>`, or None."""
        repo = pygit2.Repository(str(self.repo_dir))
        ref = repo.references.get(f"refs/heads/endpoints/{name}")
        if ref is None:
            return None
        commit = repo[ref.target].peel(pygit2.Commit)
        return json.loads(repo[commit.tree["endpoint.json"].id].data), str(commit.id)

    def files(self, name: str) -> dict[str, bytes]:
        return branch_files(self.repo_dir, f"endpoints/{name}")

    def plant(self, name: str, files: dict[str, bytes]) -> None:
        plant_branch(self.repo_dir, f"endpoints/{name}", files)

    def refuse_pushes_of(self, branch: str) -> None:
        """A protected branch: the host refuses pushes to it (as a device without write access sees)."""
        hook = self.repo_dir / "hooks" / "pre-receive"
        hook.write_text("#!/bin/sh\nwhile read old new ref; do\n"
                        f"  if [ \"$ref\" = refs/heads/{branch} ]; then echo protected >&2; exit 1; fi\n"
                        "done\nexit 0\n")
        hook.chmod(0o755)


def signed_record(lab: Lab, node: Node, name: str, network_id: str, candidates: tuple[str, ...], *,
                  at: int, counter: int) -> dict[str, bytes]:
    """A record signed with the device's own identity key (read from its state directory): what
    the device once published, for a replay, or what it would say with another clock."""
    keys = load_device_keys(state_dir(lab, node) / "keys")
    _rec, files = build_record(keys.identity, network_id, name, candidates, keys.disco.public(),
                               keys.wireguard.public(), True, at, counter, None)
    return files


def forged_record(files: dict[str, bytes], network_id: str, candidates_text: bytes) -> dict[str, bytes]:
    """The device's record with other candidates, re-signed by a key that is not the device's."""
    from meshctl.keys import SigningKey

    data = files["endpoint.json"]
    doc = json.loads(data)
    doc["candidates"] = json.loads(candidates_text)
    doc["counter"] += 1
    forged = json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
    sig = signing.marshal_signatures([signing.sign(SigningKey.generate(), "endpoint", network_id, forged)])
    return {"endpoint.json": forged, "endpoint.json.sig": sig}


def nat_mesh_without_endpoints(lab: Lab, profile_a: str, profile_b: str) -> tuple[MeshScenario, Any]:
    return build_nat_mesh(lab, profile_a, profile_b, static_endpoints=False)


def now() -> int:
    return int(time.time())
