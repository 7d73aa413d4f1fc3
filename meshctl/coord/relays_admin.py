"""`meshctl admin relay add|remove|list`: the relays listed in state.json.

Each change goes the signing path of every admin command (coord/admin.run_change): the checkout is
verified first, the relay list is the only thing changed, the new state is signed with a new serial,
and nodes and relays pick it up on their next sync like any other signed change. A relay is listed
with its identity key: clients check it at login, so nobody else can answer in its place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from meshctl.coord import admin, records
from meshctl.coord.baseline import Baseline
from meshctl.coord.records import RelayEntry, StateDoc
from meshctl.coord.signed_change import Change
from meshctl.errors import ParseError, UsageError
from meshctl.keys import SigningKey, VerifyKey

CHANGED_FILES = ["state.json", "state.json.sig"]


def _check_port(address: str) -> None:
    port = int(address.rsplit(":", 1)[1])
    if not 1 <= port <= 65535:
        raise UsageError(f"relay address {address!r}: port must be 1..65535")


def parse_relay(name: str, address: str, identity_key: str | None) -> RelayEntry:
    """A relay entry from the command line: NAME, HOST:PORT and the `ed25519:...` key it proves."""
    if not records.NAME_RE.match(name):
        raise UsageError(f"relay name {name!r}: use lowercase letters, digits and '-'")
    if not records.HOSTPORT_RE.match(address):
        raise UsageError(f"relay address {address!r}: expected HOST:PORT such as 198.51.100.7:3340")
    _check_port(address)
    if identity_key is None:
        raise UsageError(f"relay {name}: --identity-key is required",
                         "the ed25519:... key `meshctl relay` prints at start; clients accept only the "
                         "relay that proves it")
    try:
        key = VerifyKey.from_text(identity_key)
    except ParseError as exc:
        raise UsageError(exc.message) from None
    return RelayEntry(name, address, key)


def add_change(base: Baseline, entry: RelayEntry) -> Change:
    relays = base.state.relays
    if any(r.name == entry.name for r in relays):
        raise UsageError(f"state.json: a relay named {entry.name!r} is already listed",
                         f"remove it first: meshctl admin relay remove {entry.name}")
    if len(relays) >= records.MAX_RELAYS:
        raise UsageError(f"state.json: already {records.MAX_RELAYS} relays listed")
    return Change(dataclasses.replace(base.state, relays=(*relays, entry)),
                  summary=(f"added relay {entry.name} at {entry.address}",), message=f"Add relay {entry.name}")


def remove_change(base: Baseline, name: str) -> Change:
    relays = base.state.relays
    if not any(r.name == name for r in relays):
        listed = ", ".join(r.name for r in relays) or "none"
        raise UsageError(f"state.json: no relay named {name!r}", f"listed relays: {listed}")
    return Change(dataclasses.replace(base.state, relays=tuple(r for r in relays if r.name != name)),
                  summary=(f"removed relay {name}",), message=f"Remove relay {name}")


def add_relay(co: admin.Checkout, name: str, address: str, identity_key: str | None,
              keys: Sequence[SigningKey], now: int) -> tuple[StateDoc, list[str]]:
    entry = parse_relay(name, address, identity_key)
    result, _ = admin.run_change(co.path, keys, now, lambda s: add_change(s.baseline, entry))
    return result.state, list(CHANGED_FILES)


def remove_relay(co: admin.Checkout, name: str, keys: Sequence[SigningKey],
                 now: int) -> tuple[StateDoc, list[str]]:
    result, _ = admin.run_change(co.path, keys, now, lambda s: remove_change(s.baseline, name))
    return result.state, list(CHANGED_FILES)


def list_relays(co: admin.Checkout) -> tuple[RelayEntry, ...]:
    return co.state.relays
