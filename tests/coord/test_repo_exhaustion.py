"""A repository built to exhaust the verifier is refused quickly, in bounded memory, with a clear reason.

Each hostile commit lands on the mesh's main branch as a fast-forward, and a node
that already accepted the mesh runs its real sync pass (fetch, history check,
GitSnapshot, verify; what `meshctl sync` runs). The pass must end in a
VerificationError naming the problem within seconds, its memory must stay small,
the node's disk must not fill, and the last accepted state must stay in force.
`meshctl repo verify` (FsSnapshot + pr_check) gets the same treatment with sparse
files, which are huge to a reader and take no disk.
"""

from __future__ import annotations

import os
from pathlib import Path

import pygit2
import pytest
from hostile_repo import (
    BLOB,
    SIG,
    TREE,
    Node,
    fan_out,
    joined_node,
    objects,
    push_hostile,
    sync_measured,
    tree_of,
    zeros_blob,
)
from mesh_builder import NOW, Mesh

from meshctl.coord import fs_snapshot, pr_check, records, signing, verify
from meshctl.coord.fs_snapshot import FsSnapshot
from meshctl.coord.repo import GitSnapshot
from meshctl.errors import VerificationError

QUICK_S = 10.0  # generous for a 2-core machine shared with other suites; typical runs take well under 2 s
MEMORY_MB = 150.0  # peak growth of the syncing process; the hostile objects would need far more
DISK_MB = 64.0  # everything the node keeps, hostile pack included


@pytest.fixture
def node(mesh: Mesh, tmp_path: Path) -> Node:
    mesh.add("alpha")
    mesh.commit("alpha joins")
    return joined_node(mesh, tmp_path / "node")


def refused_quickly(node: Node, *, match: str, error_class: str = "VerificationError") -> None:
    trust_before = node.trust()
    cost = sync_measured(node)
    assert cost.error_class == error_class, cost
    assert match in (cost.error or ""), cost
    assert cost.seconds < QUICK_S, cost
    assert cost.peak_rss_growth_mb < MEMORY_MB, cost
    assert node.disk_bytes() < DISK_MB * 1024 * 1024
    assert node.trust() == trust_before  # the last accepted state is still the one in force


def test_a_million_files_in_one_tree(mesh: Mesh, node: Node) -> None:
    repo = objects(mesh)
    blob = repo.create_blob(b"{}\n")
    push_hostile(mesh, {"peers": (fan_out(repo, blob, 1_000_000, is_tree=False), TREE)})
    refused_quickly(node, match="repository has more than 250000 files and directories")
    assert node.file_count() < 100  # the million entries never became files


def test_a_million_files_from_shared_subtrees(mesh: Mesh, node: Node) -> None:
    repo = objects(mesh)
    thousand_files = fan_out(repo, repo.create_blob(b"x"), 1000, is_tree=False)
    push_hostile(mesh, {"requests": (fan_out(repo, thousand_files, 1000, is_tree=True), TREE)})
    refused_quickly(node, match="more than 250000 files and directories")


def test_a_billion_empty_directories(mesh: Mesh, node: Node) -> None:
    # Three levels of 1000 directories sharing one subtree: a few small objects, 10^9 directories,
    # no file at all. Directories count against the same bound as files.
    repo = objects(mesh)
    level = repo.odb.write(pygit2.enums.ObjectType.TREE, b"")
    for _ in range(2):
        level = fan_out(repo, level, 1000, is_tree=True)
    push_hostile(mesh, {f"d{i:04d}": (level, TREE) for i in range(1000)})
    refused_quickly(node, match="more than 250000 files and directories")


def test_a_deep_tree(mesh: Mesh, node: Node) -> None:
    repo = objects(mesh)
    path = "/".join(["d"] * 200) + "/f.json"
    push_hostile(mesh, {path: (repo.create_blob(b"{}"), BLOB)})
    refused_quickly(node, match="directories nest too deeply")


@pytest.mark.parametrize(("path", "limit"), [
    ("state.json", records.MAX_STATE_BYTES),
    ("state.json.sig", signing.MAX_SIG_FILE_BYTES),
    ("root/2.root.json", records.MAX_ROOT_BYTES),
    ("peers/alpha.json", records.MAX_PEER_BYTES),
    ("requests/mallory.json", records.MAX_PEER_BYTES),
    ("policy.hujson", verify.MAX_POLICY_BYTES),
    ("README.md", verify.MAX_OTHER_BYTES),
])
def test_huge_files_are_refused_by_size_before_any_read(mesh: Mesh, node: Node, path: str, limit: int) -> None:
    size = max(limit + 1, 48 * 1024 * 1024)  # larger than the state limit: reading it would show in memory
    push_hostile(mesh, {path: (zeros_blob(objects(mesh), size), BLOB)})
    refused_quickly(node, match=f"{path}: file is {size} bytes, more than the limit of {limit}")


def _root2(mesh: Mesh, text: bytes) -> None:
    repo = objects(mesh)
    sig = (mesh.path / "root" / "1.root.json.sig").read_bytes()  # well-formed, and never valid for root/2
    push_hostile(mesh, {"root/2.root.json": (repo.create_blob(text), BLOB),
                        "root/2.root.json.sig": (repo.create_blob(sig), BLOB)})


def test_a_giant_json_number(mesh: Mesh, node: Node) -> None:
    # root/2 is parsed before its signatures are checked, so its parser sees hostile bytes.
    digits = records.MAX_ROOT_BYTES - 100
    _root2(mesh, b'{"version": ' + b"9" * digits + b"}")
    refused_quickly(node, match=f"root/2.root.json: integer with {digits} digits is too large")


def test_a_long_string(mesh: Mesh, node: Node) -> None:
    root = (mesh.path / "root" / "1.root.json").read_text()
    doc = root.replace('"name": "acme"', '"name": "' + "a" * (records.MAX_ROOT_BYTES - len(root) - 100) + '"')
    _root2(mesh, doc.replace('"version": 1', '"version": 2').encode())
    refused_quickly(node, match="root/2.root.json: field name: invalid value 'aaaa")


def test_deeply_nested_json(mesh: Mesh, node: Node) -> None:
    half = (records.MAX_ROOT_BYTES - 10) // 2
    _root2(mesh, b"[" * half + b"]" * half)
    refused_quickly(node, match="root/2.root.json: nested deeper than")


def test_unsigned_state_never_reaches_the_parser(mesh: Mesh, node: Node) -> None:
    # state.json is checked against the admin signatures first: a giant number there is refused as unsigned.
    state = (mesh.path / "state.json").read_bytes()
    hostile = state.replace(b'"serial": ', b'"serial": ' + b"9" * 1_000_000 + b", \"x\": ")
    push_hostile(mesh, {"state.json": (objects(mesh).create_blob(hostile), BLOB)})
    refused_quickly(node, match="state.json.sig: no valid signature by an admin key")


# --- `meshctl repo verify`: a checkout on disk --------------------------------------------------


def _check(mesh: Mesh) -> tuple[str, ...]:
    return pr_check.check_change(FsSnapshot(mesh.path), None, NOW).problems


@pytest.mark.parametrize("path", ["README.md", "requests/mallory.json", "root/1.root.json", "state.json.sig"])
def test_repo_verify_refuses_sparse_huge_files_without_reading_them(mesh: Mesh, path: str) -> None:
    huge = 8 * 1024**3  # 8 GiB to a reader, a few blocks on disk
    target = mesh.path / path
    target.parent.mkdir(exist_ok=True)
    with open(target, "ab") as f:
        f.truncate(huge)
    problems = _check(mesh)
    assert len(problems) == 1 and problems[0].startswith(f"{path}: file is {huge} bytes, more than the limit of")


def test_repo_verify_reports_a_giant_number_in_a_join_request(mesh: Mesh) -> None:
    (mesh.path / "requests").mkdir(exist_ok=True)
    (mesh.path / "requests" / "mallory.json").write_bytes(b'{"created": ' + b"1" * 8000 + b"}")
    (mesh.path / "requests" / "mallory.json.sig").write_bytes(b'{"signatures": []}')
    assert _check(mesh) == ("requests/mallory.json: integer with 8000 digits is too large",)


def test_repo_verify_refuses_too_many_directories(mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
    # On disk a million directories would be a million inodes; the walk's bound is one constant, so a
    # small bound proves the walk stops at it.
    monkeypatch.setattr(fs_snapshot, "MAX_WALK_FILES", 40)
    for i in range(50):
        os.makedirs(mesh.path / "requests" / f"d{i}")
    assert _check(mesh) == ("repository has more than 39 directories",)


@pytest.mark.parametrize(("name", "mode", "match", "fetch_refuses"), [
    (b"requests", b"40000", "requests: a directory entry that is not a directory", True),
    (b"README.md", b"100644", "README.md: a file entry that is not a file", False),
])
def test_entries_whose_mode_lies_about_the_object(mesh: Mesh, node: Node, name: bytes, mode: bytes,
                                                  match: str, fetch_refuses: bool) -> None:
    # pygit2's TreeBuilder refuses such entries, a hostile host writes raw tree objects.
    repo = objects(mesh)
    parent = repo.head.peel(pygit2.Commit)
    wrong = repo.create_blob(b"x") if mode == b"40000" else parent.tree.id
    kept = [(b"%o" % e.filemode, e.name.encode(), e.id) for e in parent.tree if e.name.encode() != name]
    order = sorted([*kept, (mode, name, wrong)], key=lambda e: e[1] + (b"/" if e[0] == b"40000" else b""))
    tip = repo.create_commit("refs/heads/main", SIG, SIG, "hostile", tree_of(repo, iter(order)), [parent.id])
    with pytest.raises(VerificationError, match=match):  # the verifier's own guard, on the host's objects
        verify.check_paths(GitSnapshot(repo, str(tip)))
    if fetch_refuses:  # libgit2's fetch already notices a directory that is a blob
        refused_quickly(node, match="does not match the type", error_class="GitError")
    else:
        refused_quickly(node, match=match)


def test_a_fetch_past_its_byte_bound_is_cut_off(mesh: Mesh, node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    # Random bytes do not compress: a host sending more than the bound is stopped mid-pack, and
    # what it sent does not stay on the node's disk.
    from meshctl.coord import repo as repo_module

    limit = 1024 * 1024
    monkeypatch.setattr(repo_module, "MAX_FETCH_BYTES", limit)
    repo = objects(mesh)
    push_hostile(mesh, {"README.md": (repo.create_blob(os.urandom(4 * limit)), BLOB)})
    disk_before = node.disk_bytes()
    refused_quickly(node, match=f"the fetch passed {limit} bytes", error_class="GitError")
    assert node.disk_bytes() - disk_before < limit // 4
