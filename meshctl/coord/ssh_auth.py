"""Which SSH credentials git over ssh offers, also when meshctl runs as root through sudo.

sudo resets HOME and drops SSH_AUTH_SOCK, so a root process would offer only root's own
keys, which the git host has never seen. meshctl offers, in this order:

1. the key given with `join --ssh-key PATH` (recorded in node.json, so the syncs that cron or
   systemd run later use it too), or MESHCTL_SSH_KEY;
2. ssh agents: the one in SSH_AUTH_SOCK (`sudo -E` keeps it), then the invoking user's own
   agents, found by ownership (below);
3. key files without a passphrase: the invoking user's ~/.ssh/id_*, then this user's.

The invoking user is SUDO_USER, believed only when this process runs as root (only root can
read another user's keys; a user setting SUDO_USER reaches nothing of root's) and SUDO_UID
names the same account. Their agent socket is used only where nobody else could have put it:
a socket owned by that uid, in directories owned by that uid that nobody else may write to
(OpenSSH's /tmp/ssh-XXXX/agent.N, or the session's /run/user/UID). So root never talks to
another user's agent, nor to a socket another user made up to look like one.
"""

from __future__ import annotations

import base64
import os
import pwd
import socket
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

KEY_NAMES: Final = ("id_ed25519", "id_ecdsa", "id_rsa")
# Where agents put their sockets under the user's runtime directory (systemd's ssh-agent
# unit, Debian's openssh_agent, gpg-agent's ssh support, GNOME keyring / gcr).
RUNTIME_AGENT_NAMES: Final = ("ssh-agent.socket", "openssh_agent", "gnupg/S.gpg-agent.ssh",
                              "keyring/ssh", "gcr/ssh")
MAX_AGENTS: Final = 4
MAX_KEY_FILE_BYTES: Final = 64 * 1024
AGENT_PROBE_TIMEOUT_S: Final = 0.5


@dataclass(frozen=True, slots=True)
class SshCredential:
    kind: Literal["key", "agent"]
    path: str  # the private key file, or the agent's socket

    def describe(self) -> str:
        return f"key {self.path}" if self.kind == "key" else f"ssh-agent {self.path}"


@dataclass(frozen=True, slots=True)
class Invoker:
    """The person who typed `sudo meshctl ...`."""

    name: str
    uid: int
    home: Path


def invoking_user(env: Mapping[str, str], euid: int) -> Invoker | None:
    """SUDO_USER, when this process is root and SUDO_UID names the same account."""
    name, uid_text = env.get("SUDO_USER"), env.get("SUDO_UID")
    if euid != 0 or not name or not uid_text or not uid_text.isdigit() or int(uid_text) == 0:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    if entry.pw_uid != int(uid_text):
        return None
    return Invoker(name, entry.pw_uid, Path(entry.pw_dir))


def ordered(explicit: Sequence[str], agents: Sequence[str], key_files: Sequence[str]) -> list[SshCredential]:
    """The offering order (pure): explicit keys, agents, key files; each path once."""
    kinds: list[tuple[Literal["key", "agent"], Sequence[str]]] = [("key", explicit), ("agent", agents),
                                                                  ("key", key_files)]
    out: list[SshCredential] = []
    for kind, paths in kinds:
        out += [SshCredential(kind, p) for p in paths if all(c.path != p for c in out)]
    return out


def key_file_problem(data: bytes) -> str | None:
    """Why a private key file cannot be used without a person (None: usable as it is)."""
    text = data.decode("ascii", "replace")
    if "ENCRYPTED" in text:  # PEM: "Proc-Type: 4,ENCRYPTED" or "BEGIN ENCRYPTED PRIVATE KEY"
        return "it has a passphrase"
    begin, end = "-----BEGIN OPENSSH PRIVATE KEY-----", "-----END OPENSSH PRIVATE KEY-----"
    if begin not in text:
        return None if "PRIVATE KEY-----" in text else "not a private key"
    body = text.split(begin, 1)[1].split(end, 1)[0]
    try:
        raw = base64.b64decode("".join(body.split()), validate=True)
    except ValueError:
        return "not a private key"
    magic = b"openssh-key-v1\x00"
    if not raw.startswith(magic) or len(raw) < len(magic) + 4:
        return "not a private key"
    size = int.from_bytes(raw[len(magic):len(magic) + 4], "big")
    cipher = raw[len(magic) + 4:len(magic) + 4 + size]
    return None if cipher == b"none" else "it has a passphrase"


def _owned_by(st: os.stat_result, uid: int) -> bool:
    return st.st_uid == uid and not st.st_mode & 0o022


def _safe_socket(path: Path, uid: int, top: Path) -> bool:
    """A socket of `uid` whose directories up to `top` belong to `uid` and only to it."""
    try:
        st = path.lstat()
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != uid:
            return False
        parent = path.parent
        while parent != top and top in parent.parents:
            pst = parent.lstat()
            if not stat.S_ISDIR(pst.st_mode) or not _owned_by(pst, uid):
                return False
            parent = parent.parent
        return parent == top
    except OSError:
        return False


def _answers(path: Path) -> bool:
    """An agent is listening (a dead agent leaves its socket behind)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(AGENT_PROBE_TIMEOUT_S)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def user_agent_sockets(uid: int, tmp: Path = Path("/tmp"), run_user: Path = Path("/run/user")) -> list[str]:
    """The live agent sockets of `uid`, newest first (see the module docstring for the rules)."""
    found: list[tuple[Path, Path]] = [(run_user / str(uid) / name, run_user) for name in RUNTIME_AGENT_NAMES]
    try:
        found += [(p, tmp) for d in tmp.glob("ssh-*") for p in d.glob("agent.*")]
    except OSError:
        pass
    safe = [p for p, top in found if _safe_socket(p, uid, top)]
    safe.sort(key=lambda p: p.lstat().st_mtime, reverse=True)
    return [str(p) for p in safe if _answers(p)][:MAX_AGENTS]


def usable_key_files(home: Path, uid: int | None = None) -> list[str]:
    """~/.ssh/id_* that can be used as they are (regular files, no passphrase)."""
    out = []
    for name in KEY_NAMES:
        path = home / ".ssh" / name
        try:
            st = path.stat()
            if not stat.S_ISREG(st.st_mode) or (uid is not None and st.st_uid != uid):
                continue
            with path.open("rb") as f:
                data = f.read(MAX_KEY_FILE_BYTES)
        except OSError:
            continue
        if key_file_problem(data) is None:
            out.append(str(path))
    return out


def discover(explicit_key: str | None, env: Mapping[str, str] | None = None) -> list[SshCredential]:
    """Every credential worth offering, in order (reads the file system and probes agents)."""
    env = os.environ if env is None else env
    explicit = [k for k in (explicit_key, env.get("MESHCTL_SSH_KEY")) if k]
    invoker = invoking_user(env, os.geteuid())
    agents = []
    sock = env.get("SSH_AUTH_SOCK")
    if sock and Path(sock).is_socket():
        agents.append(sock)
    keys: list[str] = []
    if invoker is not None:
        agents += user_agent_sockets(invoker.uid)
        keys += usable_key_files(invoker.home, invoker.uid)
    keys += usable_key_files(Path(env.get("HOME") or Path.home()))
    return ordered(explicit, agents, keys)


def hint(tried: Sequence[SshCredential], invoker: Invoker | None) -> str:
    """What to do when the git host accepted none of them."""
    who = f"{invoker.name}'s" if invoker is not None else "your"
    if not tried:
        return (f"no SSH key or agent found ({who} ~/.ssh/id_ed25519, id_ecdsa, id_rsa; SSH_AUTH_SOCK): "
                "pass --ssh-key PATH to `meshctl join` (it is kept for later syncs)")
    return ("pass --ssh-key PATH (a key the git host accepts, without a passphrase) to `meshctl join`; "
            "it is kept for later syncs")
