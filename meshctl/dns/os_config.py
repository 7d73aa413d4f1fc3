"""Point the operating system's resolver at MagicDNS, and put it back (shell).

Two modes (see `resolvconf.choose_mode`):
- systemd-resolved: split DNS on the mesh interface (`resolvectl dns IF 100.100.100.100`,
  `resolvectl domain IF ~<domain> ...`), so only mesh names come to meshctl;
  `resolvectl revert IF` undoes it.
- otherwise: /etc/resolv.conf is backed up to `<state_dir>/resolv.conf.meshctl-backup`
  and rewritten; the previous nameservers become the forwarding upstreams. `restore()`
  puts the backup back byte for byte; `setup()` first restores a backup left by a crash.

Never without DNS: the backup is durable before the file changes, every write is
atomic (rename) except onto a bind-mounted resolv.conf (containers), and the caller
starts the DNS server before `setup()` and calls `restore()` before stopping it.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from meshctl.dns.os_plan import DnsAction, DnsPlan, DnsState
from meshctl.dns.resolvconf import (
    DnsMode,
    Endpoint,
    choose_mode,
    is_ours,
    parse_resolv_conf,
    render_resolv_conf,
    upstreams_of,
)
from meshctl.dns.zone import MAGIC_ADDRESS, normalize_domain
from meshctl.errors import MeshctlError

log = logging.getLogger(__name__)

RESOLV_CONF: Final = Path("/etc/resolv.conf")
BACKUP_NAME: Final = "resolv.conf.meshctl-backup"
SYMLINK_NAME: Final = "resolv.conf.meshctl-backup.symlink"  # set when resolv.conf was a link
RESOLVED_MARK_NAME: Final = "dns-resolved.meshctl"  # the interface we configured in resolved
RESOLVED_RUN_DIR: Final = Path("/run/systemd/resolve")
RESOLVECTL_TIMEOUT_S: Final = 10
RESOLV_CONF_MODE: Final = 0o644

Runner = Callable[[Sequence[str]], None]


class RestoreOutcome(enum.Enum):
    RESTORED = "restored"  # the backup is back in place
    KEPT_FOREIGN = "kept"  # someone else rewrote resolv.conf meanwhile: theirs is kept
    NOTHING = "nothing"  # no backup and no resolved setting: nothing to undo


@dataclass(frozen=True, slots=True)
class OsDnsSetup:
    mode: DnsMode
    upstreams: tuple[Endpoint, ...]  # for DnsServer; () in resolved mode (REFUSED outside)


def run_command(argv: Sequence[str]) -> None:
    """Run a system tool; a failure becomes a MeshctlError naming it."""
    try:
        subprocess.run(list(argv), check=True, capture_output=True, text=True, timeout=RESOLVECTL_TIMEOUT_S)
    except FileNotFoundError:
        raise MeshctlError(f"`{argv[0]}` not found") from None
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or "").strip().splitlines()
        raise MeshctlError(f"`{' '.join(argv)}` failed: {detail[-1] if detail else exc.returncode}") from None
    except subprocess.TimeoutExpired:
        raise MeshctlError(f"`{' '.join(argv)}` timed out") from None


def resolved_running() -> bool:
    """systemd-resolved is up: its runtime directory holds its stub file."""
    return (RESOLVED_RUN_DIR / "stub-resolv.conf").exists() or (RESOLVED_RUN_DIR / "io.systemd.Resolve").exists()


class OsDnsConfig:
    """Owns the system's DNS settings while the agent is up."""

    def __init__(
        self,
        state_dir: Path,
        interface: str,
        *,
        nameserver: str = MAGIC_ADDRESS,
        resolv_conf: Path = RESOLV_CONF,
        mode: DnsMode | None = None,  # None: detect
        run: Runner = run_command,
    ) -> None:
        self.state_dir = state_dir
        self.interface = interface
        self.nameserver = nameserver
        self.resolv_conf = resolv_conf
        self._mode = mode
        self._run = run

    @property
    def backup_path(self) -> Path:
        return self.state_dir / BACKUP_NAME

    def detect_mode(self) -> DnsMode:
        if self._mode is not None:
            return self._mode
        return choose_mode(
            resolvectl_present=shutil.which("resolvectl") is not None,
            resolved_running=resolved_running(),
            current=_read_text(self.resolv_conf),
        )

    def setup(
        self,
        domain: str,
        *,
        reverse_domains: Sequence[str] = (),
        own_addresses: Sequence[str] = (),
    ) -> OsDnsSetup:
        """Send mesh names (and, in resolv.conf mode, all names) to `nameserver`.

        reverse_domains: extra routing domains for resolved (mesh in-addr/ip6.arpa zones).
        own_addresses: addresses meshctl's DNS listens on; never used as upstreams (loops).
        Raises MeshctlError when the system cannot be changed; then nothing was changed.
        """
        domain = normalize_domain(domain)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.recover()
        mode = self.detect_mode()
        if mode is DnsMode.RESOLVED:
            self._setup_resolved(domain, reverse_domains)
            return OsDnsSetup(mode, ())
        return OsDnsSetup(mode, self._setup_resolv_conf(domain, own_addresses))

    def read(self) -> DnsState:
        """What the system resolver does now, as far as meshctl is concerned."""
        mode = self.detect_mode()
        leftover = self.backup_path.exists() or (self.state_dir / RESOLVED_MARK_NAME).exists()
        if mode is DnsMode.RESOLVED:
            domains = self._resolved_link_domains()
            ours = domains is not None
            domain = next((d.removeprefix("~") for d in domains or () if d.startswith("~")), None)
            return DnsState(mode, ours, domain, leftover)
        text = _read_text(self.resolv_conf)
        if not is_ours(text):
            return DnsState(mode, False, None, leftover)
        conf = parse_resolv_conf(text)
        return DnsState(mode, self.nameserver in conf.nameservers, conf.search[0] if conf.search else None, leftover,
                        upstreams_of(conf, [self.nameserver]))

    def apply(self, plan: DnsPlan) -> OsDnsSetup | None:
        """Carry out `plan` (plan_dns); the setup made, for the server's upstreams."""
        if plan.action is DnsAction.RESTORE:
            self.restore()
        elif plan.action is DnsAction.SETUP and plan.wanted is not None:
            wanted = plan.wanted
            return self.setup(wanted.domain, reverse_domains=wanted.reverse_domains,
                              own_addresses=wanted.own_addresses)
        return None

    def _resolved_link_domains(self) -> tuple[str, ...] | None:
        """The routing domains systemd-resolved has on our link when it names our server
        (None when it does not: the settings died with a recreated link, or were reverted)."""
        try:
            servers = subprocess.run(["resolvectl", "dns", self.interface], capture_output=True, text=True,
                                     timeout=RESOLVECTL_TIMEOUT_S, check=False).stdout
            if self.nameserver not in servers.split():
                return None
            domains = subprocess.run(["resolvectl", "domain", self.interface], capture_output=True, text=True,
                                     timeout=RESOLVECTL_TIMEOUT_S, check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None
        return tuple(domains.rpartition(":")[2].split())

    def restore(self) -> RestoreOutcome:
        """Undo setup(): revert resolved's link settings, put resolv.conf back."""
        outcome = RestoreOutcome.NOTHING
        mark = self.state_dir / RESOLVED_MARK_NAME
        if mark.exists():
            interface = mark.read_text().strip() or self.interface
            try:
                self._run(["resolvectl", "revert", interface])
            except MeshctlError as exc:  # the link may be gone already: settings died with it
                log.info("resolvectl revert: %s", exc)
            mark.unlink()
            outcome = RestoreOutcome.RESTORED
        if self.backup_path.exists():
            outcome = self._restore_resolv_conf()
        return outcome

    def recover(self) -> bool:
        """Restore a backup left by a crash; True if there was one."""
        if not self.backup_path.exists() and not (self.state_dir / RESOLVED_MARK_NAME).exists():
            return False
        log.warning("restoring DNS settings left by a previous run")
        self.restore()
        return True

    # -- systemd-resolved ------------------------------------------------------------

    def _setup_resolved(self, domain: str, reverse_domains: Sequence[str]) -> None:
        _write_atomic(self.state_dir / RESOLVED_MARK_NAME, self.interface.encode() + b"\n")
        routing = [f"~{d}" for d in (domain, *reverse_domains)]
        try:
            self._run(["resolvectl", "dns", self.interface, self.nameserver])
            self._run(["resolvectl", "domain", self.interface, *routing])
        except MeshctlError:
            self.restore()
            raise
        # Older resolved lacks default-route; without it the link may also get other names,
        # which are then REFUSED by us and retried elsewhere by resolved.
        with contextlib.suppress(MeshctlError):
            self._run(["resolvectl", "default-route", self.interface, "false"])

    # -- /etc/resolv.conf ------------------------------------------------------------

    def _setup_resolv_conf(self, domain: str, own_addresses: Sequence[str]) -> tuple[Endpoint, ...]:
        original = _read_bytes(self.resolv_conf)
        previous = parse_resolv_conf(original.decode("utf-8", "replace"))
        upstreams = upstreams_of(previous, [self.nameserver, *own_addresses])
        # 1. the backup is on disk (fsynced) before resolv.conf changes at all
        link = self.resolv_conf.is_symlink()
        if link:
            _write_atomic(self.state_dir / SYMLINK_NAME, os.readlink(self.resolv_conf).encode() + b"\n")
        # The backup keeps the original's permission bits, to be restored with them.
        _write_atomic(self.backup_path, original, _mode_of(self.resolv_conf))
        # 2. then the new file replaces the old in one step
        text = render_resolv_conf(self.nameserver, domain, previous, upstreams)
        try:
            _replace_file(self.resolv_conf, text.encode(), RESOLV_CONF_MODE)
        except OSError as exc:
            self._drop_backup()
            raise MeshctlError(f"cannot write {self.resolv_conf}: {exc.strerror or exc}") from None
        log.info("DNS: %s points at %s", self.resolv_conf, self.nameserver)
        return upstreams

    def _restore_resolv_conf(self) -> RestoreOutcome:
        current = _read_text(self.resolv_conf)
        if not is_ours(current):
            log.warning(
                "%s was rewritten by another program while meshctl was up; keeping it",
                self.resolv_conf,
            )
            self._drop_backup()
            return RestoreOutcome.KEPT_FOREIGN
        link_note = self.state_dir / SYMLINK_NAME
        try:
            if link_note.exists():
                _replace_with_symlink(self.resolv_conf, link_note.read_text().rstrip("\n"))
            else:
                _replace_file(self.resolv_conf, self.backup_path.read_bytes(), _mode_of(self.backup_path))
        except OSError as exc:
            raise MeshctlError(
                f"cannot restore {self.resolv_conf}: {exc.strerror or exc}",
                hint=f"the original is in {self.backup_path}",
            ) from None
        self._drop_backup()
        log.info("DNS: %s restored", self.resolv_conf)
        return RestoreOutcome.RESTORED

    def _drop_backup(self) -> None:
        for name in (BACKUP_NAME, SYMLINK_NAME):
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / name).unlink()
        _fsync_dir(self.state_dir)


# -- file helpers ---------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _read_text(path: Path) -> str:
    return _read_bytes(path).decode("utf-8", "replace")


def _mode_of(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return RESOLV_CONF_MODE


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temporary_beside(path: Path) -> Path:
    # Per process: agents in other network namespaces share /etc (only resolv.conf is bind-mounted
    # per namespace), and two of them writing one temporary name renamed each other's file away.
    return path.with_name(f".{path.name}.meshctl-tmp.{os.getpid()}")


def _write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write to a temporary file beside `path`, fsync, rename over it, fsync the directory."""
    tmp = _temporary_beside(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        _write_all(fd, data)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _replace_file(path: Path, data: bytes, mode: int) -> None:
    """Atomically, or in place when `path` is a mount point (a bind-mounted resolv.conf
    cannot be renamed over: EBUSY). In place, the new bytes are written before the old
    tail is cut, so a reader never sees an empty file."""
    try:
        _write_atomic(path, data, mode)
        return
    except OSError as exc:
        if exc.errno not in (errno.EBUSY, errno.EXDEV, errno.EPERM):
            raise
    fd = os.open(path, os.O_WRONLY)
    try:
        _write_all(fd, data)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_with_symlink(path: Path, target: str) -> None:
    tmp = _temporary_beside(path)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
