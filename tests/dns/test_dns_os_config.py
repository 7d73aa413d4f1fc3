"""OS integration: resolv.conf backup/restore byte-identical, crash recovery, resolved
split DNS (commands recorded: systemd is not PID 1 here), and once for real inside a
mount + network namespace, where glibc (`getent`) resolves a mesh name through us."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from meshctl.dns.os_config import BACKUP_NAME, OsDnsConfig, RestoreOutcome
from meshctl.dns.resolvconf import DnsMode, is_ours
from meshctl.errors import MeshctlError

ORIGINAL = b"# from DHCP\nnameserver 10.0.0.53\nnameserver 10.0.0.54\nsearch corp.example\n\n"


@pytest.fixture
def resolv(tmp_path: Path) -> Path:
    path = tmp_path / "etc" / "resolv.conf"
    path.parent.mkdir()
    path.write_bytes(ORIGINAL)
    path.chmod(0o644)
    return path


def direct(tmp_path: Path, resolv: Path) -> OsDnsConfig:
    return OsDnsConfig(tmp_path / "state", "mesh0", resolv_conf=resolv, mode=DnsMode.RESOLV_CONF)


def test_setup_rewrites_and_restore_is_byte_identical(tmp_path: Path, resolv: Path) -> None:
    cfg = direct(tmp_path, resolv)
    result = cfg.setup("example.mesh", own_addresses=["100.64.0.1"])
    assert result.mode is DnsMode.RESOLV_CONF
    assert result.upstreams == (("10.0.0.53", 53), ("10.0.0.54", 53))
    text = resolv.read_text()
    assert is_ours(text) and "nameserver 100.100.100.100\n" in text
    assert "search example.mesh corp.example\n" in text
    assert (tmp_path / "state" / BACKUP_NAME).read_bytes() == ORIGINAL
    assert cfg.restore() is RestoreOutcome.RESTORED
    assert resolv.read_bytes() == ORIGINAL
    assert resolv.stat().st_mode & 0o777 == 0o644
    assert not (tmp_path / "state" / BACKUP_NAME).exists()
    assert cfg.restore() is RestoreOutcome.NOTHING  # idempotent


def test_original_mode_is_restored(tmp_path: Path, resolv: Path) -> None:
    resolv.chmod(0o755)
    cfg = direct(tmp_path, resolv)
    cfg.setup("example.mesh")
    cfg.restore()
    assert resolv.stat().st_mode & 0o777 == 0o755 and resolv.read_bytes() == ORIGINAL


def test_crash_then_next_start_restores_first(tmp_path: Path, resolv: Path) -> None:
    direct(tmp_path, resolv).setup("example.mesh")
    # crash: no restore; a new process starts with the same state dir
    second = direct(tmp_path, resolv)
    result = second.setup("example.mesh")
    # the upstreams are the real ones, not 100.100.100.100 from our own file
    assert result.upstreams == (("10.0.0.53", 53), ("10.0.0.54", 53))
    assert (tmp_path / "state" / BACKUP_NAME).read_bytes() == ORIGINAL
    second.restore()
    assert resolv.read_bytes() == ORIGINAL


def test_recover_without_setup(tmp_path: Path, resolv: Path) -> None:
    """`meshctl down` after a crash, with no agent running."""
    direct(tmp_path, resolv).setup("example.mesh")
    assert direct(tmp_path, resolv).recover() is True
    assert resolv.read_bytes() == ORIGINAL
    assert direct(tmp_path, resolv).recover() is False


def test_foreign_rewrite_is_kept(tmp_path: Path, resolv: Path) -> None:
    cfg = direct(tmp_path, resolv)
    cfg.setup("example.mesh")
    resolv.write_bytes(b"nameserver 192.0.2.1\n")  # a DHCP client renewed meanwhile
    assert cfg.restore() is RestoreOutcome.KEPT_FOREIGN
    assert resolv.read_bytes() == b"nameserver 192.0.2.1\n"
    assert not (tmp_path / "state" / BACKUP_NAME).exists()


def test_symlinked_resolv_conf_comes_back_as_the_same_link(tmp_path: Path, resolv: Path) -> None:
    target = tmp_path / "etc" / "real-resolv.conf"
    target.write_bytes(ORIGINAL)
    resolv.unlink()
    resolv.symlink_to("real-resolv.conf")
    cfg = direct(tmp_path, resolv)
    cfg.setup("example.mesh")
    assert not resolv.is_symlink() and is_ours(resolv.read_text())
    assert target.read_bytes() == ORIGINAL  # the link's target is never written
    cfg.restore()
    assert resolv.is_symlink() and os.readlink(resolv) == "real-resolv.conf"
    assert resolv.read_bytes() == ORIGINAL


def test_failed_write_leaves_original_and_no_backup(tmp_path: Path, resolv: Path) -> None:
    if os.geteuid() == 0:
        # root ignores directory permissions; make the target a directory instead
        bad = tmp_path / "etc" / "dir.conf"
        bad.mkdir()
        cfg = OsDnsConfig(tmp_path / "state", "mesh0", resolv_conf=bad, mode=DnsMode.RESOLV_CONF)
    else:
        resolv.parent.chmod(0o555)
        cfg = direct(tmp_path, resolv)
    with pytest.raises((MeshctlError, IsADirectoryError)):
        cfg.setup("example.mesh")
    assert resolv.read_bytes() == ORIGINAL


class Recorder:
    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_on = fail_on

    def __call__(self, argv: Sequence[str]) -> None:
        self.calls.append(list(argv))
        if self.fail_on and self.fail_on in argv:
            raise MeshctlError(f"`{' '.join(argv)}` failed: boom")


def test_resolved_split_dns_and_revert(tmp_path: Path, resolv: Path) -> None:
    """systemd-resolved cannot run here (systemd is not PID 1): the commands are recorded."""
    run = Recorder()
    cfg = OsDnsConfig(tmp_path / "state", "mesh0", resolv_conf=resolv, mode=DnsMode.RESOLVED, run=run)
    result = cfg.setup("Example.Mesh", reverse_domains=["100.in-addr.arpa"])
    assert result.mode is DnsMode.RESOLVED and result.upstreams == ()
    assert run.calls[:2] == [
        ["resolvectl", "dns", "mesh0", "100.100.100.100"],
        ["resolvectl", "domain", "mesh0", "~example.mesh", "~100.in-addr.arpa"],
    ]
    assert resolv.read_bytes() == ORIGINAL  # resolv.conf untouched in this mode
    # a new process (after a crash) reverts first, then sets again
    run2 = Recorder()
    OsDnsConfig(tmp_path / "state", "mesh0", resolv_conf=resolv, mode=DnsMode.RESOLVED, run=run2).setup("example.mesh")
    assert run2.calls[0] == ["resolvectl", "revert", "mesh0"]
    assert cfg.restore() is RestoreOutcome.RESTORED
    assert cfg.restore() is RestoreOutcome.NOTHING


def test_resolved_failure_reverts(tmp_path: Path, resolv: Path) -> None:
    run = Recorder(fail_on="domain")
    cfg = OsDnsConfig(tmp_path / "state", "mesh0", resolv_conf=resolv, mode=DnsMode.RESOLVED, run=run)
    with pytest.raises(MeshctlError, match="boom"):
        cfg.setup("example.mesh")
    assert run.calls[-1] == ["resolvectl", "revert", "mesh0"]


# -- for real: /etc/resolv.conf in a private mount namespace -----------------------------

NS_SCRIPT = textwrap.dedent(
    """
    import asyncio, subprocess, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from dnssupport import PEERS, make_netmap
    from meshctl.dns.os_config import OsDnsConfig, RestoreOutcome
    from meshctl.dns.server import DnsServer
    from meshctl.dns.zone import zone_from_netmap

    async def main() -> None:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "addr", "add", "100.100.100.100/32", "dev", "lo"], check=True)
        before = Path("/etc/resolv.conf").read_bytes()
        server = DnsServer(zone_from_netmap(make_netmap(PEERS)), [("100.100.100.100", 53)])
        await server.start()  # the server first, then the OS points at it
        cfg = OsDnsConfig(Path(sys.argv[1]), "lo")  # the real /etc/resolv.conf, mode detected
        result = cfg.setup("example.mesh")
        print("MODE", result.mode.value, "UPSTREAMS", result.upstreams)
        for name in ("desktop.example.mesh", "laptop"):  # fqdn, and via the search domain
            for db in ("hosts", "ahostsv4"):  # AAAA first (glibc prefers it), then A
                p = await asyncio.create_subprocess_exec("getent", db, name, stdout=-1)
                out, _ = await p.communicate()
                print("GETENT", db, name, out.decode().split()[:1])
        assert cfg.restore() is RestoreOutcome.RESTORED  # restore before the server stops
        await server.stop()
        print("IDENTICAL", Path("/etc/resolv.conf").read_bytes() == before)

    asyncio.run(main())
    """
)


@pytest.mark.netns
def test_real_etc_resolv_conf_in_mount_namespace(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for unshare -m -n (mount and network namespaces)")
    for tool in ("unshare", "mount", "ip", "getent"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs `{tool}`")
    fake = tmp_path / "resolv.conf"
    fake.write_bytes(ORIGINAL)
    real_before = Path("/etc/resolv.conf").read_bytes()
    script = tmp_path / "ns.py"
    script.write_text(NS_SCRIPT)
    here = Path(__file__).parent
    inner = f"mount --bind {fake} /etc/resolv.conf && exec {sys.executable} {script} {tmp_path / 'state'} {here}"
    env = {**os.environ, "PYTHONPATH": str(here.parents[1])}
    proc = subprocess.run(
        ["unshare", "-m", "-n", "--propagation", "private", "sh", "-c", inner],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    if proc.returncode != 0 and "unshare failed" in proc.stderr:
        pytest.skip(f"cannot create namespaces here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "MODE resolv.conf UPSTREAMS (('10.0.0.53', 53), ('10.0.0.54', 53))" in out
    assert "GETENT hosts desktop.example.mesh ['fd7a:115c:a1e0::1']" in out
    assert "GETENT ahostsv4 desktop.example.mesh ['100.64.0.1']" in out
    assert "GETENT hosts laptop ['fd7a:115c:a1e0::2']" in out
    assert "GETENT ahostsv4 laptop ['100.64.0.2']" in out
    assert "IDENTICAL True" in out
    assert fake.read_bytes() == ORIGINAL  # byte-identical, through the bind mount
    assert Path("/etc/resolv.conf").read_bytes() == real_before  # the host's file untouched
