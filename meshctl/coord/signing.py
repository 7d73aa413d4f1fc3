"""Detached signatures over exact file bytes (pure).

A signature covers `DOMAIN || file_type || 0x00 || network_id || 0x00 || bytes`,
so a signature made for one file type or one mesh cannot be replayed on
another. Signatures live in a sidecar `<file>.sig`:

    {"signatures": [{"keyid": "<16 hex>", "sig": "<base64 of 64 bytes>"}]}

Git commit signatures are deliberately ignored: web merges drop them, while
file bytes survive every merge method.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from meshctl.coord import strictjson
from meshctl.errors import ParseError
from meshctl.keys import SIG_LEN, SigningKey, VerifyKey

DOMAIN: Final = b"meshctl signed file v1\x00"
MAX_SIG_FILE_BYTES: Final = 16 * 1024
MAX_SIGNATURES: Final = 32

FILE_TYPES: Final = ("root", "state", "peer", "endpoint", "enrollment")  # the last two: a device's own branch


class SignatureFormatError(ParseError):
    """A .sig file is malformed."""


@dataclass(frozen=True, slots=True)
class Signature:
    keyid: str
    sig: bytes


def signed_message(file_type: str, network_id: str, data: bytes) -> bytes:
    if file_type not in FILE_TYPES:
        raise ValueError(f"unknown file type {file_type!r}")
    return DOMAIN + file_type.encode() + b"\x00" + network_id.encode() + b"\x00" + data


def sign(key: SigningKey, file_type: str, network_id: str, data: bytes) -> Signature:
    return Signature(key.public().key_id(), key.sign(signed_message(file_type, network_id, data)))


def parse_signatures(data: bytes, *, name: str) -> tuple[Signature, ...]:
    doc = strictjson.loads(data, name=name, max_bytes=MAX_SIG_FILE_BYTES)
    if not isinstance(doc, dict) or set(doc) != {"signatures"}:
        raise SignatureFormatError(f"{name}: expected an object with only 'signatures'")
    entries = doc["signatures"]
    if not isinstance(entries, list) or len(entries) > MAX_SIGNATURES:
        raise SignatureFormatError(f"{name}: 'signatures' must be a list of at most {MAX_SIGNATURES}")
    out = []
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) != {"keyid", "sig"}:
            raise SignatureFormatError(f"{name}: each signature needs exactly 'keyid' and 'sig'")
        keyid, sig_text = entry["keyid"], entry["sig"]
        if not isinstance(keyid, str) or not isinstance(sig_text, str) or len(sig_text) > 128:
            raise SignatureFormatError(f"{name}: signature fields must be short strings")
        try:
            raw = base64.b64decode(sig_text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise SignatureFormatError(f"{name}: signature is not base64") from None
        if len(raw) != SIG_LEN:
            raise SignatureFormatError(f"{name}: signature must be {SIG_LEN} bytes")
        out.append(Signature(keyid, raw))
    return tuple(out)


def marshal_signatures(sigs: Iterable[Signature]) -> bytes:
    unique = {s.keyid: s for s in sigs}
    return strictjson.dumps(
        {
            "signatures": [
                {"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode("ascii")}
                for s in sorted(unique.values(), key=lambda s: s.keyid)
            ]
        }
    )


def valid_signers(
    sigs: Iterable[Signature],
    keys: Iterable[VerifyKey],
    file_type: str,
    network_id: str,
    data: bytes,
) -> set[VerifyKey]:
    """The distinct keys among `keys` that made a valid signature over `data`."""
    by_id = {k.key_id(): k for k in keys}
    message = signed_message(file_type, network_id, data)
    good: set[VerifyKey] = set()
    for s in sigs:
        key = by_id.get(s.keyid)
        if key is not None and key not in good and key.verify(s.sig, message):
            good.add(key)
    return good
