"""`meshctl acl check` in an admin's checkout, before signing (issue 21, 4), through the CLI.

Before: `acl check laptop server:22 --policy policy.hujson` said "no synced coordination state",
with `--repo .` "the sha256 differs", the coordination README's example
`acl check alice@example.com tag:prod:22` was refused, and "denied" exited 1 (a runtime failure).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "coord"))

from mesh_builder import Mesh, make_mesh  # noqa: E402
from policy_samples import uncomment_examples  # noqa: E402

from meshctl.cli.app import build_app  # noqa: E402

ZERO_TRUST = """{
  "groups": {"group:dev": ["alice@example.com"]},
  "tagOwners": {"tag:prod": ["group:dev"]},
  "hosts": {"backup-net": "100.64.50.0/24"},
  "grants": [{"src": ["group:dev"], "dst": ["tag:prod"], "ip": ["tcp:443"]}],
  "acls": [{"action": "accept", "src": ["tag:prod"], "dst": ["backup-net:53"], "proto": "udp"}],
  "ssh": [],
}
"""


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Mesh:
    mesh = make_mesh(tmp_path / "coord")
    mesh.add("laptop", owner="alice@example.com")
    mesh.add("server", tags=["tag:prod"])
    mesh.commit("members")
    (mesh.path / "policy.hujson").write_text(ZERO_TRUST)  # edited, not signed
    monkeypatch.chdir(mesh.path)
    return mesh


def _run(state_dir: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(build_app(), ["--state-dir", str(state_dir), "acl", "check", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("args", "code", "out"),
    [
        (("laptop", "server:22"), 4, "deny: laptop -> server:22 (tcp): denied: no rule accepts it (default deny)\n"),
        (("laptop", "server:443"), 0, "allow: laptop -> server:443 (tcp): allowed: grants[0] (line 5) accepts "
                                      "group:dev -> tag:prod (ip: tcp:443)\n"),
        # the coordination README's example: users, tags, groups, hosts, IPs as Tailscale's tests name them
        (("alice@example.com", "tag:prod:22"), 4, None),
        (("alice@example.com", "tag:prod:443"), 0, None),
        (("group:dev", "server:443"), 0, None),
        (("tag:prod", "backup-net:53", "--proto", "udp"), 0, None),
        (("server", "100.64.50.7:54", "--proto", "udp"), 4, None),
        (("100.64.0.1", "100.64.0.2:443"), 0, None),
    ],
)
def test_an_edited_policy_is_checked_before_signing(checkout: Mesh, tmp_path: Path, args: tuple[str, ...],
                                                    code: int, out: str | None) -> None:
    got_code, got_out, err = _run(tmp_path / "no-state", *args, "--policy", "policy.hujson")
    assert got_code == code, err
    if out is not None:
        assert got_out == out
    assert err.startswith("warning: policy.hujson:7:3: 'ssh' is ignored: meshctl does not run Tailscale SSH")


def test_the_checkout_itself_uses_its_edited_policy(checkout: Mesh, tmp_path: Path) -> None:
    """With --repo (or in the checkout, without --policy) the policy on disk is checked, unsigned."""
    for args in (("--repo", "."), ()):
        code, out, err = _run(tmp_path / "no-state", "laptop", "server:22", *args)
        assert code == 4, err
        assert out.startswith("deny: laptop -> server:22")
        assert "policy.hujson is edited and not signed yet" in err
    # signed as it is, it is simply the policy
    code, out, err = _run(tmp_path / "no-state", "laptop", "server:443", "--repo", str(checkout.path))
    assert code == 0, err


def test_the_members_are_still_verified(checkout: Mesh, tmp_path: Path) -> None:
    record = checkout.path / "peers" / "laptop.json"
    record.write_bytes(record.read_bytes().replace(b'"laptop"', b'"laptop" ', 1))
    code, _, err = _run(tmp_path / "no-state", "laptop", "server:443", "--policy", "policy.hujson")
    assert code == 3, err
    assert err.startswith("meshctl: peers/laptop.json")


def test_a_policy_that_does_not_parse_is_bad_input(checkout: Mesh, tmp_path: Path) -> None:
    (checkout.path / "policy.hujson").write_text('{"grants": [{"src": ["*"], "dst": ["*"], "ip": ["tcp:0"]}]}')
    code, _, err = _run(tmp_path / "no-state", "laptop", "server:443", "--policy", "policy.hujson")
    assert code == 2
    assert err.startswith("meshctl: policy.hujson:1:49: grants[0] ip 'tcp:0': bad port range")


def test_the_policy_file_names_its_checkout(checkout: Mesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    policy = str(checkout.path / "policy.hujson")
    code, _, err = _run(tmp_path / "no-state", "laptop", "server:443", "--policy", policy)
    assert code == 0, err


def test_outside_a_checkout_without_synced_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(tmp_path, "a", "b:22")
    assert code == 2
    assert "no synced coordination state" in err


def test_help_documents_the_exit_codes() -> None:
    result = CliRunner().invoke(build_app(), ["acl", "check", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "0 allowed, 4 denied" in " ".join(result.stdout.split())


def test_the_coordination_readme_example_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """coord-repo-template/README.md's `acl check` line, verbatim, after editing the template's policy."""
    readme = (Path(__file__).resolve().parents[2] / "coord-repo-template" / "README.md").read_text()
    line = next(x for x in readme.splitlines() if "meshctl acl check" in x)
    argv = shlex.split(line.split("&&", 1)[1])
    assert argv[:3] == ["meshctl", "acl", "check"]
    mesh = make_mesh(tmp_path / "coord")
    mesh.add("laptop", owner="alice@example.com")
    mesh.add("server", tags=["tag:prod"])
    policy = mesh.path / "policy.hujson"
    policy.write_text(uncomment_examples(policy.read_text()).replace(
        '{"action": "accept", "src": ["*"], "dst": ["*:*"]},', ""))  # the zero-trust edit
    monkeypatch.chdir(mesh.path)
    code, out, err = _run(tmp_path / "no-state", *argv[3:])
    assert code == 4, err
    assert out == "deny: alice@example.com -> tag:prod:22 (tcp): denied: no rule accepts it (default deny)\n"
    code, out, err = _run(tmp_path / "no-state", "alice@example.com", "tag:prod:443", "--policy", "policy.hujson")
    assert code == 0, err
    assert out.startswith("allow: alice@example.com -> tag:prod:443 (tcp): allowed: acls[0] (line ")


def test_repo_verify_warns_about_ssh_and_passes(checkout: Mesh, tmp_path: Path) -> None:
    """A signed policy with `ssh` passes the pull-request check, with the one-line warning."""
    from mesh_builder import NOW

    from meshctl.coord import admin

    co = checkout.checkout
    admin.write_state(co, co.state, checkout.admin_keys, NOW)
    checkout.commit("the policy with ssh, signed")  # repo verify judges the commit HEAD names
    result = CliRunner().invoke(build_app(), ["repo", "verify", str(checkout.path)])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ("warning: policy.hujson:7:3: 'ssh' is ignored: meshctl does not run Tailscale SSH "
                             "(the section grants no network access)\n")
