"""Private keys are 0600 in a 0700 keys directory inside a 0700 state directory, whatever the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from meshctl.coord.admin import load_or_create_admin_key
from meshctl.identity import DISCO_FILE, IDENTITY_FILE, WIREGUARD_FILE, load_or_create_device_keys


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_device_keys_and_state_dir_are_private_even_with_umask_0(tmp_path: Path) -> None:
    state = tmp_path / "state"
    old = os.umask(0)
    try:
        load_or_create_device_keys(state / "keys")
    finally:
        os.umask(old)
    assert mode(state) == 0o700 and mode(state / "keys") == 0o700
    for name in (IDENTITY_FILE, WIREGUARD_FILE, DISCO_FILE):
        assert mode(state / "keys" / name) == 0o600, name
    assert sorted(p.name for p in (state / "keys").iterdir()) == sorted([IDENTITY_FILE, WIREGUARD_FILE, DISCO_FILE])


def test_an_existing_open_state_dir_is_tightened(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "keys").mkdir(parents=True)
    os.chmod(state, 0o755)
    os.chmod(state / "keys", 0o777)
    load_or_create_device_keys(state / "keys")
    assert mode(state) == 0o700 and mode(state / "keys") == 0o700


def test_admin_key_is_0600(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        load_or_create_admin_key(tmp_path / "cfg" / "admin.key")
    finally:
        os.umask(old)
    assert mode(tmp_path / "cfg" / "admin.key") == 0o600
    assert mode(tmp_path / "cfg") == 0o700
