"""Hostile coordination repositories built from git objects, and a node that syncs them.

The objects are written straight into the object database with pygit2, so a tree
that names a million files costs one tree object (every entry may point at the same
blob), not a million files on disk. `sync_measured` runs the node's real sync pass
(fetch, history check, GitSnapshot, verify) in a forked child and reports what it
cost: seconds, peak memory growth and the error it ended with.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pygit2
from mesh_builder import NOW, Mesh

from meshctl.coord.node_state import NodeConfig, NodeState
from meshctl.coord.update import fetch_and_verify
from meshctl.errors import MeshctlError

BLOB = pygit2.enums.FileMode.BLOB
TREE = pygit2.enums.FileMode.TREE
SIG = pygit2.Signature("mallory", "mallory@example.com")


def tree_of(repo: pygit2.Repository, entries: Iterator[tuple[bytes, bytes, pygit2.Oid]]) -> pygit2.Oid:
    """A raw tree object from (mode, name, oid) entries, already in git's name order."""
    data = b"".join(mode + b" " + name + b"\0" + oid.raw for mode, name, oid in entries)
    return repo.odb.write(pygit2.enums.ObjectType.TREE, data)


def fan_out(repo: pygit2.Repository, child: pygit2.Oid, count: int, *, is_tree: bool) -> pygit2.Oid:
    """A tree with `count` entries that all point at `child` (names sort as written)."""
    mode = b"40000" if is_tree else b"100644"
    return tree_of(repo, ((mode, b"f%07d" % i, child) for i in range(count)))


def zeros_blob(repo: pygit2.Repository, size: int) -> pygit2.Oid:
    """A blob of `size` zero bytes, streamed: neither this test nor the repo holds it whole."""

    class Zeros(io.RawIOBase):
        def __init__(self) -> None:
            self.left = size

        def readable(self) -> bool:
            return True

        def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
            n = min(len(buf), self.left)
            buf[:n] = bytes(n)
            self.left -= n
            return n

    return repo.create_blob_fromiobase(Zeros())


def put(repo: pygit2.Repository, tree: pygit2.Tree | None, path: str, oid: pygit2.Oid, mode: int) -> pygit2.Oid:
    """`tree` with `path` set to `oid` (creating directories on the way)."""
    head, _, rest = path.partition("/")
    builder = repo.TreeBuilder(tree) if tree is not None else repo.TreeBuilder()
    if rest:
        sub = repo[tree[head].id] if tree is not None and head in tree else None
        builder.insert(head, put(repo, sub, rest, oid, mode), TREE)
    else:
        builder.insert(head, oid, mode)
    return builder.write()


def push_hostile(mesh: Mesh, changes: dict[str, tuple[pygit2.Oid, int]]) -> str:
    """A new commit on main: the mesh's current tree with `changes` (path -> (oid, mode))."""
    repo = pygit2.Repository(str(mesh.path))
    parent = repo.head.peel(pygit2.Commit)
    tree_id = parent.tree.id
    for path, (oid, mode) in changes.items():
        tree_id = put(repo, repo[tree_id], path, oid, mode)
    return str(repo.create_commit("refs/heads/main", SIG, SIG, "hostile", tree_id, [parent.id]))


def objects(mesh: Mesh) -> pygit2.Repository:
    return pygit2.Repository(str(mesh.path))


@dataclass(frozen=True, slots=True)
class SyncCost:
    error: str | None  # the VerificationError's message, or the unexpected exception, or None
    error_class: str | None
    seconds: float
    peak_rss_growth_mb: float


@dataclass(frozen=True, slots=True)
class Node:
    state_dir: Path

    @property
    def repo_dir(self) -> Path:
        return self.state_dir / "repo.git"

    def trust(self) -> bytes:
        return (self.state_dir / "trust.json").read_bytes()

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.state_dir.rglob("*") if p.is_file())

    def file_count(self) -> int:
        return sum(1 for p in self.state_dir.rglob("*") if p.is_file())


def joined_node(mesh: Mesh, state_dir: Path) -> Node:
    """A node that pinned the mesh's root and accepted its current state."""
    NodeState(state_dir).save_config(NodeConfig("watcher", str(mesh.path), "main", mesh.fingerprint,
                                                mesh.checkout.root.network_id))
    fetch_and_verify(state_dir, state_dir / "repo.git", NOW)
    return Node(state_dir)


def _vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def run_measured(fn: Callable[[], object]) -> SyncCost:
    """Run `fn` in a forked child; its peak memory is the child's own high-water mark."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            os.close(read_fd)
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: the parent's peak is not ours
            start_kib = _vm_kib("VmRSS")
            error = error_class = None
            began = time.monotonic()
            try:
                fn()
            except MeshctlError as exc:
                error, error_class = exc.message, type(exc).__name__
            except BaseException as exc:  # noqa: BLE001 - reported to the parent as a failure
                error, error_class = repr(exc)[:500], type(exc).__name__
            took = time.monotonic() - began
            growth = (_vm_kib("VmHWM") - start_kib) / 1024
            os.write(write_fd, json.dumps([error, error_class, took, growth]).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        raw = pipe.read()
    os.waitpid(pid, 0)
    error, error_class, took, growth = json.loads(raw)
    return SyncCost(error, error_class, took, growth)


def sync_measured(node: Node) -> SyncCost:
    return run_measured(lambda: fetch_and_verify(node.state_dir, node.repo_dir, NOW))
