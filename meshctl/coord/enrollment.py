"""Auth keys and the enrollment a device publishes with one (pure).

An admin makes an auth key with `meshctl admin authkey create`: a fresh Ed25519 key pair. Its
public half goes into state.json under `authkeys` (records.AuthKey: tags, pool, expiry, reuse),
signed by the admins like everything there; its private half is printed once, in the key text
`mesh-auth-<ID>-<SEED>` (ID: the public key's key id, SEED: 64 hex digits), and never enters the
repository.

A device holding the key (`meshctl join URL --root FP --auth-key KEY`) publishes on its own branch
`endpoints/<name>` (beside its endpoint record):
- `peer.json(.sig)`: its record, self-signed exactly as a join request;
- `enrollment.json(.sig)`:
      {"type": "meshctl-enrollment", "network_id", "authkey": ID, "name", "record_sha256",
       "addresses": [v4, v6], "created"[, "tags": [...]]}
  signed by BOTH the auth key and the device's identity key, as file type "enrollment" (it can be
  replayed neither as another document nor in another mesh). `record_sha256` binds the peer record
  (its keys) to the enrollment; `tags`, when present, asks for fewer tags than the key allows.

coord/delegation.py decides whether nodes accept it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Final

from meshctl.coord import records, signing, strictjson
from meshctl.coord.records import NAME_RE, NETWORK_ID_RE, SHA256_RE, TAG_RE
from meshctl.errors import UsageError
from meshctl.keys import SigningKey

ENROLLMENT_TYPE: Final = "meshctl-enrollment"
FILE_TYPE: Final = "enrollment"  # the signature's type prefix (coord/signing.py FILE_TYPES)
PEER_FILE: Final = "peer.json"
PEER_SIG_FILE: Final = PEER_FILE + ".sig"
ENROLLMENT_FILE: Final = "enrollment.json"
ENROLLMENT_SIG_FILE: Final = ENROLLMENT_FILE + ".sig"
BRANCH_FILES: Final = (PEER_FILE, PEER_SIG_FILE, ENROLLMENT_FILE, ENROLLMENT_SIG_FILE)
MAX_ENROLLMENT_BYTES: Final = 4 * 1024

KEY_PREFIX: Final = "mesh-auth-"
KEY_TEXT_RE: Final = re.compile(r"\Amesh-auth-([0-9a-f]{16})-([0-9a-f]{64})\Z")


# --- the auth key's text ----------------------------------------------------------------------


def new_authkey() -> tuple[SigningKey, str]:
    """A fresh auth key and its text (the one place its private half is ever shown)."""
    key = SigningKey.generate()
    return key, key_text(key)


def key_text(key: SigningKey) -> str:
    return f"{KEY_PREFIX}{key.public().key_id()}-{key.private_bytes_for_device().hex()}"


def parse_key_text(text: str, option: str = "--auth-key") -> SigningKey:
    """The auth key in `text`; a UsageError that never repeats the text (it is a secret)."""
    m = KEY_TEXT_RE.match(text.strip())
    if not m:
        raise UsageError(f"{option}: not an auth key (expected {KEY_PREFIX}<16 hex digits>-<64 hex digits>, as "
                         "`meshctl admin authkey create` printed it)")
    key = SigningKey(bytes.fromhex(m.group(2)))
    if key.public().key_id() != m.group(1):
        raise UsageError(f"{option}: damaged: its id {m.group(1)} does not match its secret",
                         "copy the whole last line `meshctl admin authkey create` printed")
    return key


def key_id_of(text: str) -> str | None:
    """The id part of a key text (for messages), or None."""
    m = KEY_TEXT_RE.match(text.strip())
    return m.group(1) if m else None


# --- the enrollment document ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enrollment:
    network_id: str
    authkey: str  # the auth key's id
    name: str
    record_sha256: str  # of the peer.json beside it
    addresses: tuple[ipaddress.IPv4Address, ipaddress.IPv6Address]
    created: int
    tags: tuple[str, ...] | None = None  # None: every tag of the auth key


def parse_enrollment(data: bytes, name: str = ENROLLMENT_FILE) -> Enrollment:
    """Strict: unknown or missing fields, wrong types, non-canonical addresses are refused."""
    r = records.Reader(strictjson.loads(data, name=name, max_bytes=MAX_ENROLLMENT_BYTES), name)
    r.only({"type", "network_id", "authkey", "name", "record_sha256", "addresses", "created"}, {"tags"})
    records.type_check(r, ENROLLMENT_TYPE)
    texts = r.str_list("addresses", 2)
    try:
        v4, v6 = ipaddress.IPv4Address(texts[0]), ipaddress.IPv6Address(texts[1])
    except (ValueError, IndexError):
        raise r.fail("addresses", "must be [IPv4, IPv6]") from None
    if [str(v4), str(v6)] != list(texts):
        raise r.fail("addresses", "must be written in canonical form")
    return Enrollment(
        network_id=r.text("network_id", NETWORK_ID_RE),
        authkey=r.text("authkey", records.AUTHKEY_ID_RE),
        name=r.text("name", NAME_RE),
        record_sha256=r.text("record_sha256", SHA256_RE),
        addresses=(v4, v6),
        created=r.time("created"),
        tags=r.str_list("tags", records.MAX_TAGS, TAG_RE) if "tags" in r.doc else None,
    )


def marshal_enrollment(e: Enrollment) -> bytes:
    doc: dict[str, Any] = {
        "type": ENROLLMENT_TYPE,
        "network_id": e.network_id,
        "authkey": e.authkey,
        "name": e.name,
        "record_sha256": e.record_sha256,
        "addresses": [str(a) for a in e.addresses],
        "created": records.format_time(e.created),
    }
    if e.tags is not None:
        doc["tags"] = list(e.tags)
    return strictjson.dumps(doc)


def sign_enrollment(e: Enrollment, authkey: SigningKey, identity: SigningKey) -> tuple[bytes, bytes]:
    """enrollment.json and its .sig, signed by the auth key and the device's identity key."""
    data = marshal_enrollment(e)
    sigs = [signing.sign(k, FILE_TYPE, e.network_id, data) for k in (authkey, identity)]
    return data, signing.marshal_signatures(sigs)
