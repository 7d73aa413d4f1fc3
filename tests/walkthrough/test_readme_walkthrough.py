"""README.md, "Real use on real machines", run command for command in the network lab.

    admin (public) ----+
                       |
    laptop -- home NAT (port-restricted cone) --+-- internet: git daemon = "GitHub"
                       |                        |   (git://198.51.100.1/acme-mesh.git)
    server (public 203.0.113.x, "server.example.com", sshd on :22) --+

A local `git daemon` (push enabled) stands in for GitHub; "merge the pull request" is done the
way GitHub's merge button does it: a merge commit of the approved branch on main, made on the
host's side, which the admin then pulls.
The admin's HOME is a temp dir, so the admin key lands in the default
~/.config/meshctl/admin.key there. meshctl is `$MESHCTL_BIN` (the one-file binary in CI)
or `python -m meshctl`. The server's cron line is packaging/meshctl.cron, run once with cron's
environment (jitter shortened).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import pytest

from lab import Lab, Node, lab_unavailable, meshctl_argv
from lab import rules as lab_rules
from lab.core import NETNS_ETC, poll

ROOT: Final = Path(__file__).resolve().parents[2]
README: Final = ROOT / "README.md"
CRON_FILE: Final = ROOT / "packaging" / "meshctl.cron"
CRON_DEFAULT_ENV: Final = {"SHELL": "/bin/sh", "HOME": "/root", "LOGNAME": "root", "PATH": "/usr/bin:/bin"}
SERVER_NAME: Final = "server.example.com"
# A server that only syncs from cron answers no disco: the laptop's agent falls back to its
# published endpoint after STATIC_FALLBACK_AFTER_S (agent/magic.py), so allow for that.
PING_TIMEOUT_S: Final = 30.0 + 150.0

# The README's commands as this test runs them ({url} and {root} filled in). Each must appear
# in the README verbatim with GitHub's URL and the invite's fingerprint.
README_COMMANDS: Final = (
    "meshctl init acme-mesh --name acme",
    "cd acme-mesh",
    "git remote add origin {url}",
    "git push -u origin main",
    "meshctl admin invite",
    "meshctl join {url} --name laptop --root {root}",
    "meshctl join {url} --name server --root {root} \\\n     --endpoint server.example.com:51820",
    "git fetch origin join/laptop && git checkout -B join/laptop FETCH_HEAD && git rebase main",
    "meshctl admin approve laptop --owner alice@example.com",
    "meshctl admin approve server --tag tag:server",
    "meshctl up",
    "meshctl status",
    "ssh server.acme.mesh",
)
# Lines that must change in README.md for the walkthrough to work as written (see the test
# at the bottom): the second approval needs its own branch push and merge after the first,
# a rebased branch needs a forced push, cron's PATH has neither /usr/local/bin nor nft, and
# status reads the root-only state directory.
README_FIXED_LINES: Final = (
    "git push --force-with-lease origin join/laptop",
    "git checkout main && git pull",
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "*/5 * * * * root /usr/local/bin/meshctl sync --jitter 60",
    "sudo meshctl status",  # the state directory is 0700 root
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


class Walkthrough:
    """The lab, its machines and the README's commands, each run where the README runs it."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.internet = lab.internet()
        self.bare = lab.bare_repo("acme-mesh")
        self.url = lab.git_daemon(self.bare)
        self.admin_node = lab.public_host("admin")
        self.server = lab.public_host("server")
        self.laptop = lab.host("laptop")
        self.home_nat = lab.nat_router("home", lab_rules.PORT_RESTRICTED, [self.laptop])
        # Public DNS for the server's name, as the laptop sees it.
        hosts = NETNS_ETC / self.laptop.ns / "hosts"
        hosts.write_text(f"127.0.0.1 localhost\n{self.server.ipv4} {SERVER_NAME}\n")
        self.home = lab.tempdir("admin-home")
        (self.home / ".gitconfig").write_text(
            "[user]\n\tname = Alice Admin\n\temail = alice@example.com\n"
            "[init]\n\tdefaultBranch = main\n[safe]\n\tdirectory = *\n")
        self.admin_env = {"HOME": str(self.home)}
        self.checkout = self.home / "acme-mesh"

    # --- running commands -------------------------------------------------------------------

    def admin(self, command: str, cwd: Path | None = None) -> str:
        """One README line on the admin's machine, in `cwd` (the checkout after `cd acme-mesh`)."""
        argv = shlex.split(command)
        if argv[0] == "meshctl":
            argv = [*meshctl_argv(), *argv[1:]]
        env = {**self.admin_env, "MESHCTL_STATE_DIR": str(self.lab.tempdir("admin-state"))}
        proc = self.lab.run(self.admin_node, ["sh", "-c", 'cd "$1" && shift && exec "$@"', "sh",
                                              str(cwd or self.checkout), *argv], env=env, check=False)
        assert proc.returncode == 0, f"admin: {command}: {proc.stdout}{proc.stderr}"
        return proc.stdout + proc.stderr

    def admin_chain(self, line: str) -> None:
        """A README line joined with &&: each part must succeed, in order."""
        for part in line.split(" && "):
            self.admin(part)

    def device(self, node: Node, args: Sequence[str], env: dict[str, str] | None = None) -> str:
        proc = self.lab.meshctl(node, list(args), env=env, check=False)
        assert proc.returncode == 0, f"{node.name}: meshctl {shlex.join(args)}: {proc.stdout}{proc.stderr}"
        return proc.stdout

    def status(self, node: Node) -> dict[str, Any]:
        return dict(json.loads(self.device(node, ["status", "--json"])))

    def merge_pull_request(self, branch: str, number: int) -> None:
        """GitHub's "Create a merge commit" button, done on the git host's side."""
        web = self.lab.tempdir(f"github-merge-{number}") / "repo"
        identity = {"GIT_AUTHOR_NAME": "GitHub", "GIT_AUTHOR_EMAIL": "noreply@github.com",
                    "GIT_COMMITTER_NAME": "GitHub", "GIT_COMMITTER_EMAIL": "noreply@github.com"}
        for argv in (["git", "clone", "-q", str(self.bare), str(web)],
                     ["git", "-C", str(web), "fetch", "-q", "origin", branch],
                     ["git", "-C", str(web), "merge", "-q", "--no-ff", "-m",
                      f"Merge pull request #{number} from acme/{branch}", "FETCH_HEAD"],
                     ["git", "-C", str(web), "push", "-q", "origin", "main"]):
            self.lab.run(self.internet, argv, env=identity)

    def pull_request_check(self) -> str:
        """What the repository's CI runs on the pull request (.github/workflows/meshctl-verify.yml)."""
        self.admin("git fetch -q origin main")
        return self.admin("meshctl repo verify . --base origin/main")

    def cron_once(self, node: Node) -> str:
        """Run the job of packaging/meshctl.cron the way cron does: its own environment only."""
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
    with Lab("wt") as lab:
        w = Walkthrough(lab)
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
    """The same, except that the server publishes its IP and runs `meshctl up` too: MagicDNS,
    ping and ssh by name end to end while the agent cannot use the README's variant yet."""
    run_walkthrough(walk, server_agent=True)


def run_walkthrough(w: Walkthrough, *, server_agent: bool) -> None:

    # 1. The admin creates the mesh.
    out = w.admin("meshctl init acme-mesh --name acme", cwd=w.home)
    assert f"created admin key {w.home}/.config/meshctl/admin.key" in out
    assert (w.home / ".config/meshctl/admin.key").stat().st_mode & 0o077 == 0
    w.admin(f"git remote add origin {w.url}")
    w.admin("git push -u origin main")
    invite = w.admin("meshctl admin invite").strip().splitlines()[-1]
    match = re.fullmatch(rf"meshctl join {re.escape(w.url)} --root (sha256:[0-9a-f]{{64}})", invite.strip())
    assert match, invite
    root = match[1]

    # 2. Each device asks to join: the laptop behind NAT, the server with its public name.
    out = w.device(w.laptop, ["join", w.url, "--name", "laptop", "--root", root])
    assert out.splitlines()[0] == "join request for laptop pushed to branch join/laptop"
    out = w.device(w.server, ["join", w.url, "--name", "server", "--root", root,
                              "--endpoint", f"{w.server.ipv4 if server_agent else SERVER_NAME}:51820"])
    assert out.splitlines()[0] == "join request for server pushed to branch join/server"
    keys = Path(w.lab.meshctl_env(w.laptop)["MESHCTL_STATE_DIR"]) / "keys"
    assert all(p.stat().st_mode & 0o077 == 0 for p in keys.iterdir())

    # 3. The admin approves each pull request, which is then merged (one after the other).
    for number, (name, extra) in enumerate(
            (("laptop", "--owner alice@example.com"), ("server", "--tag tag:server")), start=1):
        w.admin_chain(f"git fetch origin join/{name} && git checkout -B join/{name} FETCH_HEAD && git rebase main")
        assert w.pull_request_check().startswith("ok: mesh acme")  # CI on the join request
        out = w.admin(f"meshctl admin approve {name} {extra}")
        assert re.match(rf"approved {name}: 100\.64\.0\.{number} fd", out), out
        w.admin(f"git push --force-with-lease origin join/{name}")
        assert w.pull_request_check().startswith(f"ok: mesh acme, root v1, serial {number + 1}, {number} members")
        w.merge_pull_request(f"join/{name}", number)
        w.admin_chain("git checkout main && git pull")  # before the next approval

    # 4. Devices come up: the laptop runs the agent, the server syncs from cron.
    out = w.device(w.laptop, ["up"])
    assert re.match(r"meshctl is up on \S+ \(agent pid \d+, serial 3\)", out), out
    if server_agent:
        out = w.device(w.server, ["up"])
        assert re.match(r"meshctl is up on \S+ \(agent pid \d+, serial 3\)", out), out
    else:
        out = w.cron_once(w.server)
        assert "accepted serial 3" in out

    laptop_status, server_status = w.status(w.laptop), w.status(w.server)
    assert laptop_status["self"]["name"] == "laptop" and server_status["self"]["name"] == "server"
    assert [p["name"] for p in laptop_status["peers"]] == ["server"]
    assert [p["name"] for p in server_status["peers"]] == ["laptop"]
    server_ip = server_status["self"]["mesh_ips"][0]
    human = w.device(w.laptop, ["status"])
    assert "server" in human and server_ip in human

    # MagicDNS names every member: ping and ssh the server by name from the laptop.
    resolved = w.lab.run(w.laptop, ["getent", "ahostsv4", "server.acme.mesh"], check=False).stdout.split()
    assert resolved[:1] == [server_ip], resolved

    def pings() -> bool:
        return w.lab.run(w.laptop, ["ping", "-c", "1", "-W", "1", "server.acme.mesh"], check=False).returncode == 0

    try:
        poll(pings, "ping server.acme.mesh from the laptop", timeout=PING_TIMEOUT_S)
    except Exception as exc:
        raise AssertionError(f"{exc}\n{w.diagnostics()}") from None
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
