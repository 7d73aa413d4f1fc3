"""Key types (wg-compatible, never printed) and small pure helpers of the join flow."""

from __future__ import annotations

import ipaddress
import os
import pickle
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from meshctl.coord import admin, records
from meshctl.coord.join import pull_request_url
from meshctl.keys import DiscoPrivate, NodePrivate, NodePublic, SigningKey, load_node_private, write_private_key


@pytest.mark.skipif(shutil.which("wg") is None, reason="needs `wg` (Debian package wireguard-tools)")
def test_wireguard_keys_match_wg_pubkey(tmp_path: Path) -> None:
    key = NodePrivate.generate()
    path = tmp_path / "wg.key"
    write_private_key(path, key)
    wg_pub = subprocess.run(["wg", "pubkey"], input=path.read_text(), capture_output=True, text=True,
                            check=True).stdout.strip()
    assert wg_pub == key.public().b64()
    # And a key made by `wg genkey` loads and derives the same public key.
    genkey = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / "g.key").write_text(genkey + "\n")
    expected = subprocess.run(["wg", "pubkey"], input=genkey, capture_output=True, text=True, check=True).stdout
    assert load_node_private(tmp_path / "g.key").public() == NodePublic.from_b64(expected.strip())


def test_private_keys_are_never_shown(tmp_path: Path) -> None:
    for key in (SigningKey.generate(), NodePrivate.generate(), DiscoPrivate.generate()):
        raw = key.private_bytes_for_device()
        import base64

        secret = base64.b64encode(raw).decode()
        assert secret not in repr(key) and secret not in str(key) and raw.hex() not in repr(key)
        assert "redacted" in repr(key) and "redacted" in f"{key}"
        with pytest.raises(TypeError):
            pickle.dumps(key)
    path = tmp_path / "k" / "identity.key"
    write_private_key(path, SigningKey.generate())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_public_keys_compare_and_print_short() -> None:
    a = NodePrivate.generate().public()
    assert a == NodePublic(a.raw) and hash(a) == hash(NodePublic(a.raw))
    assert a.short().startswith("nodekey:") and len(a.short()) == len("nodekey:") + 8
    assert a != DiscoPrivate.generate().public()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("git@github.com:acme/mesh.git", "https://github.com/acme/mesh/compare/join/laptop?expand=1"),
        ("https://github.com/acme/mesh", "https://github.com/acme/mesh/compare/join/laptop?expand=1"),
        ("ssh://git@gitlab.com/acme/infra/mesh.git",
         "https://gitlab.com/acme/infra/mesh/-/merge_requests/new?merge_request%5Bsource_branch%5D=join/laptop"),
        ("git://192.0.2.1/mesh.git", None),
        ("/srv/git/mesh.git", None),
    ],
)
def test_pull_request_url(url: str, expected: str | None) -> None:
    assert pull_request_url(url, "join/laptop") == expected


def test_address_assignment_skips_magicdns_and_used() -> None:
    state = records.StateDoc("a" * 32, 1, 1, 0, ipaddress.IPv4Network("100.100.100.96/29"),
                             ipaddress.IPv6Network("fd00::/48"), "x.mesh", "0" * 64)
    from dataclasses import replace

    # In 100.100.100.96/29, .97-.99 are taken, .100 is the MagicDNS address: next is .101.
    used = {n: records.Assignment("0" * 64, (ipaddress.ip_address(f"100.100.100.{n}"),)) for n in (97, 98, 99)}
    state = replace(state, peers={str(k): v for k, v in used.items()})
    assert str(admin.next_ipv4(state)) == "100.100.100.101"
    more = {str(n): records.Assignment("0" * 64, (ipaddress.ip_address(f"100.100.100.{n}"),)) for n in (101, 102)}
    with pytest.raises(Exception, match="no free address left"):
        admin.next_ipv4(replace(state, peers={**state.peers, **more}))


def test_time_format_round_trip_and_validation() -> None:
    assert records.parse_time(records.format_time(1_800_000_000)) == 1_800_000_000
    for bad in ("2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-01-01 00:00:00", ""):
        with pytest.raises(ValueError):
            records.parse_time(bad)


def test_key_file_written_atomically_never_world_readable(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_private_key(tmp_path / "x.key", NodePrivate.generate())
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.key").stat().st_mode) == 0o600
    assert not list(tmp_path.glob("*.tmp"))
