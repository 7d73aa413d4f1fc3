#!/usr/bin/env python3
"""Issue 2 benchmark: a cold `meshctl sync --dry-run` on a 10,000-peer repository.

Builds the repository with the library (not 10,000 CLI calls) and times the real CLI in
subprocesses, fetching it two ways: from `git daemon` on loopback (git://, as a node fetches
from its git host: the server packs) and as a local path (libgit2's local transport packs
in-process, about 0.8 s more here). Baseline in the same run: `meshctl version` (interpreter +
CLI start-up), so the table also shows sync minus start-up.
Goal on a 2-core machine: cold <= 2 s. The no-op sync (goal 0.2 s) needs a configured interface
to read back, which a dry run on a bare state dir has not: bench/dataplane_sync_scale.py times it
on a real wireguard-go interface with 10,000 peers (root).

    python bench/coord_sync_scale.py [--peers 10000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meshctl.coord import admin, records, signing, verify  # noqa: E402
from meshctl.coord.node_state import NodeConfig, NodeState  # noqa: E402
from meshctl.keys import (  # noqa: E402
    DiscoPrivate,
    NodePrivate,
    SigningKey,
    write_private_key,  # noqa: E402
)


def build(repo: Path, n: int, state_dir: Path) -> None:
    now = int(time.time())
    key = SigningKey.generate()
    admin.init_repo(repo, "bench", "100.64.0.0/10", None, [key], 1, 1, now)
    co = admin.open_checkout(repo)
    nid = co.root.network_id
    (repo / "peers").mkdir(exist_ok=True)
    peers = {}
    for i in range(n):
        name = f"node{i:05d}"
        ident, wg, disco = SigningKey.generate(), NodePrivate.generate(), DiscoPrivate.generate()
        rec = records.PeerRecord(nid, name, ident.public(), wg.public(), disco.public(), (), now)
        data = records.marshal_peer(rec)
        (repo / "peers" / f"{name}.json").write_bytes(data)
        (repo / "peers" / f"{name}.json.sig").write_bytes(
            signing.marshal_signatures([signing.sign(ident, "peer", nid, data)]))
        v4 = co.state.ipv4_cidr[i + 1]
        peers[name] = records.Assignment(verify.sha256_hex(data), (v4, co.state.ipv6_prefix[int(v4)]))
        if i == 0:
            keys = state_dir / "keys"
            write_private_key(keys / "identity.key", ident)
            write_private_key(keys / "wireguard.key", wg)
            write_private_key(keys / "disco.key", disco)
    from dataclasses import replace

    admin.write_state(co, replace(co.state, peers=peers), [key], now)
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "bench"],
                   check=True)
    NodeState(state_dir).save_config(NodeConfig("node00000", str(repo), "main", co.fingerprint, nid))


def timed(argv: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peers", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    meshctl = os.environ.get("MESHCTL_BIN", f"{sys.executable} -m meshctl").split()
    # Byte-compile the package first: under PYTHONDONTWRITEBYTECODE (set in some shells and CI
    # images) every run would compile meshctl's modules from source again, 25 ms here, which
    # neither an installed package (pip compiles it) nor the binary (PyInstaller does) pays.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "meshctl")], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        repo, state = Path(tmp) / "coord", Path(tmp) / "state"
        t = time.perf_counter()
        build(repo, args.peers, state)
        print(f"built a {args.peers}-peer repository in {time.perf_counter() - t:.1f} s "
              f"(state.json {(repo / 'state.json').stat().st_size / 1e6:.1f} MB)")
        # No interface of that name exists: a dry run reads an empty host back and plans it all.
        env = {**os.environ, "MESHCTL_STATE_DIR": str(state), "PYTHONPATH": str(ROOT),
               "MESHCTL_INTERFACE": "benchnone0"}
        startup = statistics.median(timed([*meshctl, "version"], env) for _ in range(args.runs))
        with git_daemon(Path(tmp)) as port:
            served = f"git://127.0.0.1:{port}/coord"
            cold_git = statistics.median(cold_runs(meshctl, env, state, served, args.runs))
            cold_path = statistics.median(cold_runs(meshctl, env, state, str(repo), args.runs))
        rows = [("meshctl version (start-up baseline)", startup, None),
                ("cold sync --dry-run, git:// (clone + verify)", cold_git, 2.0),
                ("cold sync --dry-run, local path", cold_path, 2.0)]
        print(f"\n{'measurement':<46}{'median s':>10}{'minus start-up':>16}{'goal s':>8}")
        for label, value, goal in rows:
            extra = f"{value - startup:>16.3f}" if goal else f"{'':>16}"
            print(f"{label:<46}{value:>10.3f}{extra}{(f'{goal:.1f}' if goal else '-'):>8}")
        print(json.dumps({"peers": args.peers, "startup_s": startup, "cold_git_s": cold_git,
                          "cold_path_s": cold_path}))


def cold_runs(meshctl: list[str], env: dict[str, str], state: Path, url: str, runs: int) -> list[float]:
    """`sync --dry-run` with nothing cached: no clone, no trust memory, no record cache."""
    config = json.loads((state / "node.json").read_text())
    (state / "node.json").write_text(json.dumps({**config, "repo_url": url}))
    times = []
    for _ in range(runs):
        for f in ("trust.json", "netmap.json", "records-cache.json"):
            (state / f).unlink(missing_ok=True)
        subprocess.run(["rm", "-rf", str(state / "repo.git")], check=True)
        times.append(timed([*meshctl, "sync", "--dry-run"], env))
    return times


@contextlib.contextmanager
def git_daemon(base: Path) -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={base}",
                               "--listen=127.0.0.1", f"--port={port}", str(base)],
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield port
    finally:
        daemon.terminate()
        daemon.wait()

if __name__ == "__main__":
    main()
