"""Finding 1 of issue 21: `sudo meshctl join git@host:...` used neither the user's keys nor their
agent (sudo resets HOME and drops SSH_AUTH_SOCK). Real people here: throwaway local users, real
sudo, a real sshd with key auth only in front of git-shell, real ssh-agents."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from git_servers import bare_copy, free_port
from ssh_git_host import GitShellHost, LocalUser, missing_tool, ssh_agent, sshd_argv, sshd_config, throwaway_user
from test_cli_flow import admin_env, init_mesh, meshctl

from lab import meshctl_argv

__all__ = ["admin_env"]

pytestmark = pytest.mark.git_server


@dataclass
class SshHost:
    host: GitShellHost
    url: str
    fp: str
    coord: Path
    tmp: Path

    def state(self, name: str) -> Path:
        path = self.tmp / f"state-{name}"
        return path

    def sudo_meshctl(self, user: LocalUser, state: str, *args: str,
                     env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """What the person types: `sudo meshctl ARGS` (the state dir given as a global option)."""
        return user.run(["sudo", *meshctl_argv(), "--state-dir", str(self.state(state)), *args], env=env,
                        check=False)

    def cron_meshctl(self, state: str, *args: str) -> subprocess.CompletedProcess[str]:
        """As cron runs it: root, cron's own environment, nobody's agent."""
        env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/nonexistent",
               "SHELL=/bin/sh", "LOGNAME=root"]
        return subprocess.run(["env", "-i", *env, *meshctl_argv(), "--state-dir", str(self.state(state)), *args],
                              capture_output=True, text=True, timeout=120, check=False, cwd="/")

    def approve(self, name: str, env: dict[str, str]) -> None:
        """The admin (root here, with a key of its own): `meshctl admin approve NAME` over ssh."""
        r = meshctl("admin", "approve", name, env={**env, "MESHCTL_SSH_KEY": str(self.tmp / "admin_ed25519")},
                    cwd=self.coord)
        assert r.returncode == 0, r.stderr
        assert "pushed main (serial " in r.stdout, r.stdout


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError("sshd did not start")


@pytest.fixture
def ssh_host(tmp_path: Path, admin_env: dict[str, str]) -> Iterator[SshHost]:
    reason = missing_tool()
    if reason:
        pytest.skip(reason)
    coord, fp = init_mesh(tmp_path, admin_env)
    with throwaway_user("git", shell="/usr/bin/git-shell") as account:
        host = GitShellHost(account)
        bare = host.bare_repo("acme/acme-mesh.git")
        subprocess.run(["rm", "-rf", str(bare)], check=True)
        bare_copy(coord, bare)
        subprocess.run(["chown", "-R", f"{account.name}:{account.name}", str(bare)], check=True)
        admin_key = tmp_path / "admin_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(admin_key)], check=True)
        host.authorize(admin_key.with_suffix(".pub"))
        port = free_port()
        url = host.ssh_url("127.0.0.1", port, "acme/acme-mesh.git")
        subprocess.run(["git", "-C", str(coord), "remote", "add", "origin", url], check=True)
        proc = subprocess.Popen(sshd_argv(sshd_config(tmp_path / "sshd", port, "127.0.0.1")),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_port(port)
            yield SshHost(host, url, fp, coord, tmp_path)
        finally:
            proc.terminate()
            proc.wait(10)


def node_json(h: SshHost, state: str) -> dict[str, object]:
    return dict(json.loads((h.state(state) / "node.json").read_text()))


def test_sudo_join_and_later_syncs_use_the_invoking_users_key(ssh_host: SshHost, admin_env: dict[str, str]) -> None:
    with throwaway_user("alice", sudo=True) as alice:
        key = alice.ssh_key()
        ssh_host.host.authorize(key.with_suffix(".pub"))
        r = ssh_host.sudo_meshctl(alice, "laptop", "join", ssh_host.url, "--name", "laptop", "--root", ssh_host.fp)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[0] == "join request for laptop pushed to branch join/laptop"
        assert f"git over ssh: {key} (kept for later syncs)" in r.stderr
        assert node_json(ssh_host, "laptop")["ssh_key"] == str(key)
        ssh_host.approve("laptop", admin_env)
        r = ssh_host.sudo_meshctl(alice, "laptop", "sync", "--dry-run")
        assert r.returncode == 0 and "self laptop: 100.64.0.1" in r.stdout, r.stderr
        # cron: root alone, no SUDO_USER, no agent: the key recorded at join.
        r = ssh_host.cron_meshctl("laptop", "sync", "--dry-run")
        assert r.returncode == 0 and "self laptop: 100.64.0.1" in r.stdout, r.stderr


def test_sudo_join_uses_the_invoking_users_agent(ssh_host: SshHost, admin_env: dict[str, str]) -> None:
    """A key with a passphrase lives in the user's agent only; sudo drops SSH_AUTH_SOCK, meshctl
    finds the agent by its owner. Cron has no agent: it fails in one line naming what it tried,
    until join is given a key file with --ssh-key."""
    with throwaway_user("alice", sudo=True) as alice:
        key = alice.ssh_key(passphrase="correct horse")
        ssh_host.host.authorize(key.with_suffix(".pub"))
        with ssh_agent(alice, (key, "correct horse")) as sock:
            r = ssh_host.sudo_meshctl(alice, "laptop", "join", ssh_host.url, "--name", "laptop",
                                      "--root", ssh_host.fp, env={"SSH_AUTH_SOCK": sock})
            assert r.returncode == 0, r.stderr
            assert "pushed to branch join/laptop" in r.stdout
            assert f"the git host accepted a key from the ssh-agent at {sock}" in r.stderr
            assert "--ssh-key PATH" in r.stderr
            assert node_json(ssh_host, "laptop")["ssh_key"] is None
            ssh_host.approve("laptop", admin_env)
            r = ssh_host.sudo_meshctl(alice, "laptop", "sync", "--dry-run", env={"SSH_AUTH_SOCK": sock})
            assert r.returncode == 0 and "self laptop: " in r.stdout, r.stderr
        r = ssh_host.cron_meshctl("laptop", "sync", "--dry-run")
        assert r.returncode == 1
        assert r.stderr.splitlines()[0] == (f"meshctl: {ssh_host.url}: authentication failed (tried: no SSH key "
                                            "or agent was found)")
        assert "--ssh-key PATH" in r.stderr and "Traceback" not in r.stderr
        # A deploy key for the machine, given once at join: cron syncs from then on.
        deploy = ssh_host.tmp / "deploy_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(deploy)], check=True)
        ssh_host.host.authorize(deploy.with_suffix(".pub"))
        r = ssh_host.sudo_meshctl(alice, "laptop", "join", ssh_host.url, "--root", ssh_host.fp,
                                  "--ssh-key", str(deploy))
        assert r.returncode == 0 and "laptop is already a member" in r.stdout, r.stderr
        assert node_json(ssh_host, "laptop")["ssh_key"] == str(deploy)
        r = ssh_host.cron_meshctl("laptop", "sync", "--dry-run")
        assert r.returncode == 0 and "self laptop: " in r.stdout, r.stderr


def test_another_users_agent_is_never_used(ssh_host: SshHost) -> None:
    """bob's agent holds a key the host accepts; alice has none. Her `sudo meshctl join` must
    not reach into bob's agent (root could; it must not act for bob on alice's behalf)."""
    with throwaway_user("bob") as bob, throwaway_user("alice", sudo=True) as alice:
        key = bob.ssh_key()
        ssh_host.host.authorize(key.with_suffix(".pub"))
        with ssh_agent(bob, (key, "")) as bob_sock:
            r = ssh_host.sudo_meshctl(alice, "laptop", "join", ssh_host.url, "--name", "laptop", "--root",
                                      ssh_host.fp)
            assert r.returncode == 1
            assert r.stderr.splitlines()[0] == (f"meshctl: {ssh_host.url}: authentication failed (tried: no SSH key "
                                                "or agent was found)")
            assert bob_sock not in r.stderr
            assert f"no SSH key or agent found ({alice.name}'s ~/.ssh/id_ed25519" in r.stderr


def test_a_passphrase_key_given_with_ssh_key_is_refused_at_once(ssh_host: SshHost, tmp_path: Path) -> None:
    key = tmp_path / "pp_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "pw", "-f", str(key)], check=True)
    r = meshctl("join", ssh_host.url, "--name", "laptop", "--root", ssh_host.fp, "--ssh-key", str(key),
                env={"MESHCTL_STATE_DIR": str(tmp_path / "s")})
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == f"meshctl: --ssh-key {key}: it has a passphrase"
    assert not (tmp_path / "s" / "node.json").exists()
