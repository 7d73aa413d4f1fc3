"""A device's three private keys in the state directory (mode 0600, created once; the WireGuard
and disco keys are replaced by `meshctl rotate-keys`, the identity key never)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meshctl.errors import MeshctlError
from meshctl.fsutil import ensure_private_dir
from meshctl.keys import (
    DiscoPrivate,
    DiscoPublic,
    NodePrivate,
    NodePublic,
    SigningKey,
    load_disco_private,
    load_node_private,
    load_signing_key,
    write_private_key,
)

IDENTITY_FILE = "identity.key"
WIREGUARD_FILE = "wireguard.key"
DISCO_FILE = "disco.key"
NEXT_SUFFIX = ".next"  # a rotation's new keys, until the record that announces them is published


@dataclass(frozen=True, slots=True)
class DeviceKeys:
    identity: SigningKey
    wireguard: NodePrivate
    disco: DiscoPrivate


def load_device_keys(keys_dir: Path) -> DeviceKeys:
    return DeviceKeys(
        load_signing_key(keys_dir / IDENTITY_FILE),
        load_node_private(keys_dir / WIREGUARD_FILE),
        load_disco_private(keys_dir / DISCO_FILE),
    )


def load_public_keys(keys_dir: Path) -> tuple[NodePublic, DiscoPublic] | None:
    """This device's WireGuard and disco public keys in force, or None when it has none."""
    try:
        keys = load_device_keys(keys_dir)
    except MeshctlError:
        return None
    return keys.wireguard.public(), keys.disco.public()


def load_or_create_device_keys(keys_dir: Path) -> DeviceKeys:
    """Reuse existing keys (a re-run of join keeps the device's identity)."""
    ensure_private_dir(keys_dir.parent)
    ensure_private_dir(keys_dir)
    for name, make in ((IDENTITY_FILE, SigningKey.generate), (WIREGUARD_FILE, NodePrivate.generate),
                       (DISCO_FILE, DiscoPrivate.generate)):
        path = keys_dir / name
        if not path.exists():
            write_private_key(path, make())
    return load_device_keys(keys_dir)


def next_keys(keys_dir: Path) -> tuple[NodePrivate, DiscoPrivate]:
    """The WireGuard and disco keys a rotation moves to: made once and kept beside the keys in force
    (`*.next`) until `commit_next_keys`, so an interrupted rotation resumes with the same keys (the
    git host may have taken the record that announces them)."""
    out = []
    for name, make, load in ((WIREGUARD_FILE, NodePrivate.generate, load_node_private),
                             (DISCO_FILE, DiscoPrivate.generate, load_disco_private)):
        path = keys_dir / (name + NEXT_SUFFIX)
        if not path.exists():
            write_private_key(path, make())
        out.append(load(path))
    wg, disco = out
    assert isinstance(wg, NodePrivate) and isinstance(disco, DiscoPrivate)
    return wg, disco


def commit_next_keys(keys_dir: Path) -> None:
    """The rotation's keys become the keys in force (each file replaced atomically; the old ones are gone)."""
    for name in (WIREGUARD_FILE, DISCO_FILE):
        (keys_dir / (name + NEXT_SUFFIX)).replace(keys_dir / name)


def keys_made_at(keys_dir: Path) -> int | None:
    """When the WireGuard key in force was written (made or rotated in)."""
    try:
        return int((keys_dir / WIREGUARD_FILE).stat().st_mtime)
    except OSError:
        return None
