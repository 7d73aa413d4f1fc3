"""`meshctl admin relay add|remove|list`: the relays listed in state.json.

Each change rewrites and re-signs state.json through `admin.set_relays` (bumping the serial),
so nodes and relays pick it up on their next sync like any other signed change.
"""

from __future__ import annotations

from collections.abc import Sequence

from meshctl.coord import admin, records
from meshctl.coord.records import RelayEntry, StateDoc
from meshctl.errors import UsageError
from meshctl.keys import SigningKey, VerifyKey

CHANGED_FILES = ["state.json", "state.json.sig"]


def _check_port(address: str) -> None:
    port = int(address.rsplit(":", 1)[1])
    if not 1 <= port <= 65535:
        raise UsageError(f"relay address {address!r}: port must be 1..65535")


def add_relay(co: admin.Checkout, name: str, address: str, identity_key: str | None,
              keys: Sequence[SigningKey], now: int) -> tuple[StateDoc, list[str]]:
    """List a relay (NAME, HOST:PORT, optional `ed25519:...` key it proves at login)."""
    if not records.NAME_RE.match(name):
        raise UsageError(f"relay name {name!r}: use lowercase letters, digits and '-'")
    if not records.HOSTPORT_RE.match(address):
        raise UsageError(f"relay address {address!r}: expected HOST:PORT such as 198.51.100.7:3340")
    _check_port(address)
    key = VerifyKey.from_text(identity_key) if identity_key is not None else None
    if any(r.name == name for r in co.state.relays):
        raise UsageError(f"state.json: a relay named {name!r} is already listed",
                         f"remove it first: meshctl admin relay remove {name}")
    if len(co.state.relays) >= records.MAX_RELAYS:
        raise UsageError(f"state.json: already {records.MAX_RELAYS} relays listed")
    relays = (*co.state.relays, RelayEntry(name, address, key))
    return admin.set_relays(co, relays, keys, now), list(CHANGED_FILES)


def remove_relay(co: admin.Checkout, name: str, keys: Sequence[SigningKey],
                 now: int) -> tuple[StateDoc, list[str]]:
    if not any(r.name == name for r in co.state.relays):
        listed = ", ".join(r.name for r in co.state.relays) or "none"
        raise UsageError(f"state.json: no relay named {name!r}", f"listed relays: {listed}")
    relays = tuple(r for r in co.state.relays if r.name != name)
    return admin.set_relays(co, relays, keys, now), list(CHANGED_FILES)


def list_relays(co: admin.Checkout) -> tuple[RelayEntry, ...]:
    return co.state.relays
