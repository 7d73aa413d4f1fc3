"""Issue 21, the newcomer's path, over real git servers on loopback: join run again, join under a
new name, a wrong --root, a refused push, and the admin's loop in one `meshctl admin approve NAME`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from git_servers import bare_copy, git_daemon
from test_cli_flow import admin_env, git, init_mesh, meshctl

__all__ = ["admin_env"]  # the fixture, imported for this module's tests

pytestmark = pytest.mark.git_server


@dataclass
class Served:
    """A mesh created by an admin, pushed to a git daemon, and the admin's checkout of it."""

    tmp: Path
    checkout: Path
    bare: Path
    url: str
    fp: str
    admin: dict[str, str]

    def device(self, name: str) -> dict[str, str]:
        return {"MESHCTL_STATE_DIR": str(self.tmp / f"state-{name}")}

    def join(self, name: str, *extra: str, state: str | None = None) -> subprocess.CompletedProcess[str]:
        return meshctl("join", self.url, "--name", name, "--root", self.fp, *extra, env=self.device(state or name))

    def approve(self, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return meshctl("admin", "approve", name, *extra, env=self.admin, cwd=self.checkout)

    def host_branches(self) -> list[str]:
        return git("for-each-ref", "--format=%(refname:short)", "refs/heads", cwd=self.bare).split()

    def hook(self, script: str) -> None:
        """A pre-receive hook on the host (a protected branch, a host refusing everything)."""
        hook = self.bare / "hooks" / "pre-receive"
        hook.write_text("#!/bin/sh\n" + script)
        hook.chmod(0o755)


@contextmanager
def serve(tmp_path: Path, coord: Path, fp: str, admin_env: dict[str, str]) -> Iterator[Served]:
    """The admin's new mesh in `coord`, pushed to a git daemon that is its `origin`."""
    if shutil.which("git") is None:
        pytest.skip("needs git (Debian package git)")
    base = tmp_path / "served"
    base.mkdir()
    bare = bare_copy(coord, base / "acme.git")
    with git_daemon(base) as base_url:
        url = f"{base_url}/acme.git"
        git("remote", "add", "origin", url, cwd=coord)
        git("fetch", "-q", "origin", cwd=coord)
        git("branch", "-q", "-u", "origin/main", "main", cwd=coord)
        yield Served(tmp_path, coord, bare, url, fp, admin_env)


@pytest.fixture
def served(tmp_path: Path, admin_env: dict[str, str]) -> Iterator[Served]:
    coord, fp = init_mesh(tmp_path, admin_env)
    with serve(tmp_path, coord, fp, admin_env) as it:
        yield it


def no_traceback(r: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in r.stdout + r.stderr, r.stderr


# --- join run again ---------------------------------------------------------------------------


def test_join_run_again_sends_nothing_new(served: Served) -> None:
    """Finding 3: a second `join` died with "GitError: failed to create commit: current tip is
    not the first parent". Now it sees its request on the host and pushes nothing."""
    assert served.join("laptop").returncode == 0
    tip = git("rev-parse", "join/laptop", cwd=served.bare)
    r = served.join("laptop")
    no_traceback(r)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "join request for laptop is already on branch join/laptop; nothing to push"
    assert git("rev-parse", "join/laptop", cwd=served.bare) == tip  # an approval waiting there would be kept


def test_join_again_with_a_changed_request_replaces_its_own(served: Served) -> None:
    assert served.join("server").returncode == 0
    r = served.join("server", "--endpoint", "server.example.com:51820")
    no_traceback(r)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "join request for server pushed to branch join/server"
    record = json.loads(git("show", "join/server:requests/server.json", cwd=served.bare))
    assert record["endpoints"] == ["server.example.com:51820"]


def test_join_again_after_a_join_that_could_not_push(served: Served) -> None:
    """Finding 3: join without push rights, then again (also once push works): no traceback."""
    served.hook("exit 1\n")
    r = served.join("phone")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("could not push branch join/phone: ")
    assert "push refused: join/phone: pre-receive hook declined" in r.stdout.splitlines()[0]
    assert "cat > requests/phone.json <<'EOF'" in r.stdout
    r = served.join("phone")
    no_traceback(r)
    assert r.returncode == 0 and r.stdout.startswith("could not push branch join/phone: "), r.stderr
    (served.bare / "hooks" / "pre-receive").unlink()
    r = served.join("phone")
    no_traceback(r)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "join request for phone pushed to branch join/phone"
    assert "join/phone" in served.host_branches()


def test_a_refused_push_is_not_reported_as_pushed(served: Served) -> None:
    """libgit2 reports a ref the host refuses as a success unless asked: join said "pushed"."""
    served.hook('while read old new ref; do [ "$ref" = refs/heads/join/tv ] && exit 1; done; exit 0\n')
    r = served.join("tv")
    assert r.returncode == 0
    assert r.stdout.startswith("could not push branch join/tv: ")
    assert "join/tv" not in served.host_branches()


# --- join under another name ------------------------------------------------------------------


def test_join_under_a_new_name_is_refused_without_rename(served: Served) -> None:
    """Finding 6: `join` again with another --name silently renamed the device and stranded the
    first request on the host."""
    assert served.join("laptop", state="dev").returncode == 0
    node = Path(served.device("dev")["MESHCTL_STATE_DIR"]) / "node.json"
    before = node.read_bytes()
    r = served.join("desk", state="dev")
    no_traceback(r)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "meshctl: this device already asked to join as 'laptop' (branch join/laptop)",
        "hint: to ask as 'desk' instead, run join again with --name desk --rename (the request for laptop is "
        "withdrawn)"]
    assert node.read_bytes() == before
    assert "join/desk" not in served.host_branches()
    # Without --name, join keeps the name it asked for (not the hostname).
    r = meshctl("join", served.url, "--root", served.fp, env=served.device("dev"))
    assert r.returncode == 0 and "already on branch join/laptop" in r.stdout, r.stderr
    # --rename: the new request goes up, the first is withdrawn from the host.
    r = served.join("desk", "--rename", state="dev")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:2] == ["withdrew the request for laptop (branch join/laptop)",
                                         "join request for desk pushed to branch join/desk"]
    assert "join/desk" in served.host_branches() and "join/laptop" not in served.host_branches()
    assert json.loads(node.read_text())["name"] == "desk"


def test_rename_never_withdraws_another_devices_request(served: Served) -> None:
    """b asked as laptop first; a's request has since replaced it on join/laptop (meshctl join
    refuses to do that, issue 16: the host or a plain git push did). When b renames itself,
    join/laptop is a's: it stays."""
    assert served.join("laptop", state="b").returncode == 0
    r = served.join("laptop", state="a")
    assert r.returncode == 2 and "already holds another device's join request" in r.stderr, r.stderr
    assert served.join("elsewhere", state="a").returncode == 0
    host = served.tmp / "host"
    subprocess.run(["git", "clone", "-q", "-b", "join/elsewhere", served.url, str(host)], check=True)
    for suffix in ("", ".sig"):  # a's request, renamed by hand (its self-signature no longer matches)
        (host / f"requests/elsewhere.json{suffix}").rename(host / f"requests/laptop.json{suffix}")
    git("add", "-A", cwd=host)
    git("-c", "user.name=a", "-c", "user.email=a@example.com", "commit", "-qm", "laptop", cwd=host)
    git("push", "-q", "-f", "origin", "HEAD:join/laptop", cwd=host)
    a_request = git("rev-parse", "join/laptop", cwd=served.bare)
    r = served.join("desk", "--rename", state="b")
    assert r.returncode == 0, r.stderr
    assert {"join/laptop", "join/desk"} <= set(served.host_branches())
    assert git("rev-parse", "join/laptop", cwd=served.bare) == a_request
    assert served.join("tablet", state="c").returncode == 0
    assert served.join("phone", "--rename", state="c").returncode == 0
    assert "join/tablet" not in served.host_branches()  # c's own earlier request is withdrawn


def test_a_member_cannot_rename_itself(served: Served) -> None:
    assert served.join("laptop").returncode == 0
    assert served.approve("laptop").returncode == 0
    r = served.join("desk", "--rename", state="laptop")
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == ("meshctl: this device is already member 'laptop' of the mesh; a member "
                                        "cannot rename itself")
    assert "meshctl admin revoke laptop" in r.stderr
    r = served.join("laptop")
    assert r.returncode == 0 and "laptop is already a member of acme" in r.stdout


def test_joining_a_second_mesh_from_one_state_dir_is_refused(served: Served, tmp_path: Path) -> None:
    assert served.join("laptop").returncode == 0
    other, other_fp = init_mesh(tmp_path / "other", served.admin)
    r = meshctl("join", str(other), "--name", "laptop", "--root", other_fp, env=served.device("laptop"))
    assert r.returncode == 2
    assert r.stderr.startswith(f"meshctl: this device already joined another mesh ({served.url}, root {served.fp})")


def test_wrong_root_names_both_fingerprints_in_full(served: Served) -> None:
    """Finding 5: both fingerprints were cut to 16 hex digits, so a typo at the end looked equal."""
    wrong = served.fp[:-2] + ("00" if not served.fp.endswith("00") else "11")
    r = served.join("laptop", "--root", wrong, state="w")
    assert r.returncode == 3
    assert r.stderr.splitlines()[0] == (f"meshctl: root/1.root.json: fingerprint {served.fp} does not match "
                                        f"the pinned root {wrong}")


# --- the admin's loop in one command ----------------------------------------------------------


def test_admin_approve_fetches_approves_merges_and_pushes(served: Served) -> None:
    """Finding 2: five git commands per device. Now `meshctl admin approve NAME` in the checkout
    does it: the request comes from join/NAME, main is pushed, nodes take the new state."""
    assert served.join("laptop").returncode == 0
    assert served.join("server").returncode == 0
    for number, name in enumerate(("laptop", "server"), start=1):
        r = served.approve(name, "--tag", "tag:server") if name == "server" else served.approve(name)
        no_traceback(r)
        assert r.returncode == 0, r.stderr
        assert re.match(rf"approved {name}: 100\.64\.0\.{number} fd", r.stdout), r.stdout
        assert r.stdout.splitlines()[1] == f"pushed main (serial {number + 1}); join/{name} is merged"
    # The admin's checkout: on main, clean, equal to the host's main.
    assert git("symbolic-ref", "--short", "HEAD", cwd=served.checkout).strip() == "main"
    assert git("status", "--porcelain", cwd=served.checkout) == ""
    assert git("rev-parse", "main", cwd=served.checkout) == git("rev-parse", "main", cwd=served.bare)
    assert git("rev-parse", "origin/main", cwd=served.checkout) == git("rev-parse", "main", cwd=served.bare)
    # The request branches are merged (each is an ancestor of main) and deleted on the host.
    assert served.host_branches() == ["main"]
    assert git("log", "--format=%s", "-1", "main", cwd=served.bare).strip() == "Approve server (serial 3)"
    assert len(git("log", "--format=%P", "-1", "main", cwd=served.bare).split()) == 2
    # The pull-request check and the nodes agree.
    r = meshctl("repo", "verify", str(served.checkout))
    assert r.returncode == 0 and "serial 3, 2 members, 0 pending" in r.stdout, r.stderr
    r = meshctl("sync", "--dry-run", env=served.device("laptop"))
    assert r.returncode == 0 and "peer server: 100.64.0.2" in r.stdout, r.stderr


def test_admin_approve_brings_a_stale_main_up_to_date_first(served: Served) -> None:
    """Another admin pushed meanwhile (or a pull request was merged on the host)."""
    other = served.tmp / "other-admin"
    git("clone", "-q", served.url, str(other), cwd=served.tmp)
    assert served.join("laptop").returncode == 0
    r = meshctl("admin", "approve", "laptop", env=served.admin, cwd=other)
    assert r.returncode == 0, r.stderr
    assert served.join("server").returncode == 0
    r = served.approve("server")  # this checkout is one approval behind
    assert r.returncode == 0, r.stderr
    assert "approved server: 100.64.0.2" in r.stdout
    assert git("rev-parse", "main", cwd=served.checkout) == git("rev-parse", "main", cwd=served.bare)


def test_admin_approve_on_a_protected_main_pushes_the_request_branch(served: Served) -> None:
    """Where the host refuses main, the approval goes to join/NAME for a pull request, and the
    checkout stays on main as origin has it."""
    assert served.join("laptop").returncode == 0
    served.hook('while read old new ref; do [ "$ref" = refs/heads/main ] && exit 1; done; exit 0\n')
    main_before = git("rev-parse", "main", cwd=served.bare)
    r = served.approve("laptop")
    no_traceback(r)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1].startswith("main not pushed (") and lines[1].endswith("the approval is on branch join/laptop")
    assert "pre-receive hook declined" in lines[1]
    assert lines[2] == "merge join/laptop into main (a pull request), then nodes see it"
    assert git("rev-parse", "main", cwd=served.bare) == main_before
    assert git("log", "--format=%s", "-1", "join/laptop", cwd=served.bare).strip() == "Approve laptop (serial 2)"
    assert git("rev-parse", "HEAD", cwd=served.checkout) == main_before
    assert git("status", "--porcelain", cwd=served.checkout) == ""
    # The branch passes the pull-request check; merged (any method), nodes take it.
    r = meshctl("repo", "verify", ".", "--base", "main", cwd=served.checkout)
    assert r.returncode == 0, r.stderr
    git("update-ref", "refs/heads/main", "join/laptop", cwd=served.bare)
    assert meshctl("sync", "--dry-run", env=served.device("laptop")).returncode == 0


def test_admin_approve_keeps_an_approval_the_host_takes_nowhere(served: Served) -> None:
    assert served.join("laptop").returncode == 0
    served.hook("exit 1\n")
    r = served.approve("laptop")
    no_traceback(r)
    assert r.returncode == 1
    assert r.stderr.startswith("meshctl: the approval (serial 2) is committed on local branch join/laptop but not "
                               "pushed: ")
    assert "hint: push it when the git host answers: git push origin join/laptop" in r.stderr
    assert git("log", "--format=%s", "-1", "join/laptop", cwd=served.checkout).strip() == "Approve laptop (serial 2)"
    assert git("symbolic-ref", "--short", "HEAD", cwd=served.checkout).strip() == "main"


def test_admin_approve_refuses_a_request_branch_that_changes_more(served: Served) -> None:
    assert served.join("laptop").returncode == 0
    work = served.tmp / "device-edit"
    git("clone", "-q", "-b", "join/laptop", served.url, str(work), cwd=served.tmp)
    (work / "README.md").write_text("changed by the device\n")
    git("-c", "user.name=d", "-c", "user.email=d@e", "commit", "-qam", "more", cwd=work)
    git("push", "-q", "origin", "join/laptop", cwd=work)
    r = served.approve("laptop")
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == "meshctl: join/laptop changes more than requests/laptop.json: README.md"
    assert git("status", "--porcelain", cwd=served.checkout) == ""
    assert not (served.checkout / "requests" / "laptop.json").exists()


def test_admin_approve_names_what_is_pending_and_refuses_a_dirty_checkout(served: Served) -> None:
    assert served.join("laptop").returncode == 0
    r = served.approve("lpatop")
    assert r.returncode == 2
    assert r.stderr.splitlines() == ["meshctl: no join request named 'lpatop': origin has no join/lpatop branch",
                                     "hint: pending join requests on origin: laptop"]
    (served.checkout / "policy.hujson").write_text("{}\n")
    r = served.approve("laptop")
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == "meshctl: uncommitted changes in policy.hujson"
    assert "join/laptop" in served.host_branches()


def test_admin_approve_put_back_the_checkout_when_the_approval_is_refused(served: Served) -> None:
    assert served.join("laptop").returncode == 0
    r = served.approve("laptop", "--ip", "10.0.0.1")  # outside the mesh prefix
    assert r.returncode == 2
    assert "--ip 10.0.0.1: outside the mesh prefix" in r.stderr
    assert git("status", "--porcelain", "--untracked-files=all", cwd=served.checkout) == ""


def test_init_with_remote_pushes_and_prints_the_invite(tmp_path: Path, admin_env: dict[str, str]) -> None:
    base = tmp_path / "served"
    base.mkdir()
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(base / "new.git")], check=True)
    with git_daemon(base) as base_url:
        url = f"{base_url}/new.git"
        r = meshctl("init", str(tmp_path / "acme-mesh"), "--name", "acme", "--remote", url, env=admin_env)
        assert r.returncode == 0, r.stderr
        invite = r.stdout.strip().splitlines()[-1].strip()
        assert re.fullmatch(rf"meshctl join {re.escape(url)} --root sha256:[0-9a-f]{{64}}", invite), invite
        assert git("rev-parse", "main", cwd=base / "new.git") == git("rev-parse", "main", cwd=tmp_path / "acme-mesh")
        assert "up to date with 'origin/main'" in git("status", cwd=tmp_path / "acme-mesh")
        r = meshctl("join", url, "--name", "laptop", "--root", invite.split()[-1],
                    env={"MESHCTL_STATE_DIR": str(tmp_path / "st")})
        assert r.returncode == 0, r.stderr


def test_admin_approve_with_a_threshold_of_two_waits_on_the_request_branch(tmp_path: Path,
                                                                          admin_env: dict[str, str]) -> None:
    """One admin's signature is not enough: the approval goes to join/NAME for the second one,
    never to main, where nodes would refuse it."""
    keys = [tmp_path / "a1.key", tmp_path / "a2.key"]
    r = meshctl("init", str(tmp_path / "coord"), "--name", "acme", "--admin-key", str(keys[0]), "--admin-key",
                str(keys[1]), "--admin-threshold", "2", env=admin_env)
    assert r.returncode == 0, r.stderr
    with serve(tmp_path, tmp_path / "coord", r.stdout.strip().split()[-1], admin_env) as served:
        assert served.join("laptop").returncode == 0
        main_before = git("rev-parse", "main", cwd=served.bare)
        r = meshctl("admin", "approve", "laptop", env={**admin_env, "MESHCTL_ADMIN_KEY": str(keys[0])},
                    cwd=served.checkout)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[1:3] == [
            "main not pushed (state.json has 1 of 2 admin signatures); the approval is on branch join/laptop",
            "another admin must add a signature on join/laptop: meshctl admin sign --cosign"]
        assert git("rev-parse", "main", cwd=served.bare) == main_before
        assert git("log", "--format=%s", "-1", "join/laptop", cwd=served.bare).strip() == "Approve laptop (serial 2)"


def test_admin_approve_never_overwrites_an_untracked_file(served: Served) -> None:
    """main moved on the host and brings a file the admin has, untracked, in the checkout."""
    other = served.tmp / "other-admin"
    git("clone", "-q", served.url, str(other), cwd=served.tmp)
    assert served.join("laptop").returncode == 0
    assert meshctl("admin", "approve", "laptop", env=served.admin, cwd=other).returncode == 0
    mine = served.checkout / "peers" / "laptop.json"
    mine.parent.mkdir(exist_ok=True)
    mine.write_text("the admin's own notes\n")
    assert served.join("server").returncode == 0
    r = served.approve("server")
    no_traceback(r)
    assert r.returncode == 2
    assert re.fullmatch(r"meshctl: cannot bring the checkout to main \([0-9a-f]{12}\): it would overwrite "
                        r"peers/laptop.json", r.stderr.splitlines()[0]), r.stderr
    assert mine.read_text() == "the admin's own notes\n"
    assert "join/server" in served.host_branches()
