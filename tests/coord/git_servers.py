"""Real git servers on loopback for integration tests: `git daemon` and `sshd`."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not become ready within {timeout} s")


def bare_copy(src: Path, dest: Path) -> Path:
    subprocess.run(["git", "clone", "-q", "--bare", str(src), str(dest)], check=True)
    return dest


@contextmanager
def git_daemon(base: Path) -> Iterator[str]:
    """Serve every repository under `base`; yields the git:// URL prefix."""
    if shutil.which("git") is None:
        raise RuntimeError("git is not installed")
    port = free_port()
    proc = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", f"--base-path={base}", "--export-all", "--enable=receive-pack",
         f"--port={port}", "--listen=127.0.0.1", str(base)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        def ready() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        _wait(ready, "git daemon")
        yield f"git://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=5)


@contextmanager
def ssh_server(tmp: Path) -> Iterator[tuple[str, Path]]:
    """sshd on a spare loopback port accepting one fresh client key for root.

    Yields (ssh://root@127.0.0.1:PORT, client private key path).
    """
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd):
        raise RuntimeError("sshd is not installed (Debian package openssh-server)")
    tmp.mkdir(parents=True, exist_ok=True)
    host_key = tmp / "host_ed25519"
    client_key = tmp / "client_ed25519"
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    auth = tmp / "authorized_keys"
    auth.write_text((client_key.with_suffix(".pub")).read_text())
    os.chmod(auth, 0o600)
    port = free_port()
    config = tmp / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nAuthorizedKeysFile {auth}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"PidFile {tmp / 'sshd.pid'}\nUsePAM no\nStrictModes no\nLogLevel ERROR\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        def ready() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        _wait(ready, "sshd")
        yield f"ssh://root@127.0.0.1:{port}", client_key
    finally:
        proc.terminate()
        proc.wait(timeout=5)
