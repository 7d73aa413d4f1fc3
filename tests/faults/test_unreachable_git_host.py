"""Finding 7 of issue 21: a git host that does not answer made `join` and `sync` hang about 135 s
(the kernel's SYN retries) before "Connection timed out". Now both give up within 20 s.

    dev (public) -- internet (drops everything to 198.51.100.99 and to the DNS server 198.51.100.53)
                       git daemon on 198.51.100.1

The drop is silent (no ICMP, no reset), as a firewall or a dead route makes it.
"""

from __future__ import annotations

import time
from typing import Final

import pytest

from lab import Lab
from lab.core import NETNS_ETC
from lab.scenario import MeshScenario

pytestmark = pytest.mark.netns

BLACKHOLE: Final = "198.51.100.99"
BLACKHOLE6: Final = "2001:db8:100::99"
SILENT_DNS: Final = "198.51.100.53"
GIVE_UP_S: Final = 20.0
PATIENCE_S: Final = 60.0  # the old code's hang ends in a TimeoutExpired, not a wait of minutes


def _ruleset(extra: str = "") -> str:
    return ("table inet mblackhole {\n chain pre {\n  type filter hook prerouting priority -300; policy accept;\n"
            f"  ip daddr {{ {BLACKHOLE}, {SILENT_DNS} }} drop\n  ip6 daddr {BLACKHOLE6} drop\n{extra} }}\n}}\n")


def test_join_and_sync_give_up_on_a_silent_git_host_within_20_s(lab: Lab) -> None:
    inet = lab.internet()
    bare = lab.bare_repo("acme")
    url = lab.git_daemon(bare)
    dev = lab.public_host("dev")
    mesh = MeshScenario(lab, url, bare, "acme")
    mesh.init()
    lab.run(inet, ["nft", "-f", "-"], input=_ruleset())
    (NETNS_ETC / dev.ns / "resolv.conf").write_text(f"nameserver {SILENT_DNS}\n")
    # A name with two addresses, both dropped: each gets its own connection attempt.
    (NETNS_ETC / dev.ns / "hosts").write_text(f"127.0.0.1 localhost\n{BLACKHOLE} git.dual.example\n"
                                              f"{BLACKHOLE6} git.dual.example\n")
    cases = {
        "git:// to an address that drops": f"git://{BLACKHOLE}/acme.git",
        "ssh:// to an address that drops": f"ssh://git@{BLACKHOLE}/acme.git",
        "https:// to an address that drops": f"https://{BLACKHOLE}/acme.git",
        "a name whose DNS server is silent": "git@git.unreachable.example:acme/acme.git",
        "a name with two addresses that drop": "ssh://git@git.dual.example/acme.git",
    }
    took = {}
    for what, bad_url in cases.items():
        started = time.monotonic()
        r = lab.meshctl(dev, ["join", bad_url, "--name", "dev", "--root", mesh.fingerprint], check=False,
                        timeout=PATIENCE_S)
        took[what] = time.monotonic() - started
        assert r.returncode == 1, (what, r.stdout, r.stderr)
        assert r.stderr.startswith(f"meshctl: {bad_url}: repository unreachable: "), (what, r.stderr)
        assert len(r.stderr.splitlines()) == 2 and "Traceback" not in r.stderr
    # sync: a member whose git host stops answering.
    (NETNS_ETC / dev.ns / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    (NETNS_ETC / dev.ns / "hosts").write_text("127.0.0.1 localhost\n")
    mesh.join(dev, "dev")
    mesh.approve("dev")
    assert lab.meshctl(dev, ["sync", "--dry-run"]).returncode == 0
    lab.run(inet, ["nft", "add", "rule", "inet", "mblackhole", "pre", "ip", "saddr", str(dev.ipv4), "ip", "daddr",
                   str(inet.service_ips[0]), "drop"])
    started = time.monotonic()
    r = lab.meshctl(dev, ["sync", "--dry-run"], check=False, timeout=PATIENCE_S)
    took["sync, the git daemon now dropping"] = time.monotonic() - started
    assert r.returncode == 1
    assert r.stderr.startswith(f"meshctl: {url}: repository unreachable: ")
    assert "hint: nothing was changed; the last good configuration is kept" in r.stderr
    print("\n".join(f"{what:<40} gave up after {s:4.1f} s" for what, s in took.items()))
    assert {what: s for what, s in took.items() if s >= GIVE_UP_S} == {}
