"""The errors a newcomer meets: one clear line, a hint, the right exit code.

Each case is made for real: a user without root (setpriv), a PATH without wireguard-go, a
foreign interface and a bound UDP port in a network namespace, a repository that is gone, a
join nobody approved yet. Only the clock is simulated: `time.time` is moved in-process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging_support import prepare_node, run

from lab import Lab, Node, lab_unavailable, meshctl_argv
from meshctl.cli import preflight

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def others_can_run(path: Path) -> bool:
    """Whether uid 65534 can reach and execute `path` (every parent searchable by others)."""
    path = path.resolve()
    return bool(path.stat().st_mode & 0o001) and all(d.stat().st_mode & 0o001 for d in path.parents)


@pytest.fixture(scope="module")
def nobody_meshctl() -> Iterator[list[str]]:
    """meshctl's argv for a command run as nobody. A checkout in a private directory (a 0700
    mktemp dir, say) keeps nobody from even starting the binary, which would fail these tests
    for a reason that is not meshctl's: then a copy in a directory open to all is run."""
    argv = meshctl_argv()
    binary = Path(argv[0])
    if len(argv) > 1 or others_can_run(binary):
        yield argv
        return
    shared = Path(tempfile.mkdtemp(prefix="meshctl-nobody-"))
    try:
        shared.chmod(0o755)
        copy = shared / "meshctl"
        shutil.copy2(binary, copy)
        copy.chmod(0o755)
        yield [str(copy)]
    finally:
        shutil.rmtree(shared)
DAY = 86400
LIFETIME = 30 * DAY


def meshctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run([*meshctl_argv(), *args], env={"PYTHONPATH": str(Path(__file__).parents[2]), **(env or {})})


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkout, state dir) of an approved member "dev1" with an accepted state."""
    return prepare_node(meshctl_argv(), tmp_path_factory.mktemp("node"))


@pytest.fixture
def netns() -> Iterator[tuple[Lab, Node]]:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    with Lab("nc") as lab:
        yield lab, lab.host("h")


def node_env(state: Path, ifname: str) -> dict[str, str]:
    return {"MESHCTL_STATE_DIR": str(state), "MESHCTL_INTERFACE": ifname, "MESHCTL_WG_BACKEND": "userspace"}


def link_exists(lab: Lab, node: Node, ifname: str) -> bool:
    return lab.run(node, ["ip", "link", "show", ifname], check=False).returncode == 0


# --- not root ----------------------------------------------------------------------------

@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv (util-linux) to run as nobody")
@pytest.mark.parametrize(("args", "hint"), [
    (["sync"], "hint: run it with sudo, or `meshctl sync --dry-run` to see what it would do"),
    (["up"], "hint: run it with sudo (or as the systemd unit meshctl.service)"),
    (["down"], "hint: run it with sudo"),
])
def test_not_root(tmp_path: Path, args: list[str], hint: str, nobody_meshctl: list[str]) -> None:
    proc = run([*NOBODY, *nobody_meshctl, *args], env={"MESHCTL_STATE_DIR": str(tmp_path / "state")})
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"meshctl: `meshctl {args[0]}` must run as root: it configures WireGuard, addresses, routes and nftables",
        hint,
    ]
    assert not (tmp_path / "state").exists()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv (util-linux) to run as nobody")
def test_state_dir_only_root_can_read(node: tuple[Path, Path], nobody_meshctl: list[str]) -> None:
    _, state = node
    assert state.stat().st_mode & 0o077 == 0
    proc = run([*NOBODY, *nobody_meshctl, "status"], env={"MESHCTL_STATE_DIR": str(state)})
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"meshctl: permission denied: {state}/netmap.json",
                                        "hint: run it as root (sudo meshctl ...), or pass --state-dir"]


def test_root_check_reads_cap_net_admin() -> None:
    status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t{}\n"
    assert preflight._has_net_admin(status.format("0000000000001000"))  # bit 12
    assert preflight._has_net_admin(status.format("000001ffffffffff"))
    assert not preflight._has_net_admin(status.format("0000000000002000"))
    assert not preflight._has_net_admin("Name:\tx\n")


# --- no WireGuard --------------------------------------------------------------------------

@pytest.mark.netns
@pytest.mark.parametrize("backend", ["userspace", "auto"])
def test_no_wireguard(node: tuple[Path, Path], netns: tuple[Lab, Node], backend: str) -> None:
    """Neither the kernel module (not on this kernel) nor wireguard-go (not on PATH)."""
    lab, host = netns
    if shutil.which("wireguard-go", path="/usr/sbin"):
        pytest.skip("wireguard-go is in /usr/sbin here, so a PATH without it cannot be made")
    _, state = node
    ifname = lab.ifname("wg")
    env = {**node_env(state, ifname), "MESHCTL_WG_BACKEND": backend, "PATH": "/usr/sbin"}
    proc = lab.run(host, [*meshctl_argv(), "sync"], env=env, check=False)
    if backend == "auto" and proc.returncode == 0:
        pytest.skip("this kernel has the WireGuard module, so auto needs no wireguard-go")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.splitlines()[-2:] == [
        "meshctl: wireguard-go not found: cannot start userspace WireGuard",
        "hint: install wireguard-go (Debian/Ubuntu: apt-get install wireguard-go) "
        "or load the kernel module and use --wg-backend kernel",
    ]
    assert not link_exists(lab, host, ifname)


# --- interface name taken -------------------------------------------------------------------

@pytest.mark.netns
@pytest.mark.parametrize(("make", "what"), [
    (["type", "bridge"], "a bridge interface"),
    (None, "a tun device that no wireguard-go serves (another VPN?)"),
])
def test_interface_taken(node: tuple[Path, Path], netns: tuple[Lab, Node],
                         make: list[str] | None, what: str) -> None:
    lab, host = netns
    _, state = node
    ifname = lab.ifname("if")
    if make is None:
        lab.run(host, ["ip", "tuntap", "add", ifname, "mode", "tun"])
    else:
        lab.run(host, ["ip", "link", "add", ifname, *make])
    env = node_env(state, ifname)
    for command in ("sync", "up", "down"):
        proc = lab.run(host, [*meshctl_argv(), command], env=env, check=False)
        assert proc.returncode == 1, f"{command}: {proc.stdout}{proc.stderr}"
        assert proc.stderr.splitlines() == [
            f"meshctl: interface {ifname} already exists and is not meshctl's: it is {what}",
            f"hint: choose another name with --interface or MESHCTL_INTERFACE, or remove it: ip link del {ifname}",
        ]
        assert link_exists(lab, host, ifname), f"{command} removed somebody else's interface"


# --- WireGuard port taken -------------------------------------------------------------------

@pytest.mark.netns
def test_listen_port_taken(node: tuple[Path, Path], netns: tuple[Lab, Node]) -> None:
    lab, host = netns
    _, state = node
    port = 41641
    holder = lab.popen(host, [sys.executable, "-c",
                              "import socket,sys,time; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); "
                              f"s.bind(('0.0.0.0',{port})); print('ready',flush=True); time.sleep(60)"],
                       stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
    ifname = lab.ifname("port")
    env = {**node_env(state, ifname), "MESHCTL_LISTEN_PORT": str(port)}
    proc = lab.run(host, [*meshctl_argv(), "sync"], env=env, check=False)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"meshctl: UDP port {port} (WireGuard's listen port) is in use by another program",
        f"hint: see who has it: ss -ulpn 'sport = :{port}'; or pick another port with "
        "--listen-port or MESHCTL_LISTEN_PORT",
    ]
    assert not link_exists(lab, host, ifname)


def test_port_probe_sees_a_bound_port() -> None:
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 0))
    try:
        assert preflight._udp_port_taken(socket.AF_INET, sock.getsockname()[1])
    finally:
        sock.close()


# --- repository unreachable, join not approved ----------------------------------------------

def test_repository_unreachable_keeps_the_last_state(node: tuple[Path, Path]) -> None:
    checkout, state = node
    bare = checkout.with_name("coord.git")
    away = bare.with_name("coord.git.away")
    bare.rename(away)
    try:
        proc = meshctl("sync", "--dry-run", env={"MESHCTL_STATE_DIR": str(state)})
    finally:
        away.rename(bare)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[-2].startswith(f"meshctl: {bare}: repository unreachable: ")
    assert lines[-1] == "hint: nothing was changed; the last good configuration is kept"
    assert "self dev1:" in proc.stdout  # the last accepted state is still shown


def test_join_to_an_unreachable_host(tmp_path: Path) -> None:
    url = "git://127.0.0.1:9/acme.git"  # discard port: nothing listens
    proc = meshctl("join", url, "--name", "dev9", "--root", "sha256:" + "0" * 64,
                   env={"MESHCTL_STATE_DIR": str(tmp_path / "state")})
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0].startswith(f"meshctl: {url}: repository unreachable: ")
    # Not `git ls-remote URL`: run as the user, it proves nothing about root's credentials (issue 21).
    assert proc.stderr.splitlines()[1] == "hint: check the URL and that this machine reaches the git host"


def test_join_not_yet_approved(node: tuple[Path, Path], tmp_path: Path) -> None:
    checkout, _ = node
    root = meshctl("admin", "invite", "--repo", str(checkout)).stdout.split()[-1]
    env = {"MESHCTL_STATE_DIR": str(tmp_path / "state")}
    joined = meshctl("join", str(checkout.with_name("coord.git")), "--name", "dev2", "--root", root, env=env)
    assert joined.returncode == 0, joined.stderr
    proc = meshctl("sync", "--dry-run", env=env)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "meshctl: dev2 is not a member of mesh acme yet (serial 2)",
        "hint: the join request on branch join/dev2 must be approved and merged by an admin",
    ]


# --- the clock ------------------------------------------------------------------------------

def test_clock_warning_table() -> None:
    now = 1_800_000_000
    expires = now + 20 * DAY  # signed 10 days ago
    assert preflight.clock_warning(now, expires, now - 60, LIFETIME) is None
    assert preflight.clock_warning(now, None, None, LIFETIME) is None
    behind = preflight.clock_warning(now - 5 * DAY, expires, now, LIFETIME)
    assert behind is not None and "already fetched the repository at" in behind
    assert behind.endswith(preflight.CLOCK_HINT)
    before_signing = preflight.clock_warning(now - 12 * DAY, expires, None, LIFETIME)
    assert before_signing is not None and "before the accepted state was signed" in before_signing
    ahead = preflight.clock_warning(now + 25 * DAY, expires, now, LIFETIME)
    assert ahead is not None and ahead.startswith("the accepted state expired at ")
    assert "check the system clock" in ahead and "meshctl admin renew" in ahead


def run_in_process(args: list[str], state: Path, now: float,
                   monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """The CLI in this process with the system clock at `now`."""
    from typer.testing import CliRunner

    from meshctl.cli.app import build_app

    monkeypatch.setattr(time, "time", lambda: now)
    result = CliRunner().invoke(build_app(), args, env={"MESHCTL_STATE_DIR": str(state)})
    return result.exit_code, result.stdout, result.stderr


def test_clock_far_ahead_says_check_the_clock(node: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _, state = node
    code, _, err = run_in_process(["sync", "--dry-run"], state, time.time() + 60 * DAY, monkeypatch)
    assert code == 3
    lines = err.splitlines()
    assert lines[0].startswith("meshctl: state.json: expired at ")
    assert lines[1].startswith("hint: the accepted state expired at ")
    assert "check the system clock" in lines[1] and "meshctl admin renew" in lines[1]


def test_clock_far_behind_warns(node: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _, state = node
    code, out, err = run_in_process(["sync", "--dry-run"], state, time.time() - 10 * DAY, monkeypatch)
    assert code == 0, err
    assert "self dev1:" in out
    assert err.startswith("warning: the system clock reads ")
    assert "but this node already fetched the repository at" in err and "timedatectl" in err
