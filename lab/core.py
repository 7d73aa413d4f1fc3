"""The network lab: hosts, LANs, NAT routers and an "internet" in network namespaces.

Test and demo infrastructure, driven through `ip`, `nft`, `conntrack`, `git daemon` and
coturn. Everything one run creates carries its run id (namespaces `<prefix>-<rid>-<name>`,
interfaces `<rid><tag><n>`), so concurrent runs never collide, and is recorded so that
`Lab.close()` (the context manager's exit, an exception, SIGTERM/SIGHUP/Ctrl-C, or atexit as a
backstop) removes it. `cleanup_stale()` removes what a killed run left behind.

    internet (203.0.113.1/24 on its WAN bridge; services on 198.51.100.1 and .2)
      |-- nat router (WAN 203.0.113.10+k) -- LAN bridge in the router -- hosts 10.0.k.10+i
      `-- public hosts (203.0.113.10+k)
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import itertools
import logging
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface
from pathlib import Path
from types import FrameType
from typing import IO, Final, NamedTuple

from lab import rules
from meshctl.errors import MeshctlError

log = logging.getLogger(__name__)

DEFAULT_PREFIX: Final = "mlab"
RUN_DIR: Final = Path("/run/meshctl-lab")  # one file per live run: "<pid> <starttime>"
RUN_ID_HEX: Final = 6
CMD_TIMEOUT_S: Final = 60.0
READY_TIMEOUT_S: Final = 10.0
POLL_INTERVAL_S: Final = 0.05
KILL_GRACE_S: Final = 2.0
GIT_PORT: Final = 9418

INTERNET_V4: Final = IPv4Network("203.0.113.0/24")  # the WAN segment (TEST-NET-3)
INTERNET_V6: Final = ipaddress.IPv6Network("2001:db8:113::/64")
SERVICE_V4: Final = (IPv4Address("198.51.100.1"), IPv4Address("198.51.100.2"))  # TEST-NET-2
SERVICE_V6: Final = (IPv6Address("2001:db8:51::1"), IPv6Address("2001:db8:51::2"))
FIRST_HOST_OFFSET: Final = 10  # .1 is the gateway; hosts start at .10
LAN_V4_BASE: Final = "10.0"
LAN_V6_BASE: Final = "fd6c:6162:0"  # ULA

_PACKAGE_ROOT: Final = str(Path(__file__).resolve().parents[1])
UDPTOOL: Final = Path(__file__).resolve().with_name("udptool.py")
_HANDLED_SIGNALS: Final = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class LabError(MeshctlError):
    """The lab could not be built or a lab command failed."""


class LabInterrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived while a lab was open; raised so cleanup runs on the way out."""


@dataclass(frozen=True, slots=True)
class Link:
    """One interface of a node: on which segment, its name and its addresses."""

    segment: str
    ifname: str
    ipv4: IPv4Interface | None = None
    ipv6: IPv6Interface | None = None


@dataclass(eq=False)
class Node:
    """A network namespace playing one machine."""

    name: str
    ns: str
    links: list[Link] = field(default_factory=list)

    def link(self, segment: str) -> Link:
        for link in self.links:
            if link.segment == segment:
                return link
        raise LabError(f"{self.name} has no link on {segment!r}")

    @property
    def ipv4(self) -> IPv4Address:
        """The first IPv4 address (a host's LAN address, a router's public one)."""
        for link in self.links:
            if link.ipv4 is not None:
                return link.ipv4.ip
        raise LabError(f"{self.name} has no IPv4 address")

    @property
    def ipv6(self) -> IPv6Address:
        for link in self.links:
            if link.ipv6 is not None:
                return link.ipv6.ip
        raise LabError(f"{self.name} has no IPv6 address")


@dataclass(eq=False)
class NatRouter(Node):
    profile: str = rules.PORT_RESTRICTED

    @property
    def public_ip(self) -> IPv4Address:
        wan = self.link("wan").ipv4
        assert wan is not None
        return wan.ip

    @property
    def wan_if(self) -> str:
        return self.link("wan").ifname

    @property
    def lan_if(self) -> str:
        return self.link(self.name).ifname


@dataclass(eq=False)
class Internet(Node):
    """The router every WAN attaches to; it also runs the public services (STUN, git)."""

    service_ips: tuple[IPv4Address, ...] = SERVICE_V4


@dataclass(frozen=True, slots=True)
class Lan:
    name: str
    ns: str  # where the bridge lives: the router's namespace, or a switch namespace
    bridge: str
    ipv4: IPv4Network
    ipv6: ipaddress.IPv6Network
    gateway: IPv4Address | None


class Datagram(NamedTuple):
    host: str
    port: int
    data: bytes


def meshctl_argv() -> list[str]:
    """The meshctl command: $MESHCTL_BIN (e.g. a PyInstaller binary) or this Python's module."""
    custom = os.environ.get("MESHCTL_BIN")
    if custom:
        return shlex.split(custom)
    return [sys.executable, "-m", "meshctl"]


def bridge_mac(run_id: str, n: int) -> str:
    """A fixed, locally administered unicast MAC for a lab bridge: 02, the run id, a counter."""
    tail = f"{zlib.crc32(run_id.encode()) & 0xFFFFFF:06x}{n & 0xFFFF:04x}"
    return "02:" + ":".join(tail[i:i + 2] for i in range(0, 10, 2))


# The Debian package that brings each program the lab's callers need (named when one is missing).
DEBIAN_PACKAGE: Final = {
    "wireguard-go": "wireguard-go", "wg": "wireguard-tools", "git": "git", "ping": "iputils-ping",
    "nft": "nftables", "ip": "iproute2", "ss": "iproute2", "dig": "dnsutils", "getent": "libc-bin",
    "turnserver": "coturn", "conntrack": "conntrack", "iperf3": "iperf3", "sshd": "openssh-server",
}


def lab_unavailable(tools: Sequence[str] = ()) -> str | None:
    """Why the lab cannot run here (for pytest.skip), or None when it can; `tools`: programs the
    caller needs besides (named in the reason)."""
    if os.geteuid() != 0:
        return "the network lab needs root (network namespaces)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"the network lab needs `{tool}` (Debian: iproute2, nftables)"
    missing = [t for t in tools if shutil.which(t) is None]
    if not missing:
        return None
    packages = sorted({DEBIAN_PACKAGE.get(t, t) for t in missing})
    return f"needs {', '.join(f'`{t}`' for t in missing)} on PATH (Debian: {', '.join(packages)})"


def poll(check: Callable[[], bool], what: str, timeout: float = READY_TIMEOUT_S) -> None:
    """Call `check` until it returns True; LabError after `timeout` seconds."""
    if wait_for(check, timeout, POLL_INTERVAL_S) is None:
        raise LabError(f"{what}: not ready after {timeout:g} s")


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.2) -> float | None:
    """Seconds until `check()` held, or None after `timeout` (for tests that measure the wait)."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            return None
        time.sleep(interval)


def udptool_argv(*args: str) -> list[str]:
    """Run the lab's UDP tool (a standalone script; -S: no site import, faster start)."""
    return [sys.executable, "-S", str(UDPTOOL), *args]


def _ns(node: Node | str) -> str:
    return node.ns if isinstance(node, Node) else node


def _host_cmd(argv: Sequence[str], *, check: bool = True, input: str | None = None,
              env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    log.debug("+ %s", shlex.join(argv))
    proc = subprocess.run(list(argv), capture_output=True, text=True, input=input, env=env,
                          timeout=CMD_TIMEOUT_S, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"`{shlex.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def _process_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _owner_alive(prefix: str, run_id: str) -> bool:
    try:
        pid_text, start = (RUN_DIR / f"{prefix}-{run_id}").read_text().split()
    except (OSError, ValueError):
        return False
    return _process_start_time(int(pid_text)) == start


def _kill_namespace_processes(ns: str) -> None:
    """SIGKILL whatever still runs in one of the lab's namespaces, and wait until it is gone."""

    def pids() -> list[str]:
        return _host_cmd(["ip", "netns", "pids", ns], check=False).stdout.split()

    def none_left() -> bool:
        left = pids()
        for pid in left:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        return not left

    with contextlib.suppress(LabError):  # a process stuck in the kernel must not stop cleanup
        poll(none_left, f"processes in {ns}", KILL_GRACE_S)


NETNS_ETC: Final = Path("/etc/netns")


def _private_etc(ns: str) -> None:
    """Give the namespace its own /etc/resolv.conf: `ip netns exec` bind-mounts
    /etc/netns/<ns>/resolv.conf over it, so a node's MagicDNS never edits the host's file.
    The nameserver is 127.0.0.1 (nothing listens: lookups fail at once), not resolved's 127.0.0.53: the host's
    resolved cannot see a namespace's interfaces."""
    etc = NETNS_ETC / ns
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text("# meshctl lab: this namespace's own resolv.conf\nnameserver 127.0.0.1\n")


def _interfaces(ns: str) -> list[str]:
    listing = _host_cmd(["ip", "-n", ns, "-o", "link", "show"], check=False).stdout
    return [line.split(":", 2)[1].strip().split("@", 1)[0] for line in listing.splitlines() if line.count(":") >= 2]


def _delete_namespace(ns: str) -> None:
    from meshctl.wg.userspace import SOCKET_DIR, remove_stale_socket

    interfaces = _interfaces(ns)
    _kill_namespace_processes(ns)
    # A killed wireguard-go leaves its UAPI socket in the directory every namespace shares.
    # Only sockets nobody answers on go: the same name may be in use outside this namespace.
    for name in interfaces:
        remove_stale_socket(SOCKET_DIR / f"{name}.sock")
    _host_cmd(["ip", "netns", "del", ns], check=False)
    shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)


def cleanup_stale(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Remove namespaces, run files and temp dirs of lab runs whose process is gone.

    Only names that start with `<prefix>-` are considered, and a run whose owner is still
    alive is left alone, so this is safe while other labs run. Returns the namespaces removed.
    """
    if not (prefix.isalnum() and prefix.islower()):
        raise ValueError(f"a lab prefix is lowercase letters and digits, got {prefix!r}")
    removed = []
    listing = _host_cmd(["ip", "netns", "list"], check=False).stdout
    for line in listing.splitlines():
        ns = line.split(" ", 1)[0]
        if not ns.startswith(prefix + "-"):
            continue
        run_id = ns[len(prefix) + 1 :].split("-", 1)[0]
        if _owner_alive(prefix, run_id):
            continue
        _delete_namespace(ns)
        removed.append(ns)
    if RUN_DIR.is_dir():
        for run_file in RUN_DIR.glob(f"{prefix}-*"):
            if not _owner_alive(prefix, run_file.name[len(prefix) + 1 :]):
                run_file.unlink(missing_ok=True)
    for tmp in Path(tempfile.gettempdir()).glob(f"{prefix}-*-lab"):
        if not _owner_alive(prefix, tmp.name[len(prefix) + 1 :].split("-", 1)[0]):
            shutil.rmtree(tmp, ignore_errors=True)
    return removed


_ACTIVE: list[Lab] = []


@atexit.register
def _close_active_labs() -> None:
    for lab in reversed(list(_ACTIVE)):
        lab.close()


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise LabInterrupted(f"signal {signal.Signals(signum).name}")


class UdpAgent:
    """One UDP socket in a namespace, driven from the test (see udptool's `agent`)."""

    def __init__(self, proc: subprocess.Popen[str], node: Node, port: int) -> None:
        self.proc, self.node, self.port = proc, node, port

    def _ask(self, line: str) -> list[str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        out: list[str] = []
        while True:
            reply = self.proc.stdout.readline()
            if not reply:
                raise LabError(f"UDP agent in {self.node.name} died (exit {self.proc.poll()})")
            reply = reply.rstrip("\n")
            if not reply.startswith("from "):
                return [*out, reply]
            out.append(reply)

    def send(self, host: IPv4Address | IPv6Address | str, port: int, data: bytes = b"x") -> bool:
        """Send one datagram; False when the kernel refused it (e.g. an nft drop: EPERM)."""
        return self._ask(f"send {host} {port} {data.hex()}")[-1] == "ok"

    def recv(self, timeout: float, max_count: int | None = None) -> list[Datagram]:
        """Datagrams received within `timeout` seconds (or until `max_count` arrived)."""
        count = "" if max_count is None else f" {max_count}"
        got = []
        for line in self._ask(f"recv {timeout}{count}")[:-1]:
            _, host, port, data = (line.split(" ") + [""])[:4]
            got.append(Datagram(host, int(port), bytes.fromhex(data)))
        return got

    def ask_echo(self, host: IPv4Address | str, port: int,
                 timeout: float = 2.0) -> tuple[str, int] | None:
        """Our address as a lab echo server sees it (the NAT mapping), or None on timeout."""
        if not self.send(host, port):
            return None
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            for dgram in self.recv(left, max_count=1):
                if (dgram.host, dgram.port) == (str(host), port):
                    seen_host, seen_port = dgram.data.decode().split()
                    return seen_host, int(seen_port)
        return None

    def stun(self, host: IPv4Address | str, port: int = rules.STUN_PORT,
             timeout: float = 2.0) -> tuple[str, int] | None:
        """The XOR-MAPPED-ADDRESS a STUN server returns to this socket, or None."""
        reply = self._ask(f"stun {host} {port} {timeout}")[-1].split()
        if reply[0] != "mapped":
            return None
        return reply[1], int(reply[2])


class Lab:
    """A context manager owning every namespace, process and temp dir of one lab run."""

    def __init__(self, prefix: str = DEFAULT_PREFIX, run_id: str | None = None) -> None:
        if not (prefix.isalnum() and prefix.islower()):
            raise ValueError(f"a lab prefix is lowercase letters and digits, got {prefix!r}")
        self.prefix = prefix
        self.run_id = run_id or secrets.token_hex(RUN_ID_HEX // 2)
        self.tmp = Path()
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[str]] = []
        self.tempdirs: list[Path] = []
        self._logs: dict[int, Path] = {}
        self._counter = itertools.count(1)
        self._lan_ids = itertools.count(1)
        self._wan_ids = itertools.count(FIRST_HOST_OFFSET)
        self._internet: Internet | None = None
        self._meshctl_env: dict[str, dict[str, str]] = {}
        self._git_daemons: dict[str, tuple[subprocess.Popen[str], Path, Node, int, bool]] = {}
        self._saved_handlers: dict[int, object] = {}
        self._open = False

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        reason = lab_unavailable()
        if reason:
            raise LabError(reason)
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        start = _process_start_time(os.getpid())
        (RUN_DIR / f"{self.prefix}-{self.run_id}").write_text(f"{os.getpid()} {start}\n")
        self._open = True
        _ACTIVE.append(self)
        if threading.current_thread() is threading.main_thread():
            for sig in _HANDLED_SIGNALS:
                previous = signal.getsignal(sig)
                if sig == signal.SIGINT and previous is not signal.default_int_handler:
                    continue  # Ctrl-C already raises KeyboardInterrupt, or is meant to be ignored
                self._saved_handlers[sig] = previous
                signal.signal(sig, _raise_interrupted)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-{self.run_id}-", suffix="-lab"))
        self.tempdirs.append(self.tmp)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill every process, delete every namespace and temp dir. Idempotent."""
        if not self._open:
            return
        self._open = False
        pending: list[int] = []

        def defer(signum: int, _frame: FrameType | None) -> None:
            pending.append(signum)

        in_main = threading.current_thread() is threading.main_thread()
        if in_main:  # a second Ctrl-C must not cut the cleanup short
            for sig in self._saved_handlers:
                signal.signal(sig, defer)
        try:
            self._cleanup()
        finally:
            if in_main:
                for sig, handler in self._saved_handlers.items():
                    signal.signal(sig, handler)  # type: ignore[arg-type]
            if self in _ACTIVE:
                _ACTIVE.remove(self)
            for sig in pending:
                signal.raise_signal(sig)

    def _cleanup(self) -> None:
        for proc in reversed(self.processes):
            self.kill(proc)
        for ns in reversed(self.namespaces):
            _delete_namespace(ns)
        for tmp in reversed(self.tempdirs):
            shutil.rmtree(tmp, ignore_errors=True)
        (RUN_DIR / f"{self.prefix}-{self.run_id}").unlink(missing_ok=True)

    def kill(self, proc: subprocess.Popen[str]) -> None:
        """Stop one lab process (and its process group): SIGTERM, then SIGKILL."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    # -- names and commands ------------------------------------------------------------------

    def ifname(self, tag: str) -> str:
        """A fresh interface name carrying the run id (at most 15 characters)."""
        clean = "".join(c for c in tag if c.isalnum())[:5]
        name = f"{self.run_id}{clean}{next(self._counter)}"
        if len(name) > 15:
            raise LabError(f"interface name {name} is too long")
        return name

    def tempdir(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _env(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        env.update(extra or {})
        return env

    def run(self, node: Node | str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
            check: bool = True, input: str | None = None,
            timeout: float = CMD_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """Run a command in a namespace and wait. `env` is added to this process's environment."""
        cmd = ["ip", "netns", "exec", _ns(node), *argv]
        log.debug("[%s] %s", _ns(node), shlex.join(argv))
        proc = subprocess.run(cmd, capture_output=True, text=True, input=input,
                              env=self._env(env), timeout=timeout, check=False)
        if check and proc.returncode != 0:
            detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
            raise LabError(f"`{shlex.join(argv)}` in {_ns(node)} exited {proc.returncode}: "
                           + " / ".join(detail))
        return proc

    def popen(self, node: Node | str, argv: Sequence[str], *,
              env: Mapping[str, str] | None = None, stdin: int | IO[str] | None = None,
              stdout: int | IO[str] | None = None,
              stderr: int | IO[str] | None = None) -> subprocess.Popen[str]:
        """Start a tracked process in a namespace (own process group; killed on close).

        stdout and stderr default to a log file in the lab's temp dir (see `log_of`).
        """
        log_file = None
        if stdout is None or stderr is None:
            tag = "".join(c if c.isalnum() else "_" for c in Path(argv[0]).name)
            path = self.tempdir("logs") / f"{_ns(node)}-{tag}-{next(self._counter)}.log"
            log_file = path.open("w")
        log.debug("[%s] & %s", _ns(node), shlex.join(argv))
        proc = subprocess.Popen(
            ["ip", "netns", "exec", _ns(node), *argv], env=self._env(env), text=True,
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            stdout=log_file if stdout is None else stdout,
            stderr=log_file if stderr is None else stderr,
            start_new_session=True)
        self.processes.append(proc)
        if log_file is not None:
            log_file.close()
            self._logs[proc.pid] = path
        return proc

    def log_of(self, proc: subprocess.Popen[str]) -> str:
        """What a process started with `popen` has written to its log file so far."""
        path = self._logs.get(proc.pid)
        return path.read_text(errors="replace") if path and path.exists() else ""

    def _new_ns(self, name: str) -> str:
        ns = f"{self.prefix}-{self.run_id}-{name}"
        if not self._open:
            raise LabError("use the lab inside `with Lab() as lab:`")
        _host_cmd(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        _private_etc(ns)
        _host_cmd(["ip", "-n", ns, "link", "set", "lo", "up"])
        return ns

    def _ip(self, ns: str, *args: str) -> None:
        _host_cmd(["ip", "-n", ns, *args])

    def _sysctl(self, ns: str, *settings: str) -> None:
        self.run(ns, ["sysctl", "-qw", *settings])

    def _nft(self, node: Node | str, script: str) -> None:
        self.run(node, ["nft", "-f", "-"], input=script)

    # -- building blocks ---------------------------------------------------------------------

    def host(self, name: str) -> Node:
        """A new machine: a namespace with loopback up."""
        return Node(name=name, ns=self._new_ns(name))

    def _veth(self, node: Node, bridge_ns: str, bridge: str, tag: str) -> str:
        inside, port = self.ifname(tag), self.ifname("p")
        self._ip(node.ns, "link", "add", inside, "type", "veth", "peer", "name", port,
                 "netns", bridge_ns)
        self._ip(bridge_ns, "link", "set", port, "master", bridge, "up")
        return inside

    def _bridge(self, ns: str, tag: str) -> str:
        bridge = self.ifname(tag)
        # nf_call_iptables 0: traffic inside a LAN must not pass the router's nft hooks.
        self._ip(ns, "link", "add", bridge, "type", "bridge", "nf_call_iptables", "0")
        # A bridge without an address of its own takes the lowest of its ports' and changes it when
        # a lower one joins: hosts that resolved the gateway before then send to the old address
        # until their neighbour entry expires (a relay's first fetch hung in SYN-SENT for 30 s).
        self._ip(ns, "link", "set", bridge, "address", bridge_mac(self.run_id, next(self._counter)))
        self._ip(ns, "link", "set", bridge, "up")
        return bridge

    def _address(self, node: Node, link: Link) -> None:
        if link.ipv4 is not None:
            self._ip(node.ns, "addr", "add", str(link.ipv4), "dev", link.ifname)
        if link.ipv6 is not None:  # nodad: usable at once, no 1-2 s of duplicate detection
            self._ip(node.ns, "addr", "add", str(link.ipv6), "dev", link.ifname, "nodad")
        self._ip(node.ns, "link", "set", link.ifname, "up")
        node.links.append(link)

    def lan(self, name: str, hosts: Sequence[Node], *, subnet: str | None = None,
            router: Node | None = None) -> Lan:
        """A bridged segment joining `hosts` (IPv4 from `subnet` and a ULA /64).

        With a router the bridge lives in the router's namespace, the router takes the first
        address and becomes every host's IPv4 default gateway; hosts get .10, .11, ...
        """
        k = next(self._lan_ids)
        v4 = IPv4Network(subnet) if subnet else IPv4Network(f"{LAN_V4_BASE}.{k}.0/24")
        v6 = ipaddress.IPv6Network(f"{LAN_V6_BASE}:{k:x}::/64")
        if len(hosts) + FIRST_HOST_OFFSET >= v4.num_addresses:
            raise LabError(f"subnet {v4} is too small for {len(hosts)} hosts")
        bridge_ns = router.ns if router is not None else self._new_ns(f"sw-{name}")
        bridge = self._bridge(bridge_ns, "br")
        gateway = None
        if router is not None:
            gateway = v4[1]
            self._address(router, Link(name, bridge, IPv4Interface(f"{gateway}/{v4.prefixlen}"),
                                       IPv6Interface(f"{v6[1]}/64")))
        for i, host in enumerate(hosts):
            inside = self._veth(host, bridge_ns, bridge, name)
            self._address(host, Link(
                name, inside,
                IPv4Interface(f"{v4[FIRST_HOST_OFFSET + i]}/{v4.prefixlen}"),
                IPv6Interface(f"{v6[FIRST_HOST_OFFSET + i]}/64")))
            if gateway is not None:
                self._ip(host.ns, "route", "replace", "default", "via", str(gateway))
        return Lan(name, bridge_ns, bridge, v4, v6, gateway)

    def internet(self) -> Internet:
        """The "internet" router (created once per lab): WAN bridge 203.0.113.1/24 and
        2001:db8:113::1/64, service addresses 198.51.100.1 and .2 on its loopback.

        Reachable only inside the lab: nothing connects it to the machine's own network.
        """
        if self._internet is not None:
            return self._internet
        node = Internet(name="internet", ns=self._new_ns("internet"))
        bridge = self._bridge(node.ns, "wan")
        self._address(node, Link("wan", bridge, IPv4Interface(f"{INTERNET_V4[1]}/24"),
                                 IPv6Interface(f"{INTERNET_V6[1]}/64")))
        for v4, v6 in zip(SERVICE_V4, SERVICE_V6, strict=True):
            self._ip(node.ns, "addr", "add", f"{v4}/32", "dev", "lo")
            self._ip(node.ns, "addr", "add", f"{v6}/128", "dev", "lo", "nodad")
        # The services answer from the loopback addresses above, so list them first.
        node.links.insert(0, Link("services", "lo", IPv4Interface(f"{SERVICE_V4[0]}/32"),
                                  IPv6Interface(f"{SERVICE_V6[0]}/128")))
        self._sysctl(node.ns, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        self._internet = node
        return node

    def attach_to_internet(self, node: Node) -> IPv4Address:
        """Plug `node` into the internet's WAN bridge with the next public address."""
        inet = self.internet()
        k = next(self._wan_ids)
        inside = self._veth(node, inet.ns, inet.link("wan").ifname, "wan")
        self._address(node, Link("wan", inside, IPv4Interface(f"{INTERNET_V4[k]}/24"),
                                 IPv6Interface(f"{INTERNET_V6[k]}/64")))
        self._ip(node.ns, "route", "replace", "default", "via", str(INTERNET_V4[1]))
        self._ip(node.ns, "-6", "route", "replace", "default", "via", str(INTERNET_V6[1]))
        return INTERNET_V4[k]

    def public_host(self, name: str) -> Node:
        """A host directly on the internet, with a public address and no NAT."""
        node = self.host(name)
        self.attach_to_internet(node)
        return node

    def nat_router(self, name: str, profile: str, inside_hosts: Sequence[Node], *,
                   subnet: str | None = None,
                   udp_timeout_s: int = rules.CONE_TIMEOUT_S) -> NatRouter:
        """A NAT router of `profile` (rules.PROFILES) between the internet and a new LAN
        holding `inside_hosts`. IPv4 only is translated; the LAN's ULA stays inside.

        Mappings expire after `udp_timeout_s` idle, also once traffic went both ways (Linux
        keeps such "assured" UDP entries 120 s by default; DESIGN.md plans for 30 s).
        """
        if profile not in rules.PROFILES:
            raise LabError(f"unknown NAT profile {profile!r}",
                           hint=f"choose one of {', '.join(rules.PROFILES)}")
        router = NatRouter(name=name, ns=self._new_ns(name), profile=profile)
        self.attach_to_internet(router)
        self.lan(name, inside_hosts, subnet=subnet, router=router)
        self._sysctl(router.ns, "net.ipv4.ip_forward=1",
                     f"net.netfilter.nf_conntrack_udp_timeout={udp_timeout_s}",
                     f"net.netfilter.nf_conntrack_udp_timeout_stream={udp_timeout_s}")
        self._nft(router, rules.nat_ruleset(profile, router.wan_if, router.lan_if))
        return router

    # -- impairments -------------------------------------------------------------------------

    def flush_conntrack(self, router: Node) -> None:
        """Forget every NAT mapping of a router.

        A port-preserving profile maps the same inside port to the same public port again
        afterwards; use `rebind` for a mapping that really changes.
        """
        if shutil.which("conntrack") is None:
            raise LabError("flush_conntrack needs the `conntrack` tool",
                           hint="apt-get install conntrack")
        self.run(router, ["conntrack", "-F"])

    def rebind(self, router: NatRouter) -> IPv4Address:
        """NAT rebinding: the router gets a new public address and forgets its mappings, so
        every inside socket appears from a new IP:port. Returns the new public address."""
        k = next(self._wan_ids)
        old = router.link("wan")
        new = Link("wan", old.ifname, IPv4Interface(f"{INTERNET_V4[k]}/24"), old.ipv6)
        self._ip(router.ns, "-4", "addr", "flush", "dev", old.ifname)
        self._ip(router.ns, "addr", "add", str(new.ipv4), "dev", old.ifname)
        self._ip(router.ns, "route", "replace", "default", "via", str(INTERNET_V4[1]))
        router.links[router.links.index(old)] = new
        self.flush_conntrack(router)
        return INTERNET_V4[k]

    def netem(self, node: Node, iface: str, loss_pct: int) -> None:
        """Drop `loss_pct` % of the packets leaving `iface` of `node`; 0 removes the loss.

        Done with nft's numgen (see rules.loss_ruleset): sch_netem is not in every kernel.
        One lossy interface per node at a time.
        """
        self.run(node, ["nft", "delete", "table", "inet", rules.LOSS_TABLE], check=False)
        if loss_pct:
            self._nft(node, rules.loss_ruleset(iface, loss_pct))

    def block_udp(self, node: Node, port: int | None = None) -> None:
        """Drop all UDP (or UDP from/to `port`) in, out of and through `node`."""
        self.unblock_udp(node)
        self._nft(node, rules.block_udp_ruleset(port))

    def unblock_udp(self, node: Node) -> None:
        self.run(node, ["nft", "delete", "table", "inet", rules.BLOCK_TABLE], check=False)

    # -- services ----------------------------------------------------------------------------

    def bare_repo(self, name: str = "coord") -> Path:
        """An empty bare repository (branch main) in the lab's temp dir, to serve with git."""
        path = self.tmp / f"{name}.git"
        _host_cmd(["git", "init", "-q", "--bare", "-b", "main", str(path)])
        return path

    def git_daemon(self, repo_dir: Path, node: Node | None = None, *,
                   port: int = GIT_PORT, verbose: bool = False) -> str:
        """Serve `repo_dir` with `git daemon` (clone, fetch and push) and return its git:// URL.

        Serve a bare repository: git refuses a push to the branch checked out in a work tree.
        The daemon runs on `node` (default: the internet) and listens on its first address.
        `verbose`: it logs each connection and request (`git_requests` counts them).
        """
        node = node or self.internet()
        repo_dir = Path(repo_dir).resolve()
        address = node.ipv4
        # Repositories made by another user are "dubious ownership" to git; the lab trusts them.
        env = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory",
               "GIT_CONFIG_VALUE_0": "*"}
        proc = self.popen(node, [
            "git", "daemon", "--reuseaddr", "--export-all", "--enable=receive-pack",
            "--informative-errors", *(["--verbose"] if verbose else []), f"--base-path={repo_dir.parent}",
            f"--listen={address}", f"--port={port}", str(repo_dir)], env=env)
        url = f"git://{address}:{port}/{repo_dir.name}"

        def answers() -> bool:
            if proc.poll() is not None:
                raise LabError(f"git daemon exited {proc.returncode}: {self.log_of(proc)}")
            return self.run(node, ["git", "ls-remote", url], check=False).returncode == 0

        poll(answers, f"git daemon at {url}")
        self._git_daemons[url] = (proc, repo_dir, node, port, verbose)
        return url

    def git_requests(self, url: str) -> list[tuple[str, str]]:
        """(client address, "upload-pack" = a fetch | "receive-pack" = a push) of each request
        the daemon serving `url` has logged so far (started with `verbose`)."""
        proc = self._git_daemons[url][0]
        clients: dict[str, str] = {}
        out = []
        for line in self.log_of(proc).splitlines():
            pid, _, text = line.partition("] ")
            if text.startswith("Connection from "):
                clients[pid] = text.removeprefix("Connection from ").rsplit(":", 1)[0]
            elif text.startswith("Request ") and pid in clients:
                out.append((clients[pid], text.split()[1]))
        return out

    @contextlib.contextmanager
    def git_daemon_stopped(self, url: str) -> Iterator[None]:
        """A git host outage: the daemon serving `url` is stopped inside the block and serves
        the same repository at the same URL again afterwards."""
        proc, repo_dir, node, port, verbose = self._git_daemons[url]
        self.kill(proc)
        try:
            yield
        finally:
            self.git_daemon(repo_dir, node, port=port, verbose=verbose)

    def stun_server(self, node: Node | None = None, *, port: int = rules.STUN_PORT) -> str:
        """Start coturn as a STUN-only server on `node` (default: the internet, on both service
        addresses, so OTHER-ADDRESS points at the second) and return "IP:PORT"."""
        node = node or self.internet()
        ips = ([str(ip) for ip in node.service_ips] if isinstance(node, Internet)
               else [str(node.ipv4)])
        run_dir = self.tempdir(f"coturn-{node.name}-{port}")
        config = run_dir / "turnserver.conf"
        config.write_text(rules.coturn_config(ips, str(run_dir), port))
        proc = self.popen(node, ["turnserver", "-c", str(config)])

        def answers() -> bool:
            if proc.poll() is not None:
                log_text = (run_dir / "turnserver.log").read_text(errors="replace")[-2000:]
                raise LabError(f"turnserver exited {proc.returncode}: {log_text}")
            return all(self.run(node, udptool_argv("stun", ip, str(port), "0.5"),
                                check=False).returncode == 0 for ip in ips)

        poll(answers, f"coturn on {ips[0]}:{port}")
        return f"{ips[0]}:{port}"

    def udp_echo(self, node: Node, port: int, bind: str = "0.0.0.0") -> subprocess.Popen[str]:
        """A UDP echo that answers each datagram with the sender's address ("IP PORT")."""
        proc = self.popen(node, udptool_argv("echo", str(port), bind), stdout=subprocess.PIPE)
        self._await_ready(proc, f"UDP echo in {node.name}")
        return proc

    def udp_agent(self, node: Node, port: int, bind: str = "0.0.0.0") -> UdpAgent:
        """A UDP socket bound to `port` in `node` that the caller drives (send/recv/stun)."""
        proc = self.popen(node, udptool_argv("agent", str(port), bind),
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._await_ready(proc, f"UDP agent in {node.name}")
        return UdpAgent(proc, node, port)

    def _await_ready(self, proc: subprocess.Popen[str], what: str) -> None:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the tool prints "ready" or dies (EOF)
        if line.strip() != "ready":
            proc.wait(KILL_GRACE_S)
            raise LabError(f"{what} did not start: {self.log_of(proc).strip()}")

    # -- meshctl -----------------------------------------------------------------------------

    def meshctl_env(self, node: Node) -> dict[str, str]:
        """MESHCTL_STATE_DIR and MESHCTL_INTERFACE for `node`: own state dir, unique interface."""
        env = self._meshctl_env.get(node.ns)
        if env is None:
            env = {"MESHCTL_STATE_DIR": str(self.tempdir(f"state-{node.name}")),
                   "MESHCTL_INTERFACE": self.ifname("mesh")}
            self._meshctl_env[node.ns] = env
        return dict(env)

    def meshctl(self, node: Node, args: Sequence[str], *, env: Mapping[str, str] | None = None,
                check: bool = True,
                timeout: float = CMD_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """Run `meshctl ARGS` on `node` with its own state dir and interface."""
        return self.run(node, [*meshctl_argv(), *args],
                        env={**self.meshctl_env(node), **(env or {})}, check=check,
                        timeout=timeout)

    def meshctl_popen(self, node: Node, args: Sequence[str], *,
                      env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        """Start a long-running meshctl (e.g. `up --foreground`) on `node`, tracked."""
        return self.popen(node, [*meshctl_argv(), *args],
                          env={**self.meshctl_env(node), **(env or {})})


@contextlib.contextmanager
def open_lab(prefix: str = DEFAULT_PREFIX) -> Iterator[Lab]:
    """`with open_lab() as lab:`, after removing what crashed runs left behind."""
    cleanup_stale(prefix)
    with Lab(prefix) as lab:
        yield lab
