"""Which SSH credentials meshctl offers, and which agent sockets it trusts (coord/ssh_auth.py),
plus the small pure rules of the newcomer's path (git URL hosts, request branches, join names)."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from meshctl.coord import ssh_auth
from meshctl.coord.approve_remote import request_branch_problem
from meshctl.coord.join import chosen_name
from meshctl.coord.node_state import NodeConfig
from meshctl.coord.repo import url_host
from meshctl.errors import UsageError

UID = 54321  # owns the sockets below; no account needed


@pytest.mark.parametrize(("url", "host"), [
    ("git@github.com:acme/acme-mesh.git", "github.com"),
    ("github.com:acme/acme-mesh.git", "github.com"),
    ("ssh://git@git.example.com:2222/acme.git", "git.example.com"),
    ("ssh://[2001:db8::1]:22/acme.git", "2001:db8::1"),
    ("git://198.51.100.1/acme-mesh.git", "198.51.100.1"),
    ("https://user:token@gitlab.com/acme/acme-mesh.git", "gitlab.com"),
    ("/srv/git/acme.git", None),
    ("file:///srv/git/acme.git", None),
    ("./acme.git", None),
])
def test_url_host(url: str, host: str | None) -> None:
    assert url_host(url) == host


def _openssh_key(passphrase: str, tmp: Path) -> bytes:
    key = tmp / f"k{len(passphrase)}"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(key)], check=True)
    return key.read_bytes()


def test_key_file_problem(tmp_path: Path) -> None:
    if subprocess.run(["which", "ssh-keygen"], capture_output=True).returncode != 0:
        pytest.skip("needs ssh-keygen (Debian package openssh-client)")
    assert ssh_auth.key_file_problem(_openssh_key("", tmp_path)) is None
    assert ssh_auth.key_file_problem(_openssh_key("secret", tmp_path)) == "it has a passphrase"
    pem = b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n"
    assert ssh_auth.key_file_problem(pem) == "it has a passphrase"
    assert ssh_auth.key_file_problem(b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n") is None
    assert ssh_auth.key_file_problem(b"ssh-ed25519 AAAA... a public key") == "not a private key"
    assert ssh_auth.key_file_problem(b"-----BEGIN OPENSSH PRIVATE KEY-----\n!!!\n") == "not a private key"


def test_credentials_are_offered_explicit_first_then_agents_then_files_each_once() -> None:
    got = ssh_auth.ordered(["/k/deploy"], ["/tmp/ssh-a/agent.1", "/run/user/1000/openssh_agent"],
                           ["/home/a/.ssh/id_ed25519", "/k/deploy"])
    assert [c.describe() for c in got] == ["key /k/deploy", "ssh-agent /tmp/ssh-a/agent.1",
                                           "ssh-agent /run/user/1000/openssh_agent", "key /home/a/.ssh/id_ed25519"]


def test_sudo_user_is_believed_only_from_root_and_when_uid_and_name_agree() -> None:
    nobody = pwd.getpwnam("nobody")
    env = {"SUDO_USER": "nobody", "SUDO_UID": str(nobody.pw_uid)}
    assert ssh_auth.invoking_user(env, 0) == ssh_auth.Invoker("nobody", nobody.pw_uid, Path(nobody.pw_dir))
    assert ssh_auth.invoking_user(env, 1000) is None  # not root: nobody's keys are not ours to read
    assert ssh_auth.invoking_user({"SUDO_USER": "nobody", "SUDO_UID": "0"}, 0) is None
    assert ssh_auth.invoking_user({"SUDO_USER": "nobody", "SUDO_UID": str(nobody.pw_uid + 1)}, 0) is None
    assert ssh_auth.invoking_user({"SUDO_USER": "no-such-user-xyz", "SUDO_UID": "4242"}, 0) is None
    assert ssh_auth.invoking_user({}, 0) is None


@contextmanager
def _listening(path: Path) -> Iterator[None]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(1)
    try:
        yield
    finally:
        sock.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (sockets owned by another uid)")
def test_agent_sockets_are_found_by_owner_and_only_where_nobody_else_could_put_them(tmp_path: Path) -> None:
    tmp, run_user = tmp_path / "tmp", tmp_path / "run-user"
    tmp.mkdir()
    (run_user / str(UID)).mkdir(parents=True)

    def agent_dir(name: str, owner: int = UID, mode: int = 0o700) -> Path:
        d = tmp / name
        d.mkdir()
        os.chown(d, owner, owner)
        d.chmod(mode)
        return d

    good = agent_dir("ssh-good") / "agent.100"
    other_user = agent_dir("ssh-other", owner=UID + 1) / "agent.200"
    group_writable = agent_dir("ssh-gw", mode=0o770) / "agent.300"
    dead = agent_dir("ssh-dead") / "agent.400"
    runtime = run_user / str(UID) / "openssh_agent"
    os.chown(run_user / str(UID), UID, UID)
    (run_user / str(UID)).chmod(0o700)
    real = agent_dir("ssh-real") / "agent.500"
    (tmp / "ssh-link").symlink_to(real.parent)  # a symlinked directory is someone's redirection
    with _listening(good), _listening(other_user), _listening(group_writable), _listening(runtime), \
            _listening(real):
        for path, owner in ((good, UID), (other_user, UID + 1), (group_writable, UID), (runtime, UID),
                            (real, UID)):
            os.chown(path, owner, owner)
        with _listening(dead):
            os.chown(dead, UID, UID)
        os.utime(runtime, (1, 1))  # the oldest: offered last
        found = ssh_auth.user_agent_sockets(UID, tmp=tmp, run_user=run_user)
    assert set(found) == {str(good), str(real), str(runtime)}
    assert found[-1] == str(runtime)
    assert str(tmp / "ssh-link" / "agent.500") not in found


def test_request_branch_may_change_its_own_request_only() -> None:
    assert request_branch_problem("join/laptop", ["requests/laptop.json", "requests/laptop.json.sig"],
                                  "laptop") is None
    assert request_branch_problem("join/laptop", ["requests/laptop.json", "state.json", "README.md"], "laptop") == (
        "join/laptop changes more than requests/laptop.json: README.md, state.json")
    assert request_branch_problem("join/laptop", ["requests/other.json"], "laptop") == (
        "join/laptop changes more than requests/laptop.json: requests/other.json")


FP = "sha256:" + "ab" * 32


def _cfg(name: str = "laptop", fp: str = FP) -> NodeConfig:
    return NodeConfig(name, "git@github.com:acme/acme-mesh.git", "main", fp, "n" * 32)


def test_join_name_rules() -> None:
    assert chosen_name(None, None, FP, "host", False, False) == ("host", None)
    assert chosen_name("desk", None, FP, "host", False, False) == ("desk", None)
    assert chosen_name(None, _cfg(), FP, "host", False, False) == ("laptop", None)  # keeps its name
    assert chosen_name("laptop", _cfg(), FP, "host", False, False) == ("laptop", None)
    assert chosen_name("desk", _cfg(), FP, "host", True, False) == ("desk", "laptop")
    with pytest.raises(UsageError, match=r"already asked to join as 'laptop' \(branch join/laptop\)"):
        chosen_name("desk", _cfg(), FP, "host", False, False)
    with pytest.raises(UsageError, match="already member 'laptop'"):
        chosen_name("desk", _cfg(), FP, "host", True, True)
    with pytest.raises(UsageError, match="already joined another mesh"):
        chosen_name("laptop", _cfg(fp="sha256:" + "cd" * 32), FP, "host", False, False)
