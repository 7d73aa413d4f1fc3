"""`meshctl admin relay add|remove|list` and `meshctl relay` argument checks (CliRunner)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from relay_support import RelayMesh
from typer.testing import CliRunner

from meshctl.cli.admin_relay import relay_admin_app
from meshctl.cli.app import build_app
from meshctl.coord import admin, relays_admin, verify
from meshctl.coord.fs_snapshot import FsSnapshot
from meshctl.errors import UsageError
from meshctl.keys import SigningKey, write_private_key


@pytest.fixture
def admin_cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(relay_admin_app, name="relay")  # as the lead mounts it under `meshctl admin`
    return app


@pytest.fixture
def admin_key(relay_mesh: RelayMesh, tmp_path: Path) -> Path:
    path = tmp_path / "admin.key"
    write_private_key(path, relay_mesh.admin_keys[0])
    return path


def test_add_list_remove(admin_cli: typer.Typer, relay_mesh: RelayMesh, admin_key: Path) -> None:
    runner = CliRunner()
    relay_key = SigningKey.generate().public().text()
    serial = relay_mesh.checkout.state.serial
    res = runner.invoke(admin_cli, ["relay", "add", "home", "198.51.100.7:3340", "--identity-key", relay_key,
                                    "--repo", str(relay_mesh.path), "--admin-key", str(admin_key)])
    assert res.exit_code == 0, res.output
    assert "added relay home at 198.51.100.7:3340" in res.output
    assert f"committed: Add relay home (serial {serial + 1})" in res.output
    backup_key = SigningKey.generate().public().text()
    res = runner.invoke(admin_cli, ["relay", "add", "backup", "relay2.example.com:443", "--identity-key", backup_key,
                                    "--repo", str(relay_mesh.path), "--admin-key", str(admin_key)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(admin_cli, ["relay", "list", "--repo", str(relay_mesh.path)])
    assert res.output == f"home\t198.51.100.7:3340\t{relay_key}\nbackup\trelay2.example.com:443\t{backup_key}\n"
    # The signed state verifies, and the NetMap carries the relays.
    nm = verify.verify_snapshot(FsSnapshot(relay_mesh.path), relay_mesh.fingerprint, relays_admin_now()).netmap
    assert [(r.name, r.address) for r in nm.relays] == [("home", "198.51.100.7:3340"),
                                                        ("backup", "relay2.example.com:443")]
    assert nm.relays[0].identity_key is not None and nm.relays[0].identity_key.text() == relay_key
    res = runner.invoke(admin_cli, ["relay", "remove", "home", "--repo", str(relay_mesh.path),
                                    "--admin-key", str(admin_key)])
    assert res.exit_code == 0 and "removed relay home" in res.output
    assert [r.name for r in admin.open_checkout(relay_mesh.path).state.relays] == ["backup"]


def relays_admin_now() -> int:
    import time

    return int(time.time())


@pytest.mark.parametrize(("args", "message"), [
    (["add", "Home", "1.2.3.4:5"], "meshctl: relay name 'Home': use lowercase letters, digits and '-'"),
    (["add", "home", "1.2.3.4"], "meshctl: relay address '1.2.3.4': expected HOST:PORT such as 198.51.100.7:3340"),
    (["add", "home", "1.2.3.4:0"], "meshctl: relay address '1.2.3.4:0': port must be 1..65535"),
    (["add", "home", "1.2.3.4:5", "--identity-key", "nope"], "meshctl: identity key must start with 'ed25519:'"),
    # Without its key, clients would take whoever answers at that address for the relay.
    (["add", "home", "1.2.3.4:5"], "meshctl: relay home: --identity-key is required"),
    (["remove", "nothere"], "meshctl: state.json: no relay named 'nothere'"),
])
def test_errors(admin_cli: typer.Typer, relay_mesh: RelayMesh, admin_key: Path, args: list[str],
                message: str) -> None:
    res = CliRunner().invoke(admin_cli, ["relay", *args, "--repo", str(relay_mesh.path),
                                         "--admin-key", str(admin_key)])
    assert res.exit_code == 2
    assert res.output.splitlines()[0] == message


def test_duplicate_name_is_refused(relay_mesh: RelayMesh) -> None:
    co = relay_mesh.checkout
    key = SigningKey.generate().public().text()
    relays_admin.add_relay(co, "home", "1.2.3.4:5", key, relay_mesh.admin_keys, relays_admin_now())
    with pytest.raises(UsageError, match="already listed"):
        relays_admin.add_relay(relay_mesh.checkout, "home", "1.2.3.4:6", key, relay_mesh.admin_keys,
                               relays_admin_now())


@pytest.mark.parametrize(("args", "message"), [
    (["--listen", "nope"], "meshctl: --listen 'nope': expected ADDR:PORT such as 0.0.0.0:3340"),
    (["--listen", "0.0.0.0:1", "--root", "abc"], "meshctl: --root 'abc': expected sha256:<fingerprint> from "
                                                 "`meshctl admin invite`"),
    (["--listen", "0.0.0.0:1", "--metrics", "x"], "meshctl: --metrics 'x': expected ADDR:PORT such as 0.0.0.0:3340"),
])
def test_relay_command_argument_errors(tmp_path: Path, args: list[str], message: str) -> None:
    base = {"--listen": "0.0.0.0:1", "--repo": str(tmp_path), "--root": "sha256:" + "0" * 64}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    argv = ["--state-dir", str(tmp_path / "s"), "relay"] + [x for kv in base.items() for x in kv]
    res = CliRunner().invoke(build_app(), argv)
    assert res.exit_code == 2
    assert res.output.splitlines()[0] == message


def test_relay_command_refuses_a_repo_with_another_root(relay_mesh: RelayMesh, tmp_path: Path) -> None:
    argv = ["relay", "--listen", "127.0.0.1:0", "--repo", str(relay_mesh.path), "--root", "sha256:" + "0" * 64,
            "--state-dir", str(tmp_path / "s")]
    res = CliRunner().invoke(build_app(), argv)
    assert res.exit_code == 3, res.output
    assert res.output.startswith("meshctl: ")
