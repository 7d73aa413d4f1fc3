"""A device's three private keys in the state directory (mode 0600, created once)."""

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
