"""The one-file binary (MESHCTL_BIN or dist/meshctl): everything every command needs is inside.

A missing hidden import or data file shows up here as a command that fails from the binary
while it works from the source tree.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from packaging_support import PACKAGING, ROOT, glibc_needed, have, prepare_node, run

import meshctl

# Commands and subcommands a person types; any other top-level command the binary lists is added.
HELP_COMMANDS = (
    ["init"], ["admin"], ["admin", "invite"], ["admin", "approve"], ["admin", "revoke"],
    ["admin", "renew"], ["admin", "sign"], ["repo", "verify"], ["join"], ["sync"], ["up"],
    ["down"], ["status"], ["whois"], ["netcheck"], ["acl", "check"], ["relay"], ["ping"], ["version"],
)


def one_file(meshctl_bin: list[str]) -> Path:
    if len(meshctl_bin) != 1 or not Path(meshctl_bin[0]).is_file():
        pytest.skip("MESHCTL_BIN is a command line, not one file")
    return Path(meshctl_bin[0])


def test_version(meshctl_bin: list[str]) -> None:
    proc = run([*meshctl_bin, "version"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"meshctl {meshctl.__version__}\n"


def test_every_command_has_help(meshctl_bin: list[str]) -> None:
    top = run([*meshctl_bin, "--help"])
    assert top.returncode == 0, top.stderr
    listed = set(re.findall(r"^│ (\w[\w-]*) ", top.stdout, re.M))
    assert {c[0] for c in HELP_COMMANDS} <= listed, top.stdout
    commands = [*HELP_COMMANDS, *([name] for name in sorted(listed - {c[0] for c in HELP_COMMANDS}))]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda args: (args, run([*meshctl_bin, *args, "--help"])), commands))
    for args, proc in results:
        assert proc.returncode == 0, f"meshctl {' '.join(args)} --help: {proc.stderr}"
        assert "Usage:" in proc.stdout


def test_every_module_and_the_template_are_inside(meshctl_bin: list[str]) -> None:
    from PyInstaller.archive.readers import CArchiveReader, ZlibArchiveReader

    binary = one_file(meshctl_bin)
    archive = CArchiveReader(str(binary))
    template = {str(p.relative_to(ROOT)) for p in (ROOT / "coord-repo-template").rglob("*") if p.is_file()}
    assert template <= set(archive.toc), "coord-repo-template is not bundled whole"
    pyz_path = binary.parent / f".{binary.name}.pyz.check"
    try:
        pyz_path.write_bytes(archive.extract("PYZ.pyz"))
        modules = set(ZlibArchiveReader(str(pyz_path)).toc)
    finally:
        pyz_path.unlink(missing_ok=True)
    ours = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            for p in (ROOT / "meshctl").rglob("*.py")}
    assert ours - modules == set()
    assert not {m for m in modules if m == "lab" or m.startswith("lab.")}, "the lab is test tooling, not product"
    lazily_imported = {"pygit2", "pyroute2", "dnslib", "cryptography.hazmat.primitives.asymmetric.ed25519",
                       "cryptography.hazmat.primitives.asymmetric.x25519", "shellingham"}
    assert lazily_imported - modules == set()


def test_a_node_from_init_to_status(meshctl_bin: list[str], tmp_path: Path) -> None:
    """init, join, approve, sync --dry-run (git, signatures, netlink read, nft plan), then the
    commands that read the accepted state, all from the binary."""
    checkout, state = prepare_node(meshctl_bin, tmp_path)
    env = {"MESHCTL_STATE_DIR": str(state), "MESHCTL_INTERFACE": "pkgtest0"}
    verify = run([*meshctl_bin, "repo", "verify", str(checkout)], env=env)
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout.startswith("ok: mesh acme, root v1, serial 2, 1 members")
    status = run([*meshctl_bin, "status", "--json"], env=env)
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["self"]["name"] == "dev1" and doc["coordination"]["serial"] == 2
    whois = run([*meshctl_bin, "whois", doc["self"]["mesh_ips"][0]], env=env)
    assert whois.returncode == 0 and whois.stdout.startswith("dev1.acme.mesh\n"), whois.stderr
    acl = run([*meshctl_bin, "acl", "check", "dev1", "dev1:22"], env=env)
    assert acl.returncode in (0, 4), acl.stderr  # allowed or denied: both answers
    assert re.match(r"(allow|deny): dev1 -> dev1:22 \(tcp\): ", acl.stdout)


def test_netcheck_runs(meshctl_bin: list[str]) -> None:
    """The NAT code is inside: a STUN server that does not answer is reported, not a crash."""
    proc = run([*meshctl_bin, "netcheck", "--json", "--stun", "127.0.0.1:9", "--timeout", "0.3"])
    assert proc.returncode in (0, 1), proc.stderr
    if proc.returncode == 0:
        report = json.loads(proc.stdout)
        assert report["udp"] is False


@pytest.mark.skipif(not have("objdump"), reason="objdump is not installed (Debian: binutils)")
def test_glibc_needed_is_what_the_readme_says(meshctl_bin: list[str]) -> None:
    stated = re.search(r"\*\*Oldest glibc: (\d+)\.(\d+)\*\*", (PACKAGING / "README.md").read_text())
    assert stated, "packaging/README.md must state the oldest glibc"
    needed = glibc_needed(one_file(meshctl_bin))
    assert needed <= (int(stated[1]), int(stated[2])), f"the binary needs glibc {needed}"
