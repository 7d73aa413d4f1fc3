"""The admin/join workflow through the real CLI, over real git servers on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from git_servers import bare_copy, git_daemon, https_git_server, ssh_server

ROOT = Path(__file__).resolve().parents[2]


def meshctl(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "meshctl", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, input=input, timeout=120)


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def admin_env(tmp_path: Path) -> dict[str, str]:
    """The environment of an admin's meshctl and git commands (the key, and its trust/ beside it)."""
    return {"MESHCTL_ADMIN_KEY": str(tmp_path / "admin.key"), "GIT_AUTHOR_NAME": "a",
            "GIT_AUTHOR_EMAIL": "a@example.com", "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@e.com"}


def init_mesh(tmp_path: Path, env: dict[str, str]) -> tuple[Path, str]:
    r = meshctl("init", str(tmp_path / "coord"), "--name", "acme", env=env)
    assert r.returncode == 0, r.stderr
    fp = r.stdout.strip().split()[-1]
    assert fp.startswith("sha256:") and len(fp) == 71
    return tmp_path / "coord", fp


def approve_branch(coord: Path, remote: str, name: str, env: dict[str, str], *extra: str) -> None:
    """What an admin does with a join pull request: check, approve on the branch, merge."""
    git("fetch", "-q", remote, f"join/{name}", cwd=coord)
    git("checkout", "-q", "-B", f"join/{name}", "FETCH_HEAD", cwd=coord)
    git("rebase", "-q", "main", cwd=coord)
    r = meshctl("repo", "verify", ".", "--base", "main", cwd=coord)
    assert r.returncode == 0, r.stderr
    r = meshctl("admin", "approve", name, *extra, env=env, cwd=coord)
    assert r.returncode == 0, r.stderr
    r = meshctl("repo", "verify", ".", "--base", "main", cwd=coord)
    assert r.returncode == 0, r.stderr
    git("checkout", "-q", "main", cwd=coord)
    git("merge", "-q", "--ff-only", f"join/{name}", cwd=coord)
    git("push", "-q", remote, "main", cwd=coord)


def test_newcomer_flow_over_git_daemon(tmp_path: Path, admin_env: dict[str, str]) -> None:
    coord, fp = init_mesh(tmp_path, admin_env)
    served = tmp_path / "served"
    served.mkdir()
    bare_copy(coord, served / "acme.git")
    with git_daemon(served) as base_url:
        url = f"{base_url}/acme.git"
        nodes = {}
        for name in ("laptop", "server"):
            state = tmp_path / f"state-{name}"
            nodes[name] = {"MESHCTL_STATE_DIR": str(state)}
            r = meshctl("join", url, "--name", name, "--root", fp, env=nodes[name])
            assert r.returncode == 0, r.stderr
            assert f"join request for {name} pushed to branch join/{name}" in r.stdout
            assert oct((state / "keys" / "wireguard.key").stat().st_mode & 0o777) == "0o600"
            assert oct(state.stat().st_mode & 0o777) == "0o700"
        # Not yet approved: a clear refusal with exit 1.
        r = meshctl("sync", "--dry-run", env=nodes["laptop"])
        assert r.returncode == 1
        assert r.stderr.splitlines()[0] == "meshctl: laptop is not a member of mesh acme yet (serial 1)"
        approve_branch(coord, url, "laptop", admin_env, "--tag", "tag:dev")
        approve_branch(coord, url, "server", admin_env)
        r = meshctl("repo", "verify", str(coord))
        assert r.returncode == 0 and "serial 3, 2 members, 0 pending" in r.stdout
        for name, other in (("laptop", "server"), ("server", "laptop")):
            r = meshctl("sync", "--dry-run", env=nodes[name])
            assert r.returncode == 0, r.stderr
            assert f"self {name}: " in r.stdout
            assert f"peer {other}: 100.64.0." in r.stdout
        # Private keys never appear in any output.
        for name in nodes:
            for key_file in (tmp_path / f"state-{name}" / "keys").iterdir():
                secret = key_file.read_text().strip()
                assert secret not in r.stdout + r.stderr


def test_join_over_ssh_with_a_key_file(tmp_path: Path, admin_env: dict[str, str]) -> None:
    coord, fp = init_mesh(tmp_path, admin_env)
    bare_copy(coord, tmp_path / "acme.git")
    with ssh_server(tmp_path / "ssh") as (ssh_url, client_key):
        url = f"{ssh_url}{tmp_path / 'acme.git'}"
        env = {"MESHCTL_STATE_DIR": str(tmp_path / "state"), "MESHCTL_SSH_KEY": str(client_key),
               "HOME": str(tmp_path)}
        r = meshctl("join", url, "--name", "laptop", "--root", fp, env=env)
        assert r.returncode == 0, r.stderr
        assert "pushed to branch join/laptop" in r.stdout
    branches = git("branch", "--list", cwd=tmp_path / "acme.git")
    assert "join/laptop" in branches


def test_unreachable_repository_changes_nothing(tmp_path: Path, admin_env: dict[str, str]) -> None:
    coord, fp = init_mesh(tmp_path, admin_env)
    served = tmp_path / "served"
    served.mkdir()
    bare_copy(coord, served / "acme.git")
    env = {"MESHCTL_STATE_DIR": str(tmp_path / "state")}
    with git_daemon(served) as base_url:
        url = f"{base_url}/acme.git"
        assert meshctl("join", url, "--name", "laptop", "--root", fp, env=env).returncode == 0
        approve_branch(coord, url, "laptop", admin_env)
        assert meshctl("sync", "--dry-run", env=env).returncode == 0
    before = (tmp_path / "state" / "trust.json").read_bytes()
    r = meshctl("sync", "--dry-run", env=env)
    assert r.returncode == 1
    assert r.stderr.startswith(f"meshctl: {url}: repository unreachable: ")
    assert "hint: nothing was changed; the last good configuration is kept" in r.stderr
    assert (tmp_path / "state" / "trust.json").read_bytes() == before


def test_rollback_and_rewritten_history_are_refused(tmp_path: Path, admin_env: dict[str, str]) -> None:
    coord, fp = init_mesh(tmp_path, admin_env)
    remote = bare_copy(coord, tmp_path / "acme.git")
    env = {"MESHCTL_STATE_DIR": str(tmp_path / "state")}
    assert meshctl("join", str(remote), "--name", "laptop", "--root", fp, env=env).returncode == 0
    approve_branch(coord, str(remote), "laptop", admin_env)
    old_main = git("rev-parse", "main", cwd=coord).strip()
    assert meshctl("admin", "renew", env=admin_env, cwd=coord).returncode == 0
    git("push", "-q", str(remote), "main", cwd=coord)
    assert meshctl("sync", "--dry-run", env=env).returncode == 0
    trust = json.loads((tmp_path / "state" / "trust.json").read_text())
    assert trust["serial"] == 3
    # The host force-pushes the older history back.
    git("push", "-q", "--force", str(remote), f"{old_main}:refs/heads/main", cwd=coord)
    r = meshctl("sync", "--dry-run", env=env)
    assert r.returncode == 3
    assert r.stderr.splitlines()[0].startswith("meshctl: repository history was rewritten: ")
    # Restore main, then a fast-forward commit that brings back the older signed state: rollback.
    git("push", "-q", "--force", str(remote), "main:refs/heads/main", cwd=coord)
    assert meshctl("sync", "--dry-run", env=env).returncode == 0
    for f in ("state.json", "state.json.sig"):
        (coord / f).write_bytes(subprocess.run(["git", "show", f"{old_main}:{f}"], cwd=coord, check=True,
                                               capture_output=True).stdout)
    git("commit", "-qam", "old state again", cwd=coord)
    git("push", "-q", str(remote), "main", cwd=coord)
    r = meshctl("sync", "--dry-run", env=env)
    assert r.returncode == 3
    assert r.stderr.splitlines()[0] == (
        "meshctl: state.json: serial 2 is lower than the accepted serial 3 (rollback refused)")
    assert json.loads((tmp_path / "state" / "trust.json").read_text())["serial"] == 3


def test_bad_input_exit_codes(tmp_path: Path, admin_env: dict[str, str]) -> None:
    coord, fp = init_mesh(tmp_path, admin_env)
    r = meshctl("join", str(coord), "--name", "Bad_Name", "--root", fp,
                env={"MESHCTL_STATE_DIR": str(tmp_path / "s")})
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == "meshctl: --name 'Bad_Name': use lowercase letters, digits and '-' (a DNS label)"
    r = meshctl("join", str(coord), "--name", "laptop", env={"MESHCTL_STATE_DIR": str(tmp_path / "s")})
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == "meshctl: pass --root sha256:... from the invite, or --trust-on-first-use"
    wrong = "sha256:" + "0" * 64
    r = meshctl("join", str(coord), "--name", "laptop", "--root", wrong, env={"MESHCTL_STATE_DIR": str(tmp_path / "s")})
    assert r.returncode == 3
    assert "does not match the pinned root" in r.stderr
    # Tampered state in the commit: repo verify refuses with exit 3 and one line.
    state = coord / "state.json"
    state.write_text(state.read_text().replace('"serial": 1', '"serial": 7'))
    git("commit", "-qam", "tampered", cwd=coord)
    r = meshctl("repo", "verify", str(coord))
    assert r.returncode == 3
    assert r.stderr == "error: state.json.sig: no valid signature by an admin key of root version 1\n"
    assert "Traceback" not in r.stderr


def test_trust_on_first_use_asks(tmp_path: Path, admin_env: dict[str, str]) -> None:
    coord, fp = init_mesh(tmp_path, admin_env)
    remote = bare_copy(coord, tmp_path / "acme.git")
    env = {"MESHCTL_STATE_DIR": str(tmp_path / "s")}
    r = meshctl("join", str(remote), "--name", "laptop", "--trust-on-first-use", env=env, input="n\n")
    assert r.returncode == 2 and f"The mesh's root fingerprint is {fp}" in r.stdout
    assert not (tmp_path / "s" / "node.json").exists()
    r = meshctl("join", str(remote), "--name", "laptop", "--trust-on-first-use", env=env, input="y\n")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "s" / "node.json").read_text())["root_fingerprint"] == fp


def test_pull_request_may_only_add_requests(tmp_path: Path, admin_env: dict[str, str]) -> None:
    coord, fp = init_mesh(tmp_path, admin_env)
    remote = bare_copy(coord, tmp_path / "acme.git")
    env = {"MESHCTL_STATE_DIR": str(tmp_path / "s")}
    assert meshctl("join", str(remote), "--name", "laptop", "--root", fp, env=env).returncode == 0
    git("fetch", "-q", str(remote), "join/laptop", cwd=coord)
    git("checkout", "-q", "-B", "pr", "FETCH_HEAD", cwd=coord)
    # The requester also sneaks in a policy edit and a peer file.
    (coord / "policy.hujson").write_text('{"acls": []}\n')
    git("commit", "-qam", "policy", cwd=coord)
    r = meshctl("repo", "verify", ".", "--base", "main", cwd=coord)
    assert r.returncode == 3
    assert "policy.hujson: sha256 differs from policy_sha256 in state.json" in r.stderr
    git("reset", "-q", "--hard", "HEAD~1", cwd=coord)
    (coord / "peers").mkdir(exist_ok=True)
    (coord / "peers" / "laptop.json").write_bytes((coord / "requests" / "laptop.json").read_bytes())
    git("add", "peers", cwd=coord)
    git("commit", "-qm", "peer", cwd=coord)
    r = meshctl("repo", "verify", ".", "--base", "main", cwd=coord)
    assert r.returncode == 3
    assert "peers/laptop.json: not listed in state.json" in r.stderr


def test_join_and_sync_over_https(tmp_path: Path, admin_env: dict[str, str]) -> None:
    coord, fp = init_mesh(tmp_path, admin_env)
    served = tmp_path / "served"
    served.mkdir()
    bare_copy(coord, served / "acme.git")
    with https_git_server(served, tmp_path / "tls") as (base_url, ca):
        url = f"{base_url}/acme.git"
        env = {"MESHCTL_STATE_DIR": str(tmp_path / "state"), "MESHCTL_CA_FILE": str(ca)}
        # Without trusting the private CA the connection is refused, nothing is written.
        r = meshctl("join", url, "--name", "laptop", "--root", fp, env={"MESHCTL_STATE_DIR": str(tmp_path / "x")})
        assert r.returncode == 1 and "repository unreachable" in r.stderr
        r = meshctl("join", url, "--name", "laptop", "--root", fp, env=env)
        assert r.returncode == 0, r.stderr
        assert "pushed to branch join/laptop" in r.stdout
        approve_branch(coord, str(served / "acme.git"), "laptop", admin_env)
        r = meshctl("sync", "--dry-run", env=env)
        assert r.returncode == 0, r.stderr
        assert "self laptop: 100.64.0.1" in r.stdout
