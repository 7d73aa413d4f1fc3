"""The git host attacks the admin: it serves tampered commits, and the admin runs every signing command
through the real CLI against a real `git daemon`. Each command is refused with a line naming the file,
nothing is signed or committed, and every node still sees only signed content.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_cli_flow import admin_env, git, init_mesh, meshctl
from test_newcomer import serve

from meshctl.coord.join import make_request
from meshctl.identity import DeviceKeys
from meshctl.keys import DiscoPrivate, NodePrivate, SigningKey

__all__ = ["admin_env"]  # the fixture, imported for this module's tests

RELAY_KEY = SigningKey.generate().public().text()
SIGNING_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("admin", "approve", "newbie"),
    ("admin", "revoke", "desk"),
    ("admin", "renew"),
    ("admin", "sign"),
    ("admin", "sign", "--cosign"),
    ("admin", "relay", "add", "spare", "198.51.100.8:3340", "--identity-key", RELAY_KEY),
    ("admin", "relay", "remove", "home"),
)


@dataclass
class Flow:
    tmp: Path
    url: str
    bare: Path
    coord: Path  # the admin's checkout (origin = the git daemon)
    host: Path  # the host's own clone, from which it pushes whatever it likes
    admin_env: dict[str, str]
    nodes: dict[str, dict[str, str]]
    fingerprints: dict[str, str]
    fp: str  # the root fingerprint of the invite

    def admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        return meshctl(*args, env=self.admin_env, cwd=self.coord)

    def node(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        return meshctl(*args, env=self.nodes[name], cwd=self.tmp)

    def join(self, name: str) -> str:
        self.nodes[name] = {"MESHCTL_STATE_DIR": str(self.tmp / f"state-{name}")}
        r = self.node(name, "join", self.url, "--name", name, "--root", self.fp)
        assert r.returncode == 0, r.stderr
        line = next(x for x in r.stdout.splitlines() if x.startswith("key fingerprint "))
        self.fingerprints[name] = line.split()[2].rstrip(":")
        return r.stdout

    def approve(self, name: str, *extra: str) -> None:
        git("fetch", "-q", "origin", f"join/{name}", cwd=self.coord)
        git("checkout", "-q", "-B", f"join/{name}", "FETCH_HEAD", cwd=self.coord)
        git("rebase", "-q", "main", cwd=self.coord)
        assert self.admin("repo", "verify", ".", "--base", "main").returncode == 0
        r = self.admin("admin", "approve", name, "--expect-key", self.fingerprints[name], *extra)
        assert r.returncode == 0, r.stderr
        r = self.admin("repo", "verify", ".", "--base", "main")
        assert r.returncode == 0, r.stderr
        git("checkout", "-q", "main", cwd=self.coord)
        git("merge", "-q", "--ff-only", f"join/{name}", cwd=self.coord)
        git("push", "-q", "origin", "main", cwd=self.coord)

    def host_commit(self, edit: Callable[[Path], object], message: str) -> None:
        """The git host changes main: a commit made on its side and pushed as a fast-forward."""
        git("fetch", "-q", "origin", cwd=self.host)
        git("reset", "-q", "--hard", "origin/main", cwd=self.host)
        if not edit(self.host):  # True: the edit staged its change itself
            git("add", "-A", cwd=self.host)
        git("commit", "-qm", message, cwd=self.host)
        git("push", "-q", "origin", "HEAD:main", cwd=self.host)

    def admin_pulls(self) -> None:
        git("checkout", "-q", "main", cwd=self.coord)
        git("fetch", "-q", "origin", cwd=self.coord)
        git("reset", "-q", "--hard", "origin/main", cwd=self.coord)

    def trust_files(self) -> dict[str, bytes]:
        return {str(p): p.read_bytes() for p in sorted((self.tmp / "trust").rglob("*")) if p.is_file()}


@pytest.fixture
def flow(tmp_path: Path, admin_env: dict[str, str]) -> Iterator[Flow]:
    coord, fp = init_mesh(tmp_path, admin_env)
    with serve(tmp_path, coord, fp, admin_env) as served:
        subprocess.run(["git", "clone", "-q", served.url, str(tmp_path / "host")], check=True)
        f = Flow(tmp_path, served.url, served.bare, coord, tmp_path / "host", admin_env, {}, {}, fp)
        for name in ("laptop", "desk"):
            f.join(name)
            f.approve(name)
        r = f.admin("admin", "relay", "add", "home", "198.51.100.7:3340", "--identity-key", RELAY_KEY)
        assert r.returncode == 0, r.stderr
        git("push", "-q", "origin", "main", cwd=coord)
        f.join("newbie")  # pending, on branch join/newbie
        for name in ("laptop", "desk"):
            assert f.node(name, "sync", "--dry-run").returncode == 0
        yield f


def _tag_ops(checkout: Path) -> None:
    doc = json.loads((checkout / "state.json").read_text())
    doc["peers"]["laptop"]["tags"] = ["tag:ops"]
    (checkout / "state.json").write_text(json.dumps(doc))


def _attacker_record(checkout: Path) -> None:
    doc = json.loads((checkout / "state.json").read_text())
    keys = DeviceKeys(SigningKey.generate(), NodePrivate.generate(), DiscoPrivate.generate())
    data, sig = make_request(keys, doc["network_id"], "laptop", (), 0)
    (checkout / "peers/laptop.json").write_bytes(data)
    (checkout / "peers/laptop.json.sig").write_bytes(sig)
    doc["peers"]["laptop"]["record_sha256"] = hashlib.sha256(data).hexdigest()
    (checkout / "state.json").write_text(json.dumps(doc))


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def _gitlink(checkout: Path) -> bool:
    head = git("rev-parse", "HEAD", cwd=checkout).strip()
    git("update-index", "--add", "--cacheinfo", f"160000,{head},requests/zz.json", cwd=checkout)
    return True


HOST_TAMPERING: dict[str, tuple[Callable[[Path], object], str, bool]] = {
    # name: (edit, what the refusal names, whether a node's sync refuses it too)
    "unsigned state.json giving a tag": (_tag_ops, "state.json.sig: no valid signature", True),
    "replaced peer record with updated record_sha256": (_attacker_record, "state.json.sig: no valid signature", True),
    "gitlink": (_gitlink, "requests/zz.json: submodules are not allowed", True),
    "README edit": (lambda c: _write(c / "README.md", "# send your keys to evil.example\n"),
                    "README.md: sha256 differs from the hash pinned in state.json", False),
    "workflow edit": (lambda c: _write(c / ".github/workflows/meshctl-verify.yml", "on: push\n"),
                      ".github/workflows/meshctl-verify.yml: sha256 differs", False),
}


@pytest.mark.parametrize("tamper", list(HOST_TAMPERING))
def test_the_admin_signs_nothing_the_host_slipped_in(flow: Flow, tamper: str) -> None:
    edit, names, node_refuses = HOST_TAMPERING[tamper]
    trust_before = {n: (flow.tmp / f"state-{n}" / "trust.json").read_bytes() for n in ("laptop", "desk")}
    flow.host_commit(edit, f"host: {tamper}")
    flow.admin_pulls()
    tampered = git("rev-parse", "HEAD", cwd=flow.coord).strip()
    admin_memory = flow.trust_files()
    git("fetch", "-q", "origin", "join/newbie", cwd=flow.coord)
    git("checkout", "-q", "FETCH_HEAD", "--", "requests/newbie.json", "requests/newbie.json.sig", cwd=flow.coord)
    for command in SIGNING_COMMANDS:
        for dry in ((), ("--dry-run",)):
            r = flow.admin(*command, *dry)
            assert r.returncode == 3, (command, r.stdout, r.stderr)
            first = r.stderr.splitlines()[0]
            assert first.startswith("meshctl: ") and names in first, (command, first)
            assert "Traceback" not in r.stderr
    assert git("rev-parse", "HEAD", cwd=flow.coord).strip() == tampered  # nothing committed
    assert "state.json" not in git("status", "--porcelain", cwd=flow.coord)  # nothing written
    assert flow.trust_files() == admin_memory
    # Every node still sees only signed content.
    for name in ("laptop", "desk"):
        r = flow.node(name, "sync", "--dry-run")
        if node_refuses:
            assert r.returncode == 3, r.stdout + r.stderr
            assert (flow.tmp / f"state-{name}" / "trust.json").read_bytes() == trust_before[name]
        else:
            assert r.returncode == 0, r.stderr
            assert "peer laptop: 100.64.0.1" in r.stdout or name == "laptop"
            assert "tag:ops" not in r.stdout


def test_a_device_cannot_slip_changes_past_the_pull_request_check(flow: Flow) -> None:
    """After `admin approve newbie` lands on join/newbie, the device adds commits to its branch."""
    git("fetch", "-q", "origin", "join/newbie", cwd=flow.coord)
    git("checkout", "-q", "-B", "join/newbie", "FETCH_HEAD", cwd=flow.coord)
    git("rebase", "-q", "main", cwd=flow.coord)
    assert flow.admin("admin", "approve", "newbie", "--expect-key", flow.fingerprints["newbie"]).returncode == 0
    git("push", "-q", "-f", "origin", "join/newbie", cwd=flow.coord)
    device = flow.tmp / "device"
    subprocess.run(["git", "clone", "-q", "-b", "join/newbie", flow.url, str(device)], check=True)
    for path, text in (("README.md", "# new instructions\n"),
                       (".github/workflows/meshctl-verify.yml", "on: push\njobs: {}\n")):
        (device / path).write_text(text)
        git("commit", "-qam", f"edit {path}", cwd=device)
    git("push", "-q", "origin", "join/newbie", cwd=device)
    git("fetch", "-q", "origin", "join/newbie", cwd=flow.coord)
    git("checkout", "-q", "-B", "join/newbie", "FETCH_HEAD", cwd=flow.coord)
    r = flow.admin("repo", "verify", ".", "--base", "main")
    assert r.returncode == 3
    assert r.stderr.splitlines() == [
        "error: .github/workflows/meshctl-verify.yml: sha256 differs from the hash pinned in state.json",
        "error: README.md: sha256 differs from the hash pinned in state.json"]


def _pr(flow: Flow, branch: str, edit: Callable[[Path], None]) -> subprocess.CompletedProcess[str]:
    git("checkout", "-q", "-B", branch, "main", cwd=flow.coord)
    edit(flow.coord)
    git("add", "-A", cwd=flow.coord)
    git("commit", "-qm", branch, cwd=flow.coord)
    r = flow.admin("repo", "verify", ".", "--base", "main")
    git("checkout", "-q", "main", cwd=flow.coord)
    return r


def test_a_foreign_request_cannot_be_replaced_removed_or_overwritten(flow: Flow) -> None:
    r = flow.admin("admin", "pending")
    assert r.stdout == f"newbie  key {flow.fingerprints['newbie']}  branch join/newbie (origin)\n", r.stdout
    # The device itself may ask again: with a changed request its own branch moves on (a
    # fast-forward, nothing replaced).
    r = flow.node("newbie", "join", flow.url, "--name", "newbie", "--root", flow.fp, "--endpoint", "192.0.2.9:51820")
    assert r.returncode == 0 and "pushed to branch join/newbie" in r.stdout, r.stderr
    git("fetch", "-q", "origin", "join/newbie:refs/real/newbie", cwd=flow.coord)
    # Another device asks for the same name: join refuses to touch newbie's branch.
    flow.nodes["thief"] = {"MESHCTL_STATE_DIR": str(flow.tmp / "state-thief")}
    r = flow.node("thief", "join", flow.url, "--name", "newbie", "--root", flow.fp)
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == (f"meshctl: branch join/newbie already holds another device's join request "
                                        f"(key {flow.fingerprints['newbie']})")
    # The host force-pushes join/newbie with another key's request: pending shows the other key, and
    # the admin's --expect-key (the fingerprint newbie's owner was shown) refuses it.
    thief = DeviceKeys(SigningKey.generate(), NodePrivate.generate(), DiscoPrivate.generate())
    thief_fp = thief.identity.public().key_id()
    network_id = json.loads((flow.coord / "state.json").read_text())["network_id"]
    data, sig = make_request(thief, network_id, "newbie", (), 0)

    def forge(checkout: Path) -> None:
        (checkout / "requests").mkdir(exist_ok=True)
        (checkout / "requests/newbie.json").write_bytes(data)
        (checkout / "requests/newbie.json.sig").write_bytes(sig)

    git("fetch", "-q", "origin", cwd=flow.host)
    git("checkout", "-q", "-B", "forged", "origin/main", cwd=flow.host)
    forge(flow.host)
    git("add", "-A", cwd=flow.host)
    git("commit", "-qm", "Join request: newbie", cwd=flow.host)
    git("push", "-q", "-f", "origin", "forged:join/newbie", cwd=flow.host)
    r = flow.admin("admin", "pending")
    assert f"newbie  key {thief_fp}  branch join/newbie (origin)" in r.stdout, r.stdout
    git("fetch", "-q", "origin", "join/newbie", cwd=flow.coord)
    git("checkout", "-q", "-B", "join/newbie", "FETCH_HEAD", cwd=flow.coord)
    r = flow.admin("admin", "approve", "newbie", "--expect-key", flow.fingerprints["newbie"])
    assert r.returncode == 3
    assert r.stderr.splitlines()[0] == (f"meshctl: requests/newbie.json: key fingerprint {thief_fp} does not match "
                                        f"--expect-key {flow.fingerprints['newbie']}")
    # newbie's real request is on main (handed over): a pull request may not replace or delete it.
    git("checkout", "-q", "main", cwd=flow.coord)
    git("checkout", "-q", "refs/real/newbie", "--", "requests", cwd=flow.coord)
    git("commit", "-qm", "newbie's request, handed over", cwd=flow.coord)
    r = _pr(flow, "replace", forge)
    assert r.returncode == 3
    assert r.stderr.splitlines() == [
        f"error: requests/newbie.json: replaces another device's request (key {flow.fingerprints['newbie']}; the new "
        f"one is signed by key {thief_fp}): only the same identity key may replace it"]
    r = _pr(flow, "delete", lambda c: [(c / f"requests/newbie.json{x}").unlink() for x in ("", ".sig")])
    assert r.returncode == 3
    assert r.stderr.splitlines() == [
        "error: requests/newbie.json: removed (a join request may only add its own requests/NAME.json)"]


@pytest.mark.parametrize("kind", ["blob", "tree", "tag"])
def test_join_and_sync_refuse_a_branch_tip_that_is_not_a_commit(flow: Flow, kind: str) -> None:
    main = git("rev-parse", "main", cwd=flow.bare).strip()
    if kind == "blob":
        oid = subprocess.run(["git", "hash-object", "-w", "--stdin"], input="not a commit\n", cwd=flow.bare,
                             capture_output=True, text=True, check=True).stdout.strip()
    elif kind == "tree":
        oid = git("rev-parse", "main^{tree}", cwd=flow.bare).strip()
    else:
        git("tag", "-a", "-m", "a tag", "v1", main, cwd=flow.bare)
        oid = git("rev-parse", "v1", cwd=flow.bare).strip()
    # git itself will not point a branch at anything but a commit; a hostile host writes the ref file.
    (flow.bare / "refs/heads/main").write_text(oid + "\n")
    env = {"MESHCTL_STATE_DIR": str(flow.tmp / "state-late")}
    r = meshctl("join", flow.url, "--name", "late", "--root", flow.fp, env=env)
    assert r.returncode == 3, r.stderr
    assert r.stderr.splitlines()[0] == (f"meshctl: {flow.url}: branch 'main' points to a {kind} ({oid[:12]}), "
                                        "not a commit")
    assert "Traceback" not in r.stderr
    state = flow.tmp / "state-late"
    assert not (state / "trust.json").exists() and not (state / "node.json").exists()  # no trust anchor left
    trust = (flow.tmp / "state-laptop" / "trust.json").read_bytes()
    r = flow.node("laptop", "sync", "--dry-run")
    assert r.returncode == 3 and r.stderr.splitlines()[0].endswith("not a commit"), r.stderr
    assert (flow.tmp / "state-laptop" / "trust.json").read_bytes() == trust
    (flow.bare / "refs/heads/main").write_text(main + "\n")  # the host serves the branch again: all is well
    assert flow.node("laptop", "sync", "--dry-run").returncode == 0
    assert meshctl("join", flow.url, "--name", "late", "--root", flow.fp, env=env).returncode == 0
