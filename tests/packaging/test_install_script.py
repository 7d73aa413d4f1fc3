"""packaging/install.sh into a temporary root: what it installs, and that uninstall removes it all."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from packaging_support import PACKAGING

INSTALL_SH = PACKAGING / "install.sh"
UNITS = ("meshctl.service", "meshctl-sync.service", "meshctl-sync.timer")


@pytest.fixture
def fake_binary(tmp_path: Path) -> Path:
    """Stands in for dist/meshctl: the script only copies it and asks it for completion."""
    path = tmp_path / "meshctl-bin"
    path.write_text('#!/bin/sh\n[ "$1" = --show-completion ] && echo "complete -F _meshctl meshctl"\n'
                    'exit 0\n')  # like typer: --show-completion takes no value
    path.chmod(0o755)
    return path


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(INSTALL_SH), "--root", str(root), *args], capture_output=True,
                          text=True, timeout=60, check=False)


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


def test_install_puts_binary_units_and_docs_in_place(tmp_path: Path, fake_binary: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    proc = install(root, "--binary", str(fake_binary))
    assert proc.returncode == 0, proc.stderr
    binary = root / "usr/local/bin/meshctl"
    assert binary.read_bytes() == fake_binary.read_bytes()
    assert stat.S_IMODE(binary.stat().st_mode) == 0o755
    for unit in UNITS:
        installed = root / "etc/systemd/system" / unit
        assert installed.read_text() == (PACKAGING / unit).read_text()
        assert stat.S_IMODE(installed.stat().st_mode) == 0o644
    assert (root / "etc/logrotate.d/meshctl").read_text() == (PACKAGING / "meshctl.logrotate").read_text()
    assert (root / "usr/local/share/doc/meshctl/README.md").exists()
    completion = root / "usr/local/share/bash-completion/completions/meshctl"
    assert completion.read_text().strip() == "complete -F _meshctl meshctl"
    assert not (root / "etc/cron.d/meshctl").exists(), "cron is opt-in (--cron)"
    assert "systemctl enable --now meshctl.service" in proc.stdout


def test_uninstall_leaves_nothing(tmp_path: Path, fake_binary: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    assert install(root, "--binary", str(fake_binary), "--cron").returncode == 0
    assert "etc/cron.d/meshctl" in files_under(root)
    again = install(root, "--binary", str(fake_binary), "--cron")  # idempotent
    assert again.returncode == 0, again.stderr
    proc = install(root, "--uninstall")
    assert proc.returncode == 0, proc.stderr
    assert files_under(root) == set()
    assert not (root / "usr/local/share/meshctl").exists()
    assert not (root / "usr/local/share/doc/meshctl").exists()


def test_uninstall_keeps_the_state_dir(tmp_path: Path, fake_binary: Path) -> None:
    root = tmp_path / "root"
    keys = root / "var/lib/meshctl/keys"
    keys.mkdir(parents=True)
    (keys / "wireguard.key").write_text("secret")
    assert install(root, "--binary", str(fake_binary)).returncode == 0
    proc = install(root, "--uninstall")
    assert proc.returncode == 0
    assert files_under(root) == {"var/lib/meshctl/keys/wireguard.key"}
    assert "kept" in proc.stdout and "var/lib/meshctl" in proc.stdout


def test_prefix_is_used_for_the_binary_and_in_units_and_cron(tmp_path: Path, fake_binary: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    proc = install(root, "--binary", str(fake_binary), "--prefix", "/opt/meshctl", "--cron")
    assert proc.returncode == 0, proc.stderr
    assert (root / "opt/meshctl/bin/meshctl").exists()
    assert not (root / "usr/local/bin/meshctl").exists()
    service = (root / "etc/systemd/system/meshctl.service").read_text()
    assert "ExecStart=/opt/meshctl/bin/meshctl up --foreground" in service
    assert "/usr/local/" not in service
    assert "root /opt/meshctl/bin/meshctl sync --jitter 60" in (root / "etc/cron.d/meshctl").read_text()
    assert install(root, "--uninstall", "--prefix", "/opt/meshctl").returncode == 0
    assert files_under(root) == set()


def test_without_a_binary_it_says_how_to_get_one(tmp_path: Path) -> None:
    proc = install(tmp_path, "--binary", str(tmp_path / "missing"))
    assert proc.returncode == 1
    assert "missing: not an executable file" in proc.stderr
    assert files_under(tmp_path) == set()


def test_unknown_option_is_a_usage_error(tmp_path: Path) -> None:
    proc = install(tmp_path, "--frobnicate")
    assert proc.returncode == 2
    assert "unknown option --frobnicate" in proc.stderr


def test_relative_prefix_is_refused(tmp_path: Path, fake_binary: Path) -> None:
    proc = install(tmp_path, "--binary", str(fake_binary), "--prefix", "usr")
    assert proc.returncode == 1
    assert "--prefix must be an absolute path" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="checks a root-owned temp root; needs root")
def test_the_real_binary_installs_with_completion(tmp_path: Path, meshctl_bin: list[str]) -> None:
    """The completion script comes from the binary itself (typer's --show-completion)."""
    if len(meshctl_bin) != 1:
        pytest.skip("MESHCTL_BIN is a command line, not one file")
    root = tmp_path / "root"
    root.mkdir()
    proc = install(root, "--binary", meshctl_bin[0])
    assert proc.returncode == 0, proc.stderr
    completion = (root / "usr/local/share/bash-completion/completions/meshctl").read_text()
    assert "_MESHCTL_COMPLETE=complete_bash" in completion
    assert "complete " in completion and " meshctl" in completion
