"""The systemd units, timer, cron line and logrotate file: they parse and say what they must."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from packaging_support import PACKAGING, have

SERVICE_SECTIONS = {"Unit", "Service", "Install"}
NEEDED_CAPS = {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE"}


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd's ini dialect: sections, repeatable keys, '#'/';' comments, no continuation here."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"{path.name}:{number}: keep one setting per line"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}:{number}: setting before any section"
        key, sep, value = line.partition("=")
        assert sep and key.strip() == key and re.fullmatch(r"[A-Za-z]+", key), f"{path.name}:{number}: {raw!r}"
        current.setdefault(key, []).append(value.strip())
    return sections


def one(sections: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = sections[section][key]
    assert len(values) == 1, f"{key} set {len(values)} times"
    return values[0]


def test_agent_unit() -> None:
    unit = parse_unit(PACKAGING / "meshctl.service")
    assert set(unit) == SERVICE_SECTIONS
    assert one(unit, "Service", "ExecStart") == "/usr/local/bin/meshctl up --foreground"
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "StateDirectory") == "meshctl"
    assert one(unit, "Service", "StateDirectoryMode") == "0700"
    assert set(one(unit, "Service", "CapabilityBoundingSet").split()) == NEEDED_CAPS
    assert "AF_NETLINK" in one(unit, "Service", "RestrictAddressFamilies").split()
    assert one(unit, "Service", "DeviceAllow") == "/dev/net/tun rw"
    assert one(unit, "Service", "PrivateTmp") == "yes"  # the one-file binary unpacks into /tmp
    assert "/run" in one(unit, "Service", "ReadWritePaths").split()  # /run/wireguard/*.sock
    assert "network-online.target" in one(unit, "Unit", "After").split()
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_sync_service_and_timer() -> None:
    service = parse_unit(PACKAGING / "meshctl-sync.service")
    assert one(service, "Service", "Type") == "oneshot"
    assert one(service, "Service", "ExecStart") == "/usr/local/bin/meshctl sync"
    assert set(one(service, "Service", "CapabilityBoundingSet").split()) == NEEDED_CAPS
    assert "Install" not in service, "the timer starts it; the service is not enabled by itself"
    timer = parse_unit(PACKAGING / "meshctl-sync.timer")
    assert set(timer) == {"Unit", "Timer", "Install"}
    assert one(timer, "Timer", "RandomizedDelaySec") == "60s"
    assert one(timer, "Timer", "OnUnitActiveSec") == "5min"
    assert one(timer, "Install", "WantedBy") == "timers.target"


def test_cron_line() -> None:
    lines = [line for line in (PACKAGING / "meshctl.cron").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    env = dict(line.split("=", 1) for line in lines if re.match(r"^[A-Z_]+=", line))
    jobs = [line.split() for line in lines if not re.match(r"^[A-Z_]+=", line)]
    assert jobs == [["*/5", "*", "*", "*", "*", "root", "/usr/local/bin/meshctl", "sync", "--jitter", "60"]]
    path = env["PATH"].split(":")
    assert "/usr/sbin" in path, "nft lives in /usr/sbin, which is not in cron's default PATH"
    assert "/usr/bin" in path and "/usr/local/bin" in path


def test_logrotate_file() -> None:
    text = (PACKAGING / "meshctl.logrotate").read_text()
    assert re.search(r"^/var/lib/meshctl/agent\.log \{$", text, re.M)
    assert "copytruncate" in text  # the agent keeps agent.log open
    assert text.count("{") == text.count("}") == 1


@pytest.mark.skipif(not have("systemd-analyze"), reason="systemd-analyze is not installed (Debian: systemd)")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd's own parser; ExecStart must exist, so point it at a stand-in executable."""
    stand_in = tmp_path / "meshctl"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    names = ["meshctl.service", "meshctl-sync.service", "meshctl-sync.timer"]
    if (PACKAGING / "meshctl-relay.service").exists():
        names.append("meshctl-relay.service")
    for name in names:
        text = (PACKAGING / name).read_text().replace("/usr/local/bin/meshctl", str(stand_in))
        (tmp_path / name).write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / n) for n in names)],
                          capture_output=True, text=True, timeout=60, check=False)
    problems = (proc.stdout + proc.stderr).splitlines()
    assert proc.returncode == 0, proc.stderr
    assert problems == [], "\n".join(problems)


@pytest.mark.skipif(not have("systemd-analyze"), reason="systemd-analyze is not installed (Debian: systemd)")
def test_systemd_analyze_catches_a_bad_key(tmp_path: Path) -> None:
    """The check above can fail: an unknown setting is reported."""
    stand_in = tmp_path / "meshctl"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    text = (PACKAGING / "meshctl.service").read_text().replace("/usr/local/bin/meshctl", str(stand_in))
    (tmp_path / "meshctl.service").write_text(text.replace("PrivateTmp=yes", "PrivateTemp=yes"))
    proc = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "meshctl.service")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert "Unknown key 'PrivateTemp'" in proc.stderr
