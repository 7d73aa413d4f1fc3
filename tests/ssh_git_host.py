"""A real SSH git host and real people for tests: throwaway local users, sshd with key auth
only in front of git-shell, ssh-agents, and sudo.

Local users are the machine's own (/etc/passwd): each gets a unique name (`mct` + role + hex),
its home in the test's temp dir, and is removed again, with its sudoers drop-in, when its block
ends. Processes a test starts as such a user (ssh-agent) are stopped by the test, by pid.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SUDOERS_DIR = Path("/etc/sudoers.d")
TOOLS = {"sshd": "openssh-server", "ssh-keygen": "openssh-client", "ssh-agent": "openssh-client",
         "ssh-add": "openssh-client", "git-shell": "git", "sudo": "sudo", "useradd": "passwd", "runuser": "util-linux"}


def missing_tool() -> str | None:
    """Why these tests cannot run here (root and the tools above), or None."""
    if os.geteuid() != 0:
        return "needs root (creates local users, runs sudo and sshd)"
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin:/sbin") is None:
            return f"needs `{tool}` (Debian package {package})"
    return None


def _tool(name: str) -> str:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin") or name


@dataclass(frozen=True, slots=True)
class LocalUser:
    name: str
    uid: int
    home: Path

    def run(self, argv: list[str], env: dict[str, str] | None = None, *, check: bool = True, timeout: float = 120,
            netns: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """`argv` as this user (runuser: no password, a clean login-like environment), in `netns`."""
        base = {"HOME": str(self.home), "USER": self.name, "LOGNAME": self.name, "PATH": "/usr/bin:/bin",
                "LANG": "C.UTF-8", **(env or {})}
        cmd = [_tool("runuser"), "-u", self.name, "--", "env", "-i", *(f"{k}={v}" for k, v in base.items()), *argv]
        if netns is not None:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd or "/")
        if check and proc.returncode != 0:
            raise RuntimeError(f"{self.name}: {' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def ssh_key(self, name: str = "id_ed25519", passphrase: str = "") -> Path:
        """A new key pair in ~/.ssh, made by the user."""
        ssh_dir = self.home / ".ssh"
        self.run(["mkdir", "-p", "-m", "700", str(ssh_dir)])
        key = ssh_dir / name
        self.run([_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", passphrase, "-C", f"{self.name}-{name}",
                  "-f", str(key)])
        return key


@contextmanager
def throwaway_user(role: str, *, shell: str = "/bin/bash", sudo: bool = False) -> Iterator[LocalUser]:
    """A local user that exists for the block only (with `sudo`: allowed to run anything as root).

    Its home is in a fresh directory of /tmp that everyone may traverse (a test's own temp dir
    is root's alone, so the user could not reach it)."""
    name = f"mct{role[:4]}{secrets.token_hex(3)}"
    base = Path(tempfile.mkdtemp(prefix="meshctl-users-"))
    os.chmod(base, 0o755)
    home = base / name
    subprocess.run([_tool("useradd"), "--create-home", "--home-dir", str(home), "--shell", shell,
                    "--user-group", name], check=True, capture_output=True)
    sudoers = SUDOERS_DIR / f"meshctl-test-{name}"
    try:
        # A locked account (useradd's default) may not log in over ssh; '*' is "no password", unlocked.
        subprocess.run([_tool("usermod"), "-p", "*", name], check=True, capture_output=True)
        if sudo:
            sudoers.write_text(f"{name} ALL=(root) NOPASSWD: ALL\n")
            sudoers.chmod(0o440)
            subprocess.run([_tool("visudo"), "-c", "-q", "-f", str(sudoers)], check=True, capture_output=True)
        yield LocalUser(name, pwd.getpwnam(name).pw_uid, home)
    finally:
        sudoers.unlink(missing_ok=True)
        subprocess.run([_tool("userdel"), "--remove", name], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def ssh_agent(user: LocalUser, *keys: tuple[Path, str]) -> Iterator[str]:
    """An ssh-agent run by `user` holding `keys` ((path, passphrase) pairs); yields its socket."""
    out = user.run([_tool("ssh-agent"), "-s"]).stdout
    sock = re.search(r"SSH_AUTH_SOCK=([^;]+);", out)
    pid = re.search(r"SSH_AGENT_PID=(\d+);", out)
    assert sock and pid, out
    try:
        for key, passphrase in keys:
            askpass = user.home / ".askpass"
            askpass.write_text(f"#!/bin/sh\necho '{passphrase}'\n")
            askpass.chmod(0o755)
            user.run([_tool("ssh-add"), str(key)], env={"SSH_AUTH_SOCK": sock[1], "SSH_ASKPASS": str(askpass),
                                                        "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"})
            askpass.unlink()
        yield sock[1]
    finally:
        try:
            os.kill(int(pid[1]), 15)
        except ProcessLookupError:
            pass


@dataclass(frozen=True, slots=True)
class GitShellHost:
    """A git account whose login shell is git-shell, serving bare repositories from its home."""

    account: LocalUser

    def authorize(self, public_key: Path) -> None:
        auth = self.account.home / ".ssh" / "authorized_keys"
        auth.parent.mkdir(mode=0o700, exist_ok=True)
        with auth.open("a") as f:
            f.write(public_key.read_text())
        shutil.chown(auth.parent, self.account.name, self.account.name)
        shutil.chown(auth, self.account.name, self.account.name)
        auth.chmod(0o600)

    def bare_repo(self, relative: str) -> Path:
        """An empty bare repository (branch main) at ~git/RELATIVE."""
        path = self.account.home / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True)
        subprocess.run(["chown", "-R", f"{self.account.name}:{self.account.name}", str(self.account.home)],
                       check=True)
        return path

    def scp_url(self, host: str, relative: str) -> str:
        return f"{self.account.name}@{host}:{relative}"

    def ssh_url(self, host: str, port: int, relative: str) -> str:
        return f"ssh://{self.account.name}@{host}:{port}/~/{relative}"


def sshd_config(tmp: Path, port: int, listen: str | None = None) -> Path:
    """sshd configuration for a git host: public keys only, its own host key; returns the file."""
    tmp.mkdir(parents=True, exist_ok=True)
    host_key = tmp / "ssh_host_ed25519_key"
    if not host_key.exists():
        subprocess.run([_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    config = tmp / "sshd_config"
    config.write_text(
        f"Port {port}\n" + (f"ListenAddress {listen}\n" if listen else "")
        + f"HostKey {host_key}\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin no\nUsePAM no\n"
        f"PidFile {tmp / 'sshd.pid'}\nLogLevel ERROR\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    return config


def sshd_argv(config: Path) -> list[str]:
    return [_tool("sshd"), "-D", "-e", "-f", str(config)]
