"""Userspace WireGuard: wireguard-go started by meshctl, configured over its UAPI socket.

Lifecycle facts this module relies on (checked with wireguard-go 0.0.20220316):
- `wireguard-go IFNAME` creates the tun device in the caller's network namespace, opens
  /var/run/wireguard/IFNAME.sock, re-executes itself as a daemon and exits 0 at once. The
  daemon's stdio is /dev/null unless LOG_LEVEL is set, so waiting for the parent is safe.
- We start it in a new session: the daemon then survives the end of a cron job or of the
  terminal that ran `meshctl sync` (it would die of SIGHUP otherwise).
- The socket exists before the daemon serves it, so "started" means "answers a get".
- Deleting the link makes the daemon exit and remove its socket; deleting the socket file
  makes it exit and remove the link. `remove_device()` deletes the link in this namespace and
  waits for this namespace's wireguard-go (the pid it started) to be gone.
- The socket directory is shared by every namespace: a socket that answers while no link of
  that name exists here belongs to another namespace and is refused, never reconfigured,
  and never removed: that would stop another namespace's tunnel.
- A socket that exists but refuses connections is stale (wireguard-go was killed) and is
  deleted, as wireguard-tools does.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from meshctl.errors import MeshctlError
from meshctl.wg.config import DeviceState, DeviceUpdate
from meshctl.wg.uapi import (
    GET_REQUEST,
    MAX_REPLY_BYTES,
    UapiParseError,
    marshal_set,
    parse_get_reply,
    parse_set_reply,
    reply_complete,
)

log = logging.getLogger(__name__)

WIREGUARD_GO: Final = "wireguard-go"
SOCKET_DIR: Final = Path("/var/run/wireguard")
START_DEADLINE_S: Final = 5.0  # wireguard-go answers in ~20 ms here; 5 s covers a loaded box
STOP_DEADLINE_S: Final = 5.0
POLL_INTERVAL_S: Final = 0.01
UAPI_TIMEOUT_S: Final = 5.0  # one request; a live daemon answers in microseconds
PROBE_TIMEOUT_S: Final = 1.0
RECV_CHUNK: Final = 65536
SOCKETS_WAIT_S: Final = 1.0  # wireguard-go binds its UDP sockets within ms of the link going up
PROBE_REQUEST: Final = b"set=1\n\n"  # changes nothing; the reply says the daemon is there
INSTALL_HINT: Final = (
    "install wireguard-go (Debian/Ubuntu: apt-get install wireguard-go) "
    "or load the kernel module and use --wg-backend kernel"
)
# Variables that change how wireguard-go daemonizes or logs; we want the default daemon.
_SCRUBBED_ENV: Final = ("WG_PROCESS_FOREGROUND", "LOG_LEVEL", "WG_TUN_FD", "WG_UAPI_FD")


class UapiUnavailable(MeshctlError):
    """Nobody answers on the UAPI socket."""


def _link_exists(ifname: str) -> bool:
    from meshctl.netlink import IPRoute

    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=ifname))


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its reaper has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X")


def wireguard_go_processes() -> Iterator[tuple[str, int]]:
    """(interface, pid) of every live `wireguard-go IFNAME` process on this machine (all namespaces)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        ifname = _wireguard_go_interface(int(entry.name))
        if ifname is not None:
            yield ifname, int(entry.name)


def _wireguard_go_interface(pid: int) -> str | None:
    """The interface a live `wireguard-go IFNAME` process serves; None for any other process."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return None
    if len(argv) == 2 and os.path.basename(argv[0]) == WIREGUARD_GO.encode() and pid_alive(pid):
        return argv[1].decode(errors="replace")
    return None


def _netns(pid: int | str) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def find_wireguard_go(ifname: str) -> int | None:
    """The PID of a live wireguard-go serving `ifname`, in any namespace (for tests and tools that
    look at a lab from outside: its interface names are unique)."""
    return next((pid for name, pid in wireguard_go_processes() if name == ifname), None)


def wireguard_go_here(ifname: str) -> int | None:
    """The PID of the live wireguard-go serving `ifname` in this network namespace: the only one
    meshctl may configure or stop (another namespace may run one with the same name)."""
    here = _netns("thread-self")
    return next((pid for name, pid in wireguard_go_processes() if name == ifname and _netns(pid) == here), None)


def is_our_wireguard_go(pid: int, ifname: str) -> bool:
    """Whether `pid` still is the wireguard-go serving `ifname` in this network namespace (a pid
    recorded earlier may have exited and been reused by another program)."""
    return _wireguard_go_interface(pid) == ifname and _netns(pid) == _netns("thread-self")


def remove_stale_socket(path: Path) -> bool:
    """Remove a UAPI socket nobody listens on (its wireguard-go died without removing it).
    False when something accepts connections there."""
    if not path.exists():
        return True
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT_S)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        log.info("removing stale socket %s", path)
        path.unlink(missing_ok=True)
        return True
    except (FileNotFoundError, TimeoutError):
        return True
    finally:
        probe.close()
    return False


class UserspaceBackend:
    """wireguard-go behind /var/run/wireguard/<ifname>.sock."""

    name = "userspace"

    def __init__(
        self, ifname: str, *, binary: str = WIREGUARD_GO, socket_dir: Path = SOCKET_DIR
    ) -> None:
        self.ifname = ifname
        self.binary = binary
        self.socket_path = socket_dir / f"{ifname}.sock"
        self._tuned: tuple[int, int] | None = None  # (wireguard-go pid, port) whose sockets were sized
        self._pid: int | None = None

    # --- UAPI transport ---------------------------------------------------------------------

    def _request(self, payload: bytes, timeout: float = UAPI_TIMEOUT_S) -> bytes:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            try:
                sock.connect(str(self.socket_path))
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise UapiUnavailable(
                    f"no wireguard-go answers for {self.ifname} ({self.socket_path}: "
                    f"{exc.strerror})",
                    hint="run `meshctl sync` or `meshctl up` to start it",
                ) from None
            sock.sendall(payload)
            buf = bytearray()
            while not reply_complete(bytes(buf[-2:])):
                chunk = sock.recv(RECV_CHUNK)
                if not chunk:
                    raise MeshctlError(f"wireguard-go for {self.ifname} closed the connection")
                buf += chunk
                if len(buf) > MAX_REPLY_BYTES:
                    raise MeshctlError(f"wireguard-go for {self.ifname}: reply too large")
            return bytes(buf)
        except TimeoutError:
            raise MeshctlError(
                f"wireguard-go for {self.ifname} did not answer within {timeout:g} s"
            ) from None
        finally:
            sock.close()

    def _answers(self) -> bool:
        """Whether wireguard-go serves the socket: an empty set, answered in microseconds
        whatever the number of peers (a get would send all of them)."""
        try:
            return parse_set_reply(self._request(PROBE_REQUEST, PROBE_TIMEOUT_S)) == 0
        except (MeshctlError, OSError):
            return False

    # --- the backend API --------------------------------------------------------------------

    def exists(self) -> bool:
        return self._answers() and _link_exists(self.ifname)

    def pid(self) -> int | None:
        """The PID of this namespace's wireguard-go for the interface (looked up once, then
        checked: one /proc entry instead of all of them)."""
        if self._pid is None or not is_our_wireguard_go(self._pid, self.ifname):
            self._pid = wireguard_go_here(self.ifname)
        return self._pid

    def ensure_device(self) -> None:
        if self._answers():
            self._check_link_here()
            return
        self._remove_stale_socket()
        path = shutil.which(self.binary)
        if path is None:
            raise MeshctlError(f"{self.binary} not found: cannot start userspace WireGuard",
                               hint=INSTALL_HINT)
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        try:
            proc = subprocess.run(
                [path, self.ifname],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                timeout=START_DEADLINE_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise MeshctlError(f"{self.binary} {self.ifname} did not return within "
                               f"{START_DEADLINE_S:g} s") from None
        if proc.returncode != 0:
            lines = [ln for ln in proc.stdout.decode(errors="replace").splitlines() if ln.strip()
                     and not ln.strip().startswith(("┌", "│", "└"))]  # skip the kernel banner
            why = lines[-1].strip() if lines else f"exit status {proc.returncode}"
            raise MeshctlError(f"{self.binary} failed to create {self.ifname}: {why}",
                               hint=INSTALL_HINT if proc.returncode == 127 else None)
        deadline = time.monotonic() + START_DEADLINE_S
        while not self._answers():
            if time.monotonic() > deadline:
                raise MeshctlError(
                    f"{self.binary} started but {self.socket_path} did not answer within "
                    f"{START_DEADLINE_S:g} s"
                )
            time.sleep(POLL_INTERVAL_S)
        self._check_link_here()
        log.info("%s: wireguard-go started (pid %s)", self.ifname, self.pid())

    def read(self) -> DeviceState:
        try:
            reply = parse_get_reply(self._request(GET_REQUEST))
        except UapiParseError as exc:
            raise MeshctlError(f"wireguard-go for {self.ifname}: {exc.message}") from None
        if reply.errno != 0:
            raise MeshctlError(
                f"wireguard-go for {self.ifname} failed to report its state "
                f"(errno {reply.errno}: {os.strerror(reply.errno)})"
            )
        return reply.state

    def apply(self, update: DeviceUpdate) -> None:
        if update.is_empty():
            return  # the promise: nothing changed, no WireGuard call
        try:
            code = parse_set_reply(self._request(marshal_set(update)))
        except UapiParseError as exc:
            raise MeshctlError(f"wireguard-go for {self.ifname}: {exc.message}") from None
        if code != 0:
            # Never echo the request: it holds the private key.
            raise MeshctlError(
                f"wireguard-go refused the configuration for {self.ifname} "
                f"(errno {code}: {os.strerror(code)})"
            )

    def tune_sockets(self, listen_port: int) -> None:
        """Give wireguard-go's UDP sockets 8 MiB buffers, once per process and port.

        wireguard-go before 0.0.20230223 (Debian 12 ships 0.0.20220316) keeps the 208 KiB
        default, which caps a direct TCP flow: 661 -> 891 Mbit/s with 8 MiB in
        bench/relay_throughput.py. Its sockets are opened when the link comes up, so they may
        still be missing right after the pass that brought it up: wait for them a moment.
        """
        from meshctl.udp.sockets import BUFFER_BYTES, enlarge_process_udp_buffers, udp_socket_count

        pid = self.pid()
        if pid is None or self._tuned == (pid, listen_port):
            return
        deadline = time.monotonic() + SOCKETS_WAIT_S
        while not (bound := udp_socket_count(pid, listen_port)) and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL_S)
        if not bound:
            return  # the link is not up: the next pass tries again
        changed = enlarge_process_udp_buffers(pid, listen_port)
        self._tuned = (pid, listen_port)  # also when not permitted: no retry on every pass
        log.info("%s: %d UDP sockets of wireguard-go %d given %d MiB buffers", self.ifname, changed, pid,
                 BUFFER_BYTES >> 20)

    def remove_device(self, owned_pid: int | None = None) -> None:
        """Delete the link here and wait for its wireguard-go: `owned_pid`, the one meshctl
        started (device.json), while it still is that process, else the one serving this
        namespace's link. Another namespace's wireguard-go is never touched."""
        pid = owned_pid if owned_pid is not None and is_our_wireguard_go(owned_pid, self.ifname) else self.pid()
        if _link_exists(self.ifname):
            self._delete_link()
        elif pid is not None:
            os.kill(pid, signal.SIGTERM)  # ours, without its link: it cleans up its socket on exit
        deadline = time.monotonic() + STOP_DEADLINE_S
        while pid is not None and pid_alive(pid):
            if time.monotonic() > deadline:
                log.warning("%s: wireguard-go %d did not exit; sending SIGKILL", self.ifname, pid)
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(POLL_INTERVAL_S)
        remove_stale_socket(self.socket_path)  # only when nobody answers there any more

    # --- helpers ----------------------------------------------------------------------------

    def _delete_link(self) -> None:
        from meshctl.netlink import IPRoute, NetlinkError

        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=self.ifname)
            if not idx:
                return
            try:
                ipr.link("del", index=idx[0])
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:
                    raise MeshctlError(f"cannot delete {self.ifname}: {exc}") from None

    def _check_link_here(self) -> None:
        if not _link_exists(self.ifname):
            raise MeshctlError(
                f"{self.socket_path} answers, but {self.ifname} is not in this network namespace",
                hint="another namespace runs wireguard-go with this interface name: pick "
                "another --interface (sockets in /var/run/wireguard are shared)",
            )

    def _remove_stale_socket(self) -> None:
        if remove_stale_socket(self.socket_path):
            return
        raise MeshctlError(
            f"{self.socket_path} accepts connections but does not answer UAPI requests",
            hint=f"check the process serving it; stop it to let meshctl start {self.binary}",
        )
