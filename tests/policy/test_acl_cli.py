from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meshctl.cli.app import build_app
from meshctl.coord.netmap import NetMap
from meshctl.coord.node_state import NodeState
from meshctl.policy.check import check_policy


@pytest.fixture
def state_dir(tmp_path: Path, sample_netmap: NetMap) -> Path:
    NodeState(tmp_path).save_netmap(sample_netmap.with_self("prod"))
    return tmp_path


def _run(state_dir: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(build_app(), ["--state-dir", str(state_dir), "acl", "check", *args])
    return result.exit_code, result.stdout, result.stderr


def test_allowed_names_the_rule(state_dir: Path) -> None:
    code, out, _ = _run(state_dir, "dev-laptop", "prod:443")
    assert code == 0
    assert out == "allow: dev-laptop -> prod:443 (tcp): allowed: acls[0] (line 17) accepts group:dev -> tag:prod:443\n"


def test_denied_exits_4(state_dir: Path) -> None:
    """Denied is an answer, not a failure: 4, apart from 1 (runtime), 2 (usage), 3 (refused)."""
    code, out, _ = _run(state_dir, "dev-laptop", "100.64.0.1:22", "--proto", "udp")
    assert code == 4
    assert out == "deny: dev-laptop -> 100.64.0.1:22 (udp): denied: no rule accepts it (default deny)\n"


def test_json_and_ping(state_dir: Path) -> None:
    code, out, _ = _run(state_dir, "monitor", "prod", "--proto", "icmp", "--json")
    assert code == 0
    doc = json.loads(out)
    assert (doc["allowed"], doc["rule_index"], doc["line"], doc["port"]) == (True, 2, 21, None)


def test_policy_file_override(state_dir: Path, sample_text: str, tmp_path: Path) -> None:
    edited = tmp_path / "edit.hujson"
    edited.write_text(sample_text.replace('"dst": ["tag:prod:443"]', '"dst": ["tag:prod:22,443"]'))
    assert _run(state_dir, "dev-laptop", "prod:22", "--policy", str(edited))[0] == 0
    edited.write_text('{"nodeAttrs": []}')
    code, _, err = _run(state_dir, "dev-laptop", "prod:22", "--policy", str(edited))
    assert code == 2
    assert err == "meshctl: edit.hujson:1:2: Tailscale policy feature 'nodeAttrs' is not supported by meshctl\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("dev-laptop", "prod"), "meshctl: Unable to parse destination: `prod`\n"),
        (("dev-laptop", "prod:99999"), "meshctl: Unable to parse destination: `prod:99999`\n"),
        (("ghost", "prod:22"), "meshctl: 'ghost' is neither a member name nor an IP address, user, group, tag or "
                               "host\n"),
        (("prod", "tag:nope:22"), "meshctl: tag 'tag:nope' is not defined in 'tagOwners'\n"),
        (("prod", "autogroup:member:22"), "meshctl: a test names one user, group, tag, host or IP, not "
                                          "'autogroup:member'\n"),
    ],
)
def test_usage_errors(state_dir: Path, args: tuple[str, ...], message: str) -> None:
    code, _, err = _run(state_dir, *args)
    assert code == 2
    assert err.splitlines()[0] + "\n" == message


def test_without_synced_state(tmp_path: Path) -> None:
    code, _, err = _run(tmp_path, "a", "b:22")
    assert code == 2
    assert "no synced coordination state" in err


def test_check_policy_for_repo_verify(sample_text: str, sample_netmap: NetMap) -> None:
    assert check_policy(sample_text, sample_netmap) == []
    assert check_policy("{", sample_netmap) == ["policy.hujson:1:2: unexpected end of input inside an object"]
    broken = sample_text.replace('"dst": ["tag:prod:443"]', '"dst": ["tag:prod:*"]')
    assert check_policy(broken, sample_netmap) == [
        "policy.hujson:28:68: tests[0]: dana@example.com -> tag:prod:22 (tcp) should be denied, "
        "but acls[0] (line 17) accepts it"
    ]


@pytest.mark.parametrize("dst", ["fd7a:115c:a1e0::1", "[fd7a:115c:a1e0::1]", "100.64.0.1", "prod", "tag:prod"])
def test_ping_takes_a_destination_without_port(state_dir: Path, dst: str) -> None:
    code, out, err = _run(state_dir, "monitor", dst, "--proto", "icmp")
    assert code == 0, err
    assert "ICMP echo, allowed because acls[2]" in out
