"""bench/peers.py --quick end to end in the lab (about 100 s on a 2-core machine): every row has
figures for all three systems, the settings that must be equal are, each path is the one its row
claims, and nothing of the run is left behind, also after Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lab import lab_unavailable

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / "bench" / "peers.py"
TOOLS = ("nebula", "nebula-cert", "tincd", "wireguard-go", "wg", "iperf3", "turnserver", "git", "conntrack")
RUN_TIMEOUT_S = 420


def need_tools() -> None:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (the Makefile's APT_PACKAGES)")


def leftovers(lab: str) -> list[str]:
    """Namespaces and temp dirs of one lab run that still exist."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    names = [line.split(" ", 1)[0] for line in listing.splitlines() if line.startswith(f"{lab}-")]
    return names + [str(p) for p in Path("/tmp").glob(f"{lab}-*-lab")]


def test_quick_run_measures_every_row_for_all_three(tmp_path: Path) -> None:
    need_tools()
    out = tmp_path / "peers.json"
    proc = subprocess.run([sys.executable, str(PEERS), "--quick", "--json", str(out)], capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S, env=os.environ.copy())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc: dict[str, Any] = json.loads(out.read_text())
    meta, samples = doc["meta"], doc["samples"]
    assert not meta.get("failures"), meta.get("failures")
    assert not leftovers(meta["lab"])
    systems = ("meshctl", "nebula", "tinc")
    # Equal for all three, read back from the kernel.
    assert meta["mtu"] == dict.fromkeys(systems, 1420)
    for system in systems:
        assert meta["udp_buffers"][system], system
        assert all(rcv == snd == 16 * 2**20 for rcv, snd in meta["udp_buffers"][system]), meta["udp_buffers"]
    # The first replies: a and b pinging alone, then both, then through the server.
    for system in systems:
        sides = [next(iter(s)) for s in samples["first_reply"][system]]
        assert sides == ["a", "b"], (system, sides)
        for metric in ("first_reply", "first_reply_both", "first_reply_blocked"):
            values = [v for s in samples[metric][system] for v in s.values()]
            assert values and all(v is not None and 0 < v < 30 for v in values), (metric, system, values)
    # Each path is the one its row claims: the server host saw (almost) none of the direct bytes and
    # all of the relayed ones.
    for system in systems:
        assert all(share < 0.25 for share in samples["share_direct"][system]), samples["share_direct"]
        assert all(share > 0.9 for share in samples["share_relayed"][system]), samples["share_relayed"]
        for metric in ("throughput_direct", "throughput_relayed", "server_cpu_per_100"):
            assert samples[metric][system] and all(v > 0 for v in samples[metric][system]), (metric, system)
        assert samples["idle_cpu"][system] and samples["server_idle_cpu"][system]
    rss = samples["rss_start"]["meshctl"][0]
    assert set(rss) == {"agent", "wireguard-go"} and all(v > 1 for v in rss.values()), rss
    assert set(samples["rss_start"]["nebula"][0]) == {"nebula"}
    assert set(samples["rss_start"]["tinc"][0]) == {"tincd"}
    # The table and the one-line summary.
    assert "| measure | meshctl | Nebula | tinc |" in proc.stdout
    assert [row["key"] for row in doc["rows"]][:3] == ["first-reply", "first-reply-both", "first-reply-relayed"]
    assert "meshctl/Nebula: first reply " in proc.stdout and " | meshctl/tinc: first reply " in proc.stdout


def test_ctrl_c_removes_the_lab() -> None:
    need_tools()
    bench = subprocess.Popen([sys.executable, str(PEERS), "--quick"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert bench.stdout is not None
        line = ""
        while not line.startswith("lab "):  # built; the first system's server is starting
            line = bench.stdout.readline()
            assert line, bench.stderr.read() if bench.stderr else ""
        lab = line.split()[1]
        assert leftovers(lab)
        bench.send_signal(signal.SIGINT)
        _, err = bench.communicate(timeout=120)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert bench.returncode == 130, err[-2000:]
    assert "interrupted: the lab is removed" in err
    assert not leftovers(lab)
