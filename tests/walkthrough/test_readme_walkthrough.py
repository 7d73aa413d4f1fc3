"""README.md, "Real use on real machines", run command for command in the network lab, by people.

    admin (public) ----+
                       |
    laptop -- home NAT (port-restricted cone) --+-- internet
                       |                        |
    githost (public, "githost.example.com": sshd on :22, key auth only, git-shell) = "GitHub"
    server (public 203.0.113.x, "server.example.com", sshd on :22) --+

The git host is a real sshd in front of git-shell: the URL is the scp form GitHub prints,
`GITUSER@githost.example.com:acme/acme-mesh.git`. The people are throwaway local users (removed
after the test): alice runs the laptop (her key has a passphrase and lives in her ssh-agent) and
ops runs the server (a plain key file); both type `sudo meshctl ...`, through the real sudo, which
drops SSH_AUTH_SOCK and resets HOME. The admin's commands run with the admin's own HOME (a temp
dir holding the admin key and an ssh key the host accepts). meshctl is `$MESHCTL_BIN` (the
one-file binary in CI) or `python -m meshctl`. The server's cron line is packaging/meshctl.cron,
run once with cron's environment (jitter shortened): root, nobody's agent.

The test counts the commands each person types and the time from the first one to the first
ping between laptop and server, and prints both (README quotes them).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import pytest
from ssh_git_host import GitShellHost, LocalUser, missing_tool, ssh_agent, sshd_argv, sshd_config, throwaway_user

from lab import Lab, Node, lab_unavailable, meshctl_argv
from lab import rules as lab_rules
from lab.core import NETNS_ETC, poll

ROOT: Final = Path(__file__).resolve().parents[2]
README: Final = ROOT / "README.md"
CRON_FILE: Final = ROOT / "packaging" / "meshctl.cron"
CRON_DEFAULT_ENV: Final = {"SHELL": "/bin/sh", "HOME": "/root", "LOGNAME": "root", "PATH": "/usr/bin:/bin"}
SERVER_NAME: Final = "server.example.com"
GITHOST_NAME: Final = "githost.example.com"
REPO_PATH: Final = "acme/acme-mesh.git"
PASSPHRASE: Final = "correct horse battery staple"
# A server that only syncs from cron publishes its endpoint record saying so (no agent answers
# disco there): the laptop's agent, looking for records every few seconds while the server has no
# path, uses its published endpoint as soon as cron has run (before: 150 s later).
PING_TIMEOUT_S: Final = 30.0
# The goals of issue 21 (the counts: after install; the admin's grows by one per device that
# joins with a request).
ADMIN_BASE_GOAL: Final = 4
DEVICE_GOAL: Final = 2
FIRST_PING_GOAL_S: Final = 60.0

# The README's commands as this test runs them ({url} and {root} filled in). Each must appear
# in the README verbatim with GitHub's URL and the invite's fingerprint.
README_COMMANDS: Final = (
    "meshctl init acme-mesh --name acme --remote {url}",
    "cd acme-mesh",
    "sudo meshctl join {url} --name laptop --root {root}",
    "sudo meshctl join {url} --name server --root {root} \\\n     --endpoint server.example.com:51820",
    "meshctl admin approve laptop --owner alice@example.com",
    "meshctl admin approve server --tag tag:server",
    "sudo meshctl up",
    "sudo meshctl status",
    "ssh server.acme.mesh",
)
# Lines of README.md the walkthrough needs as written: cron's PATH has neither /usr/local/bin
# nor nft, and status reads the root-only state directory.
README_FIXED_LINES: Final = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "*/5 * * * * root /usr/local/bin/meshctl sync --jitter 60",
    "sudo meshctl status",  # the state directory is 0700 root
    "MESHCTL_URL",  # the coordination repository's CI needs it
)


WALKTHROUGH_TOOLS: Final = {
    "wireguard-go": "wireguard-go", "wg": "wireguard-tools", "git": "git", "ping": "iputils-ping",
    "ssh": "openssh-client", "ssh-keygen": "openssh-client", "nft": "nftables", "sshd": "openssh-server",
}


def need_walkthrough() -> None:
    """Skip, saying exactly what is missing, unless the walkthrough can run here."""
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    for tool, package in WALKTHROUGH_TOOLS.items():
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin:/sbin") is None:
            pytest.skip(f"the README walkthrough needs `{tool}` (Debian: {package})")
    reason = missing_tool()  # people: local users, sudo, git-shell, ssh-agent
    if reason:
        pytest.skip(f"the README walkthrough {reason}")


class Walkthrough:
    """The lab, its machines and people, and the README's commands, each run where the README runs it."""

    def __init__(self, lab: Lab, git_account: LocalUser, alice: LocalUser, alice_agent: str, ops: LocalUser) -> None:
        self.lab = lab
        self.internet = lab.internet()
        self.admin_node = lab.public_host("admin")
        self.githost = lab.public_host("githost")
        self.server = lab.public_host("server")
        self.laptop = lab.host("laptop")
        self.home_nat = lab.nat_router("home", lab_rules.PORT_RESTRICTED, [self.laptop])
        self.alice, self.alice_agent, self.ops = alice, alice_agent, ops
        # Public DNS: the git host's name everywhere, the server's name as the laptop sees it.
        for node in (self.admin_node, self.laptop, self.server):
            (NETNS_ETC / node.ns / "hosts").write_text(
                f"127.0.0.1 localhost\n127.0.1.1 {socket.gethostname()}\n{self.githost.ipv4} {GITHOST_NAME}\n"
                f"{self.server.ipv4} {SERVER_NAME}\n")
        self.host = GitShellHost(git_account)
        self.host.bare_repo(REPO_PATH)
        self.url = self.host.scp_url(GITHOST_NAME, REPO_PATH)
        self._start_git_host()
        self.home = lab.tempdir("admin-home")
        (self.home / ".gitconfig").write_text(
            "[user]\n\tname = Alice Admin\n\temail = alice@example.com\n"
            "[init]\n\tdefaultBranch = main\n[safe]\n\tdirectory = *\n")
        (self.home / ".ssh").mkdir(mode=0o700)
        admin_ssh = self.home / ".ssh" / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(admin_ssh)], check=True)
        self.host.authorize(admin_ssh.with_suffix(".pub"))
        self.admin_env = {"HOME": str(self.home), "MESHCTL_STATE_DIR": str(lab.tempdir("admin-state"))}
        self.checkout = self.home / "acme-mesh"
        self.typed: Counter[str] = Counter()  # commands each person typed, per machine
        self.started: float | None = None

    def _start_git_host(self) -> None:
        config = sshd_config(self.lab.tempdir("githost-sshd"), 22)
        proc = self.lab.popen(self.githost, sshd_argv(config))

        def listening() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"sshd on the git host exited: {self.lab.log_of(proc)}")
            return self.lab.run(self.githost, ["ss", "-Htln", "sport = :22"], check=False).stdout.strip() != ""

        poll(listening, "sshd on the git host")

    # --- what people type -------------------------------------------------------------------

    def _typed(self, machine: str) -> None:
        if self.started is None:
            self.started = time.monotonic()
        self.typed[machine] += 1

    def admin(self, command: str, cwd: Path | None = None) -> str:
        """One README line on the admin's machine, in `cwd` (the checkout after `cd acme-mesh`)."""
        self._typed("admin")
        argv = shlex.split(command)
        if argv[0] == "meshctl":
            argv = [*meshctl_argv(), *argv[1:]]
        proc = self.lab.run(self.admin_node, ["sh", "-c", 'cd "$1" && shift && exec "$@"', "sh",
                                              str(cwd or self.checkout), *argv], env=self.admin_env, check=False)
        assert proc.returncode == 0, f"admin: {command}: {proc.stdout}{proc.stderr}"
        return proc.stdout + proc.stderr

    def sudo(self, node: Node, command: str) -> subprocess.CompletedProcess[str]:
        """`sudo meshctl ...` typed by the device's person: alice (her agent in her environment,
        as a login shell has it) on the laptop, ops on the server. The lab's per-node state
        directory and interface go in as global options: sudo passes no MESHCTL_* variables."""
        self._typed(node.name)
        argv = shlex.split(command)
        assert argv[:2] == ["sudo", "meshctl"], command
        lab_env = self.lab.meshctl_env(node)
        person, env = (self.alice, {"SSH_AUTH_SOCK": self.alice_agent}) if node is self.laptop else (self.ops, {})
        return person.run(["sudo", *meshctl_argv(), "--state-dir", lab_env["MESHCTL_STATE_DIR"],
                           "--interface", lab_env["MESHCTL_INTERFACE"], *argv[2:]], env=env, netns=node.ns,
                          check=False)

    def device(self, node: Node, args: Sequence[str], env: dict[str, str] | None = None) -> str:
        """meshctl as root on a device (what the test looks at; not counted)."""
        proc = self.lab.meshctl(node, list(args), env=env, check=False)
        assert proc.returncode == 0, f"{node.name}: meshctl {shlex.join(args)}: {proc.stdout}{proc.stderr}"
        return proc.stdout

    def status(self, node: Node) -> dict[str, Any]:
        return dict(json.loads(self.device(node, ["status", "--json"])))

    def cron_once(self, node: Node) -> str:
        """Run the job of packaging/meshctl.cron the way cron does: root, its own environment only,
        nobody's agent (the key recorded at join is what reaches the git host)."""
        lines = [ln for ln in CRON_FILE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        env = dict(CRON_DEFAULT_ENV)
        env.update(ln.split("=", 1) for ln in lines if re.match(r"^[A-Z]+=", ln))
        (job,) = [ln.split(None, 6) for ln in lines if not re.match(r"^[A-Z]+=", ln)]
        user, command = job[5], job[6]
        assert user == "root" and command == "/usr/local/bin/meshctl sync --jitter 60"
        command = command.replace("--jitter 60", "--jitter 2")  # keep the test short
        command = command.replace("/usr/local/bin/meshctl", str(self._meshctl_executable()))
        node_env = self.lab.meshctl_env(node)
        proc = self.lab.run(node, ["env", "-i", *(f"{k}={v}" for k, v in {**env, **node_env}.items()),
                                   "sh", "-c", command], check=False)
        assert proc.returncode == 0, f"cron on {node.name}: {proc.stdout}{proc.stderr}"
        return proc.stdout + proc.stderr

    def _meshctl_executable(self) -> Path:
        argv = meshctl_argv()
        if len(argv) == 1:
            return Path(argv[0])
        wrapper = self.lab.tempdir("bin") / "meshctl"  # python -m meshctl as one executable
        wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(ROOT))} exec {shlex.join(argv)} \"$@\"\n")
        wrapper.chmod(0o755)
        return wrapper

    def diagnostics(self) -> str:
        """What each device's WireGuard and meshctl say, for a failure message."""
        out = []
        for node in (self.laptop, self.server):
            ifname = self.lab.meshctl_env(node)["MESHCTL_INTERFACE"]
            for argv in (["wg", "show", ifname], ["ip", "addr", "show", ifname], ["ip", "route"],
                         [*meshctl_argv(), "status"]):
                proc = self.lab.run(node, argv, env=self.lab.meshctl_env(node), check=False)
                out.append(f"--- {node.name}: {shlex.join(argv[-2:])}\n{proc.stdout}{proc.stderr}")
            log = Path(self.lab.meshctl_env(node)["MESHCTL_STATE_DIR"]) / "agent.log"
            if log.exists():
                out.append(f"--- {node.name}: agent.log (tail)\n{log.read_text()[-3000:]}")
        return "\n".join(out)

    def report(self, first_ping_s: float) -> str:
        devices = len(("laptop", "server"))
        rows = [("admin", self.typed["admin"], f"<= {ADMIN_BASE_GOAL} + 1 per request-joined device "
                                               f"({ADMIN_BASE_GOAL + devices})"),
                ("laptop", self.typed["laptop"], f"<= {DEVICE_GOAL}"),
                ("server", self.typed["server"], f"<= {DEVICE_GOAL}")]
        lines = [f"{'machine':<8} {'commands typed':>14}  goal"]
        lines += [f"{m:<8} {n:>14}  {goal}" for m, n, goal in rows]
        lines.append(f"first command -> first ping laptop -> server: {first_ping_s:.1f} s "
                     f"(goal {FIRST_PING_GOAL_S:g} s)")
        return "\n".join(lines)

    # --- ssh ------------------------------------------------------------------------------------

    def start_sshd(self) -> Path:
        """A real sshd on the server's port 22 (its own keys and config); returns the client key."""
        sshd = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin:/sbin") or "sshd"
        tmp = self.lab.tempdir("sshd")
        host_key, client_key = tmp / "host_ed25519", tmp / "client_ed25519"
        for key in (host_key, client_key):
            self.lab.run(self.server, ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
        auth = tmp / "authorized_keys"
        auth.write_text(client_key.with_suffix(".pub").read_text())
        auth.chmod(0o600)
        config = tmp / "sshd_config"
        config.write_text(
            f"Port 22\nHostKey {host_key}\nAuthorizedKeysFile {auth}\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            f"PidFile {tmp / 'sshd.pid'}\nLogLevel ERROR\n")
        Path("/run/sshd").mkdir(exist_ok=True)
        self.lab.popen(self.server, [sshd, "-D", "-e", "-f", str(config)])
        poll(lambda: self.lab.run(self.server, ["ss", "-Htln", "sport = :22"], check=False).stdout.strip() != "",
             "sshd on the server")
        return client_key


@pytest.fixture
def walk() -> Iterator[Walkthrough]:
    need_walkthrough()
    with throwaway_user("git", shell=shutil.which("git-shell") or "/usr/bin/git-shell") as git_account, \
            throwaway_user("alice", sudo=True) as alice, throwaway_user("ops", sudo=True) as ops:
        laptop_key = alice.ssh_key(passphrase=PASSPHRASE)  # usable through her agent only
        server_key = ops.ssh_key()
        with ssh_agent(alice, (laptop_key, PASSPHRASE)) as agent, Lab("wt") as lab:
            w = Walkthrough(lab, git_account, alice, agent, ops)
            w.host.authorize(laptop_key.with_suffix(".pub"))
            w.host.authorize(server_key.with_suffix(".pub"))
            try:
                yield w
            finally:
                for node in (w.laptop, w.server):  # stop agents before the lab kills namespaces
                    lab.meshctl(node, ["down"], check=False)


@pytest.mark.netns
def test_readme_walkthrough(walk: Walkthrough) -> None:
    """As written: the server publishes its name and syncs from cron."""
    run_walkthrough(walk, server_agent=False)


@pytest.mark.netns
def test_walkthrough_with_the_server_running_the_agent(walk: Walkthrough) -> None:
    """The same, except that the server publishes its IP and runs `sudo meshctl up` too: MagicDNS,
    ping and ssh by name end to end, and the first ping without the cron server's fallback wait."""
    run_walkthrough(walk, server_agent=True)


def run_walkthrough(w: Walkthrough, *, server_agent: bool) -> None:

    # 1. The admin creates the mesh and pushes it to the (empty) repository on the git host.
    out = w.admin(f"meshctl init acme-mesh --name acme --remote {w.url}", cwd=w.home)
    assert f"created admin key {w.home}/.config/meshctl/admin.key" in out
    assert (w.home / ".config/meshctl/admin.key").stat().st_mode & 0o077 == 0
    invite = out.strip().splitlines()[-1].strip()
    match = re.fullmatch(rf"meshctl join {re.escape(w.url)} --root (sha256:[0-9a-f]{{64}})", invite)
    assert match, out
    root = match[1]
    w.typed["admin"] += 1  # cd acme-mesh (the commands below run in the checkout)

    # 2. Each device asks to join, through sudo: the laptop behind NAT (alice's agent), the
    #    server with its public name (ops's key file, kept for cron).
    r = w.sudo(w.laptop, f"sudo meshctl join {w.url} --name laptop --root {root}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "join request for laptop pushed to branch join/laptop"
    server_endpoint = f"{w.server.ipv4 if server_agent else SERVER_NAME}:51820"
    r = w.sudo(w.server, f"sudo meshctl join {w.url} --name server --root {root} --endpoint {server_endpoint}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "join request for server pushed to branch join/server"
    assert f"git over ssh: {w.ops.home}/.ssh/id_ed25519 (kept for later syncs)" in r.stderr
    keys = Path(w.lab.meshctl_env(w.laptop)["MESHCTL_STATE_DIR"]) / "keys"
    assert all(p.stat().st_mode & 0o077 == 0 for p in keys.iterdir())

    # 3. The admin approves each request: one command each, nothing else.
    for number, (name, extra) in enumerate(
            (("laptop", "--owner alice@example.com"), ("server", "--tag tag:server")), start=1):
        out = w.admin(f"meshctl admin approve {name} {extra}")
        assert re.match(rf"approved {name}: 100\.64\.0\.{number} fd", out), out
        assert f"pushed main (serial {number + 1}); join/{name} is merged" in out
    assert w.admin("git status --porcelain --branch").splitlines() == ["## main...origin/main"]
    w.typed["admin"] -= 1  # that was the test looking
    check = subprocess.run([*meshctl_argv(), "repo", "verify", str(w.checkout)], capture_output=True, text=True,
                           env={**os.environ, **w.admin_env})
    assert check.stdout.startswith("ok: mesh acme, root v1, serial 3, 2 members"), check.stderr  # CI on main

    # 4. Devices come up: the laptop runs the agent (alice's agent still answers git), the
    #    server syncs from cron (root, the key recorded at join) or runs the agent too.
    r = w.sudo(w.laptop, "sudo meshctl up")
    assert r.returncode == 0, r.stderr
    assert re.match(r"meshctl is up on \S+ \(agent pid \d+, serial 3\)", r.stdout), r.stdout
    if server_agent:
        r = w.sudo(w.server, "sudo meshctl up")
        assert r.returncode == 0, r.stderr
        assert re.match(r"meshctl is up on \S+ \(agent pid \d+, serial 3\)", r.stdout), r.stdout
    else:
        w._typed("server")  # the cron line (README: `printf ... | sudo tee /etc/cron.d/meshctl`)
        out = w.cron_once(w.server)
        assert "accepted serial 3" in out

    def pings() -> bool:
        return w.lab.run(w.laptop, ["ping", "-c", "1", "-W", "1", "server.acme.mesh"], check=False).returncode == 0

    try:
        poll(pings, "ping server.acme.mesh from the laptop", timeout=PING_TIMEOUT_S)
    except Exception as exc:
        raise AssertionError(f"{exc}\n{w.diagnostics()}") from None
    assert w.started is not None
    first_ping_s = time.monotonic() - w.started
    report = w.report(first_ping_s)
    print(f"\nREADME walkthrough, server {'agent' if server_agent else 'cron'}:\n{report}")
    assert w.typed["admin"] <= ADMIN_BASE_GOAL + 2, report
    assert w.typed["laptop"] <= DEVICE_GOAL and w.typed["server"] <= DEVICE_GOAL, report

    laptop_status, server_status = w.status(w.laptop), w.status(w.server)
    assert laptop_status["self"]["name"] == "laptop" and server_status["self"]["name"] == "server"
    assert [p["name"] for p in laptop_status["peers"]] == ["server"]
    assert [p["name"] for p in server_status["peers"]] == ["laptop"]
    server_ip = server_status["self"]["mesh_ips"][0]
    human = w.device(w.laptop, ["status"])
    assert "server" in human and server_ip in human

    # MagicDNS names every member: ssh the server by name from the laptop.
    resolved = w.lab.run(w.laptop, ["getent", "ahostsv4", "server.acme.mesh"], check=False).stdout.split()
    assert resolved[:1] == [server_ip], resolved
    client_key = w.start_sshd()
    ssh = w.lab.run(w.laptop, ["ssh", "-i", str(client_key), "-o", "BatchMode=yes",
                               "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                               "-o", "ConnectTimeout=10", "server.acme.mesh", "echo $SSH_CLIENT"], check=False)
    assert ssh.returncode == 0, ssh.stderr
    assert ssh.stdout.split()[0] in laptop_status["self"]["mesh_ips"]  # over the mesh, from the laptop

    # The server's status now shows a handshake with the laptop (through the laptop's NAT).
    peer = w.status(w.server)["peers"][0]
    assert peer["latest_handshake"] is not None and peer["rx_bytes"] > 0
    assert peer["endpoint"].startswith(f"{w.home_nat.public_ip}:")


def readme_section() -> str:
    text = README.read_text()
    start = text.index("## Real use on real machines")
    return text[start:text.index("\n## ", start + 1)]


def test_readme_lists_the_commands_this_test_runs() -> None:
    section = readme_section()
    url, root = "git@github.com:acme/acme-mesh.git", "sha256:0bf5..."
    missing = [c for c in README_COMMANDS if c.format(url=url, root=root) not in section]
    assert missing == [], "README.md changed: update tests/walkthrough to run it as written"


def test_readme_has_the_fixed_lines() -> None:
    section = readme_section()
    assert [line for line in README_FIXED_LINES if line not in section] == []


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
