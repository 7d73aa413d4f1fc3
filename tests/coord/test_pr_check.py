"""The pull-request check judges git's trees (modes included) and allows only what signatures cover."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pygit2
import pytest
from mesh_builder import NOW, Mesh, make_mesh, new_device

from meshctl.coord import admin, pr_check, signing
from meshctl.coord.join import make_request
from meshctl.coord.repo import GitSnapshot
from meshctl.policy.check import policy_problems

BLOB = pygit2.enums.FileMode.BLOB


@pytest.fixture
def pr(tmp_path: Path) -> Mesh:
    """A mesh with member laptop and a pending request from victim, committed on main."""
    mesh = make_mesh(tmp_path / "coord")
    mesh.add("laptop")
    mesh.request("victim")
    mesh.commit("laptop, victim's request")
    return mesh


def head_of(mesh: Mesh) -> str:
    return str(pygit2.Repository(str(mesh.path)).head.target)


def commit_entries(mesh: Mesh, entries: dict[str, tuple[bytes | pygit2.Oid, int] | None], parent: str) -> str:
    """A commit on `parent` with raw tree entries (bytes are stored as blobs; None removes)."""
    repo = pygit2.Repository(str(mesh.path))
    index = pygit2.Index()
    index.read_tree(repo[pygit2.Oid(hex=parent)].peel(pygit2.Tree))
    for path, entry in entries.items():
        if entry is None:
            index.remove(path)
            continue
        content, mode = entry
        oid = repo.create_blob(content) if isinstance(content, bytes) else content
        index.add(pygit2.IndexEntry(path, oid, mode))
    sig = pygit2.Signature("t", "t@example.com")
    return str(repo.create_commit(None, sig, sig, "change", index.write_tree(repo), [pygit2.Oid(hex=parent)]))


def check(mesh: Mesh, head: str, base: str) -> pr_check.CheckReport:
    repo = pygit2.Repository(str(mesh.path))
    return pr_check.check_change(GitSnapshot(repo, head), GitSnapshot(repo, base), NOW, policy_problems)


def request_files(mesh: Mesh, name: str, keys: object = None) -> dict[str, tuple[bytes, int]]:
    data, sig = make_request(keys or new_device(), mesh.checkout.root.network_id, name, (), NOW)  # type: ignore[arg-type]
    return {f"requests/{name}.json": (data, BLOB), f"requests/{name}.json.sig": (sig, BLOB)}


def test_a_join_request_passes_and_its_fingerprint_is_shown(pr: Mesh) -> None:
    base = head_of(pr)
    keys = new_device()
    report = check(pr, commit_entries(pr, request_files(pr, "zed", keys), base), base)  # type: ignore[arg-type]
    assert report.ok, report.problems
    assert ("zed", keys.identity.public().key_id()) in report.added_requests


@pytest.mark.parametrize(("mode", "expected"), [
    (pygit2.enums.FileMode.COMMIT, "requests/zz.json: submodules are not allowed"),
    (pygit2.enums.FileMode.LINK, "requests/zz.json: symbolic links are not allowed"),
    (pygit2.enums.FileMode.BLOB_EXECUTABLE, "requests/zz.json: executable files are not allowed"),
])
def test_modes_nodes_refuse_are_refused_from_the_tree(pr: Mesh, mode: int, expected: str) -> None:
    """A gitlink shows as an empty directory in a checkout: only the tree tells."""
    base = head_of(pr)
    content: bytes | pygit2.Oid = pygit2.Oid(hex=base) if mode == pygit2.enums.FileMode.COMMIT else b"{}"
    head = commit_entries(pr, {"requests/zz.json": (content, mode)}, base)
    assert check(pr, head, base).problems == (expected,)
    repo = pygit2.Repository(str(pr.path))
    assert pr_check.check_change(GitSnapshot(repo, head), None, NOW).problems == (expected,)


def test_a_join_request_adds_exactly_one_request(pr: Mesh) -> None:
    base = head_of(pr)
    head = commit_entries(pr, request_files(pr, "zed") | request_files(pr, "yak"), base)  # type: ignore[operator]
    problems = check(pr, head, base).problems
    assert problems == ("requests/: a join request adds exactly one request; this change touches 2 (yak, zed)",)


def test_another_devices_request_cannot_be_replaced_or_removed(pr: Mesh) -> None:
    base = head_of(pr)
    victim_fp = pr.devices["victim"].identity.public().key_id()
    thief = new_device()
    head = commit_entries(pr, request_files(pr, "victim", thief), base)  # type: ignore[arg-type]
    assert check(pr, head, base).problems == (
        f"requests/victim.json: replaces another device's request (key {victim_fp}; the new one is signed by key "
        f"{thief.identity.public().key_id()}): only the same identity key may replace it",)
    head = commit_entries(pr, {"requests/victim.json": None, "requests/victim.json.sig": None}, base)
    assert check(pr, head, base).problems == (
        "requests/victim.json: removed (a join request may only add its own requests/NAME.json)",)


def test_a_device_may_replace_its_own_request(pr: Mesh) -> None:
    base = head_of(pr)
    same = pr.devices["victim"]
    from meshctl.identity import DeviceKeys
    from meshctl.keys import NodePrivate

    rotated = DeviceKeys(same.identity, NodePrivate.generate(), same.disco)  # new WireGuard key, same identity
    head = commit_entries(pr, request_files(pr, "victim", rotated), base)  # type: ignore[arg-type]
    assert check(pr, head, base).ok


def _approved_branch(mesh: Mesh, name: str) -> tuple[str, str]:
    """base (main) and head: a join request for NAME, approved by the admin on its branch."""
    base = head_of(mesh)
    mesh.request(name)
    admin.approve(mesh.checkout, name, mesh.admin_keys, NOW)
    return base, mesh.commit(f"approve {name}")


def test_an_approval_passes(pr: Mesh) -> None:
    base, head = _approved_branch(pr, "zed")
    assert check(pr, head, base).ok


@pytest.mark.parametrize(("path", "content", "expected"), [
    ("README.md", b"evil\n", "README.md: sha256 differs from the hash pinned in state.json"),
    (".github/workflows/meshctl-verify.yml", b"on: push\n",
     ".github/workflows/meshctl-verify.yml: sha256 differs from the hash pinned in state.json"),
    (".gitlab-ci.yml", b"x: 1\n", ".gitlab-ci.yml: sha256 differs from the hash pinned in state.json"),
    (".github/workflows/more.yml", b"on: push\n", ".github/workflows/more.yml: not pinned in state.json "
                                                  "(no signature covers it)"),
])
def test_nothing_rides_along_after_an_approval(pr: Mesh, path: str, content: bytes, expected: str) -> None:
    base, approved = _approved_branch(pr, "zed")
    head = commit_entries(pr, {path: (content, BLOB)}, approved)
    assert check(pr, head, base).problems == (expected,)
    assert check(pr, commit_entries(pr, {path: (content, BLOB)}, base), base).problems == (expected,)


def test_after_an_approval_requests_change_only_by_moving_to_peers(pr: Mesh) -> None:
    base, approved = _approved_branch(pr, "zed")
    head = commit_entries(pr, request_files(pr, "yak"), approved)  # type: ignore[arg-type]
    assert check(pr, head, base).problems == (
        "requests/yak.json: added in a change an admin signed, and no signature covers it",)
    head = commit_entries(pr, {"requests/victim.json": None, "requests/victim.json.sig": None}, approved)
    assert check(pr, head, base).problems == (
        "requests/victim.json: removed in a change an admin signed, and no signature covers it",)


def test_a_request_approved_from_main_moves_unchanged(pr: Mesh) -> None:
    base = head_of(pr)
    admin.approve(pr.checkout, "victim", pr.admin_keys, NOW)
    assert check(pr, pr.commit("approve victim"), base).ok


def test_every_entry_of_a_changed_signature_file_is_valid(pr: Mesh) -> None:
    base = head_of(pr)
    sig = json.loads((pr.path / "state.json.sig").read_text())
    sig["signatures"].append({"keyid": "f" * 16, "sig": "A" * 86 + "=="})
    head = commit_entries(pr, {"state.json.sig": (json.dumps(sig).encode(), BLOB)}, base)
    assert check(pr, head, base).problems == (
        "state.json.sig: entry 'ffffffffffffffff' is not a valid signature by a key that may sign state.json",)


def test_a_cosignature_changes_only_the_signature_file(tmp_path: Path) -> None:
    mesh = make_mesh(tmp_path / "coord", n_admins=2, threshold=2)
    base = head_of(mesh)
    data = (mesh.path / "state.json").read_bytes()
    sigs = signing.parse_signatures((mesh.path / "state.json.sig").read_bytes(), name="x")
    extra = signing.sign(mesh.admin_keys[1], "state", mesh.checkout.root.network_id, data)
    head = commit_entries(mesh, {"state.json.sig": (signing.marshal_signatures([*sigs, extra]), BLOB)}, base)
    assert check(mesh, head, base).ok


def test_a_state_from_before_pins_reports_changed_files_by_name(pr: Mesh) -> None:
    co = pr.checkout
    import dataclasses

    admin.write_state(co, dataclasses.replace(co.state, pinned={}), pr.admin_keys, NOW)
    base = pr.commit("no pins")
    head = commit_entries(pr, {"README.md": (b"hello\n", BLOB)}, base)
    assert check(pr, head, base).problems == (
        "README.md: changed, and no signature covers it (state.json pins no files; an admin signs them with "
        "`meshctl admin sign --update-pins`)",)


def test_a_revoked_devices_request_is_reported(pr: Mesh) -> None:
    keys = pr.devices["laptop"]
    admin.revoke(pr.checkout, "laptop", pr.admin_keys, NOW)
    base = pr.commit("revoke laptop")
    head = commit_entries(pr, request_files(pr, "laptop2", keys), base)  # type: ignore[arg-type]
    (problem,) = check(pr, head, base).problems
    assert problem.startswith("requests/laptop2.json: keys of laptop, revoked ")


def test_a_checkout_without_git_is_still_verified(pr: Mesh, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(pr.path, plain, ignore=shutil.ignore_patterns(".git"))
    from meshctl.coord.fs_snapshot import FsSnapshot

    assert pr_check.check_change(FsSnapshot(plain), None, NOW).ok
