"""Key types, one per role, and their text forms.

- SigningKey / VerifyKey: Ed25519 device identity and admin/root keys (`ed25519:<base64>`).
- NodePrivate / NodePublic: WireGuard X25519 keys, base64 exactly as `wg` prints them.
- DiscoPrivate / DiscoPublic: X25519 keys that seal disco messages end to end.

Private keys have no __str__ (it raises), a redacted __repr__, and compare in
constant time; their bytes leave only through `write_private_key`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from meshctl.errors import MeshctlError, ParseError

KEY_LEN: Final = 32
ED25519_PREFIX: Final = "ed25519:"
SIG_LEN: Final = 64


def _b64decode_key(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ParseError(f"{what}: not valid base64") from None
    if len(raw) != KEY_LEN:
        raise ParseError(f"{what}: expected {KEY_LEN} bytes, got {len(raw)}")
    return raw


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


class _Public:
    """A public key: value semantics, hashable, prints in full."""

    __slots__ = ("raw",)
    short_prefix = "key"

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_LEN:
            raise ParseError(f"public key must be {KEY_LEN} bytes")
        self.raw = bytes(raw)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and hmac.compare_digest(self.raw, other.raw)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.raw))

    def b64(self) -> str:
        return _b64(self.raw)

    def short(self) -> str:
        """A short form for logs, like Tailscale's `nodekey:ab12cd34`."""
        return f"{self.short_prefix}:{self.raw.hex()[:8]}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.short()})"


class _Private:
    """A private key: never printed, compared in constant time."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_LEN:
            raise ParseError("private key must be 32 bytes")
        self._raw = bytes(raw)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<redacted>)"

    def __str__(self) -> str:
        return self.__repr__()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return id(self)

    def __reduce__(self) -> str:  # no pickling of secrets
        raise TypeError("private keys cannot be pickled")

    def private_bytes_for_device(self) -> bytes:
        """The raw bytes, only for handing to WireGuard or a key file."""
        return self._raw


# --- Ed25519 identity / admin / root keys ----------------------------------------------


class VerifyKey(_Public):
    short_prefix = "ed25519"

    @classmethod
    def from_text(cls, text: str) -> VerifyKey:
        if not isinstance(text, str) or not text.startswith(ED25519_PREFIX):
            raise ParseError(f"identity key must start with {ED25519_PREFIX!r}")
        return cls(_b64decode_key(text[len(ED25519_PREFIX) :], "identity key"))

    def text(self) -> str:
        return ED25519_PREFIX + self.b64()

    def key_id(self) -> str:
        """A stable short id naming this key in signature files."""
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


class SigningKey(_Private):
    @classmethod
    def generate(cls) -> SigningKey:
        key = Ed25519PrivateKey.generate()
        return cls(key.private_bytes_raw())

    def public(self) -> VerifyKey:
        key = Ed25519PrivateKey.from_private_bytes(self._raw)
        return VerifyKey(key.public_key().public_bytes_raw())

    def sign(self, message: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self._raw).sign(message)


# --- X25519: WireGuard and disco --------------------------------------------------------


def _x25519_public(raw_private: bytes) -> bytes:
    key = X25519PrivateKey.from_private_bytes(raw_private)
    return key.public_key().public_bytes_raw()


def _x25519_generate() -> bytes:
    # Clamp like `wg genkey` so the stored form matches what wg would print.
    raw = bytearray(os.urandom(KEY_LEN))
    raw[0] &= 248
    raw[31] &= 127
    raw[31] |= 64
    return bytes(raw)


class NodePublic(_Public):
    short_prefix = "nodekey"

    @classmethod
    def from_b64(cls, text: str) -> NodePublic:
        return cls(_b64decode_key(text, "WireGuard public key"))


class NodePrivate(_Private):
    @classmethod
    def generate(cls) -> NodePrivate:
        return cls(_x25519_generate())

    def public(self) -> NodePublic:
        return NodePublic(_x25519_public(self._raw))


class DiscoPublic(_Public):
    short_prefix = "discokey"

    @classmethod
    def from_b64(cls, text: str) -> DiscoPublic:
        return cls(_b64decode_key(text, "disco key"))


class DiscoPrivate(_Private):
    @classmethod
    def generate(cls) -> DiscoPrivate:
        return cls(_x25519_generate())

    def public(self) -> DiscoPublic:
        return DiscoPublic(_x25519_public(self._raw))

    def shared_secret(self, peer: DiscoPublic) -> bytes:
        """Raw X25519 shared secret with a peer (the sealing layer derives keys from it)."""
        ours = X25519PrivateKey.from_private_bytes(self._raw)
        return ours.exchange(X25519PublicKey.from_public_bytes(peer.raw))


# --- key files ---------------------------------------------------------------------------

PRIVATE_FILE_MODE: Final = 0o600


def write_private_key(path: Path, key: _Private) -> None:
    """Write a private key file with mode 0600 from the first byte (no window at 0644)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    try:
        os.write(fd, (_b64(key.private_bytes_for_device()) + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, PRIVATE_FILE_MODE)
    os.replace(tmp, path)


def read_private_raw(path: Path) -> bytes:
    try:
        text = path.read_text("ascii").strip()
    except FileNotFoundError:
        raise MeshctlError(f"{path}: key file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MeshctlError(f"{path}: cannot read key file ({type(exc).__name__})") from None
    try:
        return _b64decode_key(text, str(path))
    except ParseError:
        raise MeshctlError(f"{path}: not a valid key file") from None


def load_signing_key(path: Path) -> SigningKey:
    return SigningKey(read_private_raw(path))


def load_node_private(path: Path) -> NodePrivate:
    return NodePrivate(read_private_raw(path))


def load_disco_private(path: Path) -> DiscoPrivate:
    return DiscoPrivate(read_private_raw(path))
