"""The route commands through the real CLI (issue 19): join and set advertising, over a real git
daemon and without push rights; admin approve --routes and admin routes; the route choices of
`set`/`up`/`sync` (prefs.json), their flag spellings, exit codes and messages."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from git_servers import bare_copy, git_daemon
from test_cli_flow import admin_env as admin_env  # noqa: F401 - the fixture
from test_cli_flow import approve_branch, git, init_mesh, meshctl
from typer.testing import CliRunner

from meshctl.agent.prefs import Prefs, load_prefs, save_prefs
from meshctl.cli.app import build_app
from meshctl.cli.route_flags import expand_bool_flags
from meshctl.errors import EXIT_USAGE, MeshctlError


def _files_from_heredocs(text: str, dest: Path) -> list[str]:
    """What an admin does with the files `meshctl set` printed: write them into the checkout."""
    paths = []
    for path, body in re.findall(r"cat > (\S+) <<'EOF'\n(.*?)\nEOF", text, re.S):
        (dest / path).parent.mkdir(exist_ok=True)
        (dest / path).write_text(body + "\n")  # the here-document ends with a newline, as the file did
        paths.append(path)
    return paths


def test_advertise_at_join_then_update_by_push_then_by_hand(tmp_path: Path, admin_env: dict[str, str]) -> None:
    coord, fp = init_mesh(tmp_path, admin_env)
    served = tmp_path / "served"
    served.mkdir()
    bare_copy(coord, served / "acme.git")
    node = {"MESHCTL_STATE_DIR": str(tmp_path / "state-r1")}
    with git_daemon(served) as base_url:
        url = f"{base_url}/acme.git"
        r = meshctl("join", url, "--name", "r1", "--root", fp, "--advertise-routes", "192.168.50.0/24", env=node)
        assert r.returncode == 0, r.stderr
        approve_branch(coord, url, "r1", admin_env, "--routes", "all")
        r = meshctl("admin", "routes", cwd=coord)
        assert re.search(r"r1 +192\.168\.50\.0/24 +in use", r.stdout), r.stdout
        assert meshctl("sync", "--dry-run", env=node).returncode == 0  # the approval reached the device
        r = meshctl("set", "--advertise-routes", "192.168.50.0/24,10.9.0.0/16", "--advertise-exit-node", env=node)
        assert r.returncode == 0, r.stderr
        assert "advertised routes of r1: 192.168.50.0/24 -> 10.9.0.0/16, 192.168.50.0/24, exit node" in r.stdout
        assert "update request pushed to branch update/r1" in r.stdout
        git("fetch", "-q", url, "update/r1", cwd=coord)
        git("checkout", "-q", "-B", "update/r1", "FETCH_HEAD", cwd=coord)
        assert meshctl("repo", "verify", ".", "--base", "main", cwd=coord).returncode == 0
        r = meshctl("admin", "routes", "r1", "--json", cwd=coord)
        pending = {row["route"]: row["pending_update"] for row in json.loads(r.stdout)}
        assert pending == {"10.9.0.0/16": True, "192.168.50.0/24": False, "exit node": True}
        git("checkout", "-q", "main", cwd=coord)
        git("remote", "add", "origin", url, cwd=coord)
        git("fetch", "-q", "origin", cwd=coord)
        git("branch", "-q", "--set-upstream-to=origin/main", "main", cwd=coord)
        # issue 21's loop: the update is fetched from origin, approved, merged and pushed in one command
        r = meshctl("admin", "approve", "r1", env=admin_env, cwd=coord)  # plain: keeps what stays offered
        assert r.returncode == 0, r.stderr
        assert "approved the update of r1 (record replaced; addresses, tags and owner kept)" in r.stdout
        assert "~ member r1: advertised routes 192.168.50.0/24 -> 10.9.0.0/16,192.168.50.0/24" in r.stdout  # the diff
        assert "~ member r1: advertises an exit node False -> True" in r.stdout
        assert "pushed main" in r.stdout
        assert meshctl("sync", "--dry-run", env=node).returncode == 0
        # a member with no update waiting: only its routes change, in the checkout (shown before signed)
        r = meshctl("admin", "approve", "r1", "--routes", "none", "--dry-run", env=admin_env, cwd=coord)
        assert r.returncode == 0, r.stderr
        assert "~ member r1: routes 192.168.50.0/24 -> none" in r.stdout and "dry run" in r.stdout
        r = meshctl("admin", "approve", "r1", "--routes", "192.168.50.0/24,exit", env=admin_env, cwd=coord)
        assert r.returncode == 0, r.stderr
        assert "routes of r1: 192.168.50.0/24 -> 192.168.50.0/24, exit node" in r.stdout
        git("push", "-q", "origin", "main", cwd=coord)
    # The git host is gone: the next change is handed over as files.
    r = meshctl("set", "--advertise-exit-node=false", env=node)
    assert r.returncode == 0, r.stderr
    assert "could not push branch update/r1" in r.stdout
    written = _files_from_heredocs(r.stdout, coord)
    assert written == ["requests/r1.json", "requests/r1.json.sig"]
    r = meshctl("admin", "approve", "r1", "--routes", "192.168.50.0/24", env=admin_env, cwd=coord)
    assert r.returncode == 0, r.stderr
    assert meshctl("repo", "verify", str(coord)).returncode == 0


@pytest.mark.parametrize(("args", "message"), [
    (["--advertise-routes", "192.168.50.7/24"],
     "meshctl: --advertise-routes: '192.168.50.7/24' has host bits set; the network is 192.168.50.0/24"),
    (["--advertise-routes", "0.0.0.0/0"],
     "meshctl: --advertise-routes: 0.0.0.0/0 and ::/0 go together (or use --advertise-exit-node)"),
    (["--advertise-exit-node=perhaps"], "meshctl: --advertise-exit-node=perhaps: expected true or false"),
    (["--auth-key", "file:/nonexistent", "--advertise-routes", "10.1.0.0/16"],
     "meshctl: --advertise-routes and --advertise-exit-node need an admin's approval, which an enrolled "
     "device skips"),
])
def test_join_refuses_a_bad_offer_before_touching_anything(tmp_path: Path, args: list[str], message: str) -> None:
    r = meshctl("join", "git://127.0.0.1:1/none.git", "--name", "r1", "--root", "sha256:" + "0" * 64, *args,
                env={"MESHCTL_STATE_DIR": str(tmp_path / "state")})
    assert r.returncode == EXIT_USAGE
    assert r.stderr.splitlines()[0] == message
    assert not (tmp_path / "state").exists()


def test_admin_approve_routes_errors(tmp_path: Path, admin_env: dict[str, str]) -> None:
    coord, fp = init_mesh(tmp_path, admin_env)
    remote = bare_copy(coord, tmp_path / "acme.git")
    node = {"MESHCTL_STATE_DIR": str(tmp_path / "state")}
    assert meshctl("join", str(remote), "--name", "r1", "--root", fp, "--advertise-routes", "10.1.0.0/16",
                   env=node).returncode == 0
    git("fetch", "-q", str(remote), "join/r1", cwd=coord)
    git("checkout", "-q", "-B", "join/r1", "FETCH_HEAD", cwd=coord)
    r = meshctl("admin", "approve", "r1", "--routes", "10.2.0.0/16", env=admin_env, cwd=coord)
    assert r.returncode == EXIT_USAGE
    assert r.stderr.splitlines()[0] == ("meshctl: --routes 10.2.0.0/16: r1 does not advertise it "
                                        "(advertised: 10.1.0.0/16)")
    r = meshctl("admin", "routes", "nobody", cwd=coord)
    assert r.returncode == EXIT_USAGE and "'nobody': no member or request of that name" in r.stderr


# --- route choices: prefs.json and the flags ---------------------------------------------------------


def run(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(build_app(), ["--state-dir", str(tmp_path), *args])
    return result.exit_code, result.stdout, result.stderr


def test_set_keeps_route_choices(tmp_path: Path) -> None:
    code, out, _ = run(tmp_path, "set", "--accept-routes", "--exit-node", "ex", "--exit-node-allow-lan-access")
    assert code == 0, out
    assert out.splitlines()[0] == ("accept routes: yes; exit node: ex (local networks allowed); "
                                   "SNAT of subnet routes: yes")
    assert load_prefs(tmp_path) == Prefs(True, "ex", True, True)
    code, out, _ = run(tmp_path, "set", "--snat-subnet-routes=false")  # others stay as they were
    assert load_prefs(tmp_path) == Prefs(True, "ex", True, False)
    code, out, _ = run(tmp_path, "set", "--exit-node", "", "--accept-routes=false")
    assert load_prefs(tmp_path) == Prefs(False, "", True, False)
    code, out, _ = run(tmp_path, "set", "--accept-routes=false")
    assert (code, out.strip()) == (0, "route settings unchanged")


@pytest.mark.parametrize(("args", "message"), [
    ([], "meshctl: nothing to set"),
    (["--accept-routes=maybe"], "meshctl: --accept-routes=maybe: expected true or false"),
    (["--exit-node", "Bad Name"], "meshctl: --exit-node 'Bad Name': expected a member's name or mesh address"),
])
def test_set_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    code, _, err = run(tmp_path, "set", *args)
    assert code == EXIT_USAGE
    assert err.splitlines()[0].startswith(message)
    assert not (tmp_path / "prefs.json").exists()


@pytest.mark.parametrize(("content", "error"), [
    ('{"accept_routes": "yes"}', "field accept_routes must be true or false"),
    ('{"colour": true}', "unknown field 'colour'"),
    ('{"exit_node": "a b"}', "field exit_node 'a b': expected a member's name or mesh address"),
    ("[]", "must be a JSON object"),
    ("{", "not JSON"),
])
def test_a_damaged_prefs_file_is_named_not_ignored(tmp_path: Path, content: str, error: str) -> None:
    (tmp_path / "prefs.json").write_text(content)
    with pytest.raises(MeshctlError) as info:
        load_prefs(tmp_path)
    assert str(tmp_path / "prefs.json") in info.value.message and error in info.value.message
    code, _, err = run(tmp_path, "set", "--accept-routes")
    assert code == 1 and error in err


def test_prefs_round_trip(tmp_path: Path) -> None:
    prefs = Prefs(True, "100.64.0.9", False, False)
    save_prefs(tmp_path, prefs)
    assert load_prefs(tmp_path) == prefs
    assert load_prefs(tmp_path / "none") == Prefs()


def test_bool_flags_take_tailscales_spellings() -> None:
    assert expand_bool_flags(["set", "--accept-routes", "--exit-node", "ex", "--advertise-exit-node=false"]) == [
        "set", "--accept-routes=true", "--exit-node", "ex", "--advertise-exit-node=false"]
    assert expand_bool_flags(["join", "--", "--accept-routes"]) == ["join", "--", "--accept-routes"]


@pytest.mark.parametrize("command", ["up", "set", "sync"])
def test_the_route_flags_are_on_up_set_and_sync(command: str) -> None:
    result = CliRunner().invoke(build_app(), [command, "--help"], env={"COLUMNS": "240"})
    for flag in ("--accept-routes", "--exit-node", "--exit-node-allow-lan-access", "--snat-subnet-routes"):
        assert flag in result.stdout, (command, flag)
