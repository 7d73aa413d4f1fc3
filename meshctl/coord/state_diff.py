"""What a new signed state changes, line by line, for the admin to read before it is signed (pure).

Members (added, removed, and each changed field: addresses, tags, owner, keys), relays, revoked
keys, pinned files, the network, STUN servers and the policy's changed lines. Any state field this
module has no words for is still shown, by name, with its old and new value: a field added to the
signed state later is never signed unseen.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from meshctl.coord.records import Assignment, AuthKey, PeerRecord, RelayEntry, Revoked, StateDoc, format_time

MAX_POLICY_LINES: Final = 200  # of the policy's diff; the rest is counted
MAX_VALUE_CHARS: Final = 160
# Fields with their own words below, or bookkeeping shown in the header.
_HANDLED: Final = frozenset({"network_id", "serial", "expires", "root_version", "policy_sha256", "peers",
                             "relays", "revoked", "pinned", "stun", "ipv4_cidr", "ipv6_prefix", "domain",
                             "authkeys"})


@dataclass(frozen=True, slots=True)
class StateView:
    """A state with what is known beside it: member records (maybe none) and the policy text."""

    state: StateDoc
    records: Mapping[str, PeerRecord]
    policy_text: str | None  # None: not at hand (only its hash is known)


def fingerprint(rec: PeerRecord) -> str:
    """The short key fingerprint `join` prints and `admin approve --expect-key` checks."""
    return rec.identity_key.key_id()


def describe(old: StateView | None, new: StateView) -> list[str]:
    """One line per change from `old` to `new` (old None: everything in `new` is new)."""
    if old is None:
        empty = dataclasses.replace(new.state, peers={}, relays=(), stun=(), revoked=(), pinned={},
                                    policy_sha256="", authkeys={})
        lines = [f"serial {new.state.serial} (no earlier state is known here: all of it is shown)"]
        return lines + _body(StateView(empty, {}, ""), new)
    o, n = old.state, new.state
    head = f"serial {o.serial} -> {n.serial}, expires {format_time(n.expires)}"
    if o.root_version != n.root_version:
        head += f", root version {o.root_version} -> {n.root_version}"
    return [head, *_body(old, new)]


def _body(old: StateView, new: StateView) -> list[str]:
    return [*_members(old, new), *_authkeys(old.state.authkeys, new.state.authkeys),
            *_relays(old.state.relays, new.state.relays),
            *_revoked(old.state.revoked, new.state.revoked), *_network(old.state, new.state),
            *_pinned(old.state.pinned, new.state.pinned), *_other_fields(old.state, new.state),
            *_policy(old, new)]


def _member_line(name: str, a: Assignment, rec: PeerRecord | None) -> str:
    parts = [" ".join(str(x) for x in a.addresses)]
    if rec is not None:
        parts.append(f"key {fingerprint(rec)}")
    if a.tags:
        parts.append("tags " + ",".join(a.tags))
    if a.owner:
        parts.append(f"owner {a.owner}")
    if a.routes:
        parts.append(f"routes {_value(a.routes)}")
    if a.expires is not None:
        parts.append(f"expires {format_time(a.expires)}")
    return f"member {name}: " + ", ".join(parts)


def _members(old: StateView, new: StateView) -> list[str]:
    o, n = old.state.peers, new.state.peers
    lines = [f"+ {_member_line(x, n[x], new.records.get(x))}" for x in sorted(set(n) - set(o))]
    lines += [f"- {_member_line(x, o[x], old.records.get(x))}" for x in sorted(set(o) - set(n))]
    for name in sorted(set(o) & set(n)):
        for field in dataclasses.fields(Assignment):
            before, after = getattr(o[name], field.name), getattr(n[name], field.name)
            if before == after:
                continue
            if field.name == "record_sha256":
                lines += _record_change(name, old.records.get(name), new.records.get(name), before, after)
            elif field.name == "expires":
                lines.append(f"~ member {name}: expires {_time(before)} -> {_time(after)}")
            else:
                lines.append(f"~ member {name}: {field.name} {_value(before)} -> {_value(after)}")
    return lines


def _record_change(name: str, old: PeerRecord | None, new: PeerRecord | None, before: str, after: str) -> list[str]:
    if old is None or new is None:
        return [f"~ member {name}: record sha256 {before[:16]} -> {after[:16]}"]
    lines = []
    for what, a, b in (("identity key", fingerprint(old), fingerprint(new)),
                       ("WireGuard key", old.wg_public_key.b64(), new.wg_public_key.b64()),
                       ("disco key", old.disco_key.b64(), new.disco_key.b64()),
                       ("endpoints", _value(old.endpoints), _value(new.endpoints)),
                       ("advertised routes", _value(old.advertise_routes), _value(new.advertise_routes)),
                       ("advertises an exit node", _value(old.advertise_exit_node), _value(new.advertise_exit_node))):
        if a != b:
            lines.append(f"~ member {name}: {what} {a} -> {b}")
    return lines or [f"~ member {name}: record sha256 {before[:16]} -> {after[:16]}"]


def authkey_line(k: AuthKey) -> str:
    """One auth key's scope, as `admin authkey list` and the diff show it."""
    return (f"authkey {k.id}: tags {','.join(k.tags) or 'none'}, pool {k.pool}, expires {format_time(k.expires)}, "
            f"{'reusable' if k.reusable else 'single use'}")


def _authkeys(old: Mapping[str, AuthKey], new: Mapping[str, AuthKey]) -> list[str]:
    lines = [f"+ {authkey_line(new[k])}" for k in sorted(set(new) - set(old))]
    lines += [f"- {authkey_line(old[k])}" for k in sorted(set(old) - set(new))]
    return lines + [f"~ {authkey_line(old[k])} -> {authkey_line(new[k]).split(': ', 1)[1]}"
                    for k in sorted(set(old) & set(new)) if old[k] != new[k]]


def _time(value: int | None) -> str:
    return format_time(value) if value is not None else "never"


def _relay_line(r: RelayEntry) -> str:
    key = r.identity_key.text() if r.identity_key else "no identity key"
    return f"relay {r.name}: {r.address}, {key}"


def _relays(old: Iterable[RelayEntry], new: Iterable[RelayEntry]) -> list[str]:
    o, n = {r.name: r for r in old}, {r.name: r for r in new}
    lines = [f"+ {_relay_line(n[x])}" for x in n if x not in o]
    lines += [f"- {_relay_line(o[x])}" for x in o if x not in n]
    lines += [f"~ {_relay_line(o[x])} -> {_relay_line(n[x]).split(': ', 1)[1]}" for x in n if x in o and o[x] != n[x]]
    return lines


def _revoked_line(r: Revoked) -> str:
    return f"keys of {r.name} (key {r.identity_key.key_id()}, revoked {format_time(r.at)})"


def _revoked(old: tuple[Revoked, ...], new: tuple[Revoked, ...]) -> list[str]:
    lines = [f"+ revoked {_revoked_line(r)}" for r in new if r not in old]
    return lines + [f"- no longer revoked: {_revoked_line(r)}" for r in old if r not in new]


def _network(o: StateDoc, n: StateDoc) -> list[str]:
    lines = [f"~ network {what}: {a} -> {b}" for what, a, b in (
        ("ipv4", o.ipv4_cidr, n.ipv4_cidr), ("ipv6", o.ipv6_prefix, n.ipv6_prefix), ("domain", o.domain, n.domain))
        if a != b]
    if o.stun != n.stun:
        lines.append(f"~ stun: {_value(o.stun)} -> {_value(n.stun)}")
    return lines


def _pinned(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    lines = [f"+ pinned {p}: sha256 {new[p][:16]}" for p in sorted(set(new) - set(old))]
    lines += [f"- pinned {p}" for p in sorted(set(old) - set(new))]
    return lines + [f"~ pinned {p}: sha256 {old[p][:16]} -> {new[p][:16]}"
                    for p in sorted(set(old) & set(new)) if old[p] != new[p]]


def _other_fields(o: StateDoc, n: StateDoc) -> list[str]:
    return [f"~ {f.name}: {_value(getattr(o, f.name))} -> {_value(getattr(n, f.name))}"
            for f in dataclasses.fields(StateDoc)
            if f.name not in _HANDLED and getattr(o, f.name) != getattr(n, f.name)]


def _policy(old: StateView, new: StateView) -> list[str]:
    if old.state.policy_sha256 == new.state.policy_sha256:
        return []
    if old.policy_text is None or new.policy_text is None:
        return [f"~ policy.hujson: sha256 {old.state.policy_sha256[:16]} -> {new.state.policy_sha256[:16]} "
                "(the signed text is not at hand to compare)"]
    diff = [line.rstrip("\n") for line in difflib.unified_diff(
        old.policy_text.splitlines(), new.policy_text.splitlines(), "policy.hujson (signed)",
        "policy.hujson (new)", n=0, lineterm="")]
    shown = diff[2:][:MAX_POLICY_LINES]  # the two file header lines say nothing new
    more = len(diff) - 2 - len(shown)
    tail = [f"    ... {more} more lines"] if more > 0 else []
    return ["~ policy.hujson:", *(f"    {line}" for line in shown), *tail]


def _value(value: Any) -> str:
    if isinstance(value, (tuple, list, frozenset, set)):
        text = ",".join(str(x) for x in value) or "none"
    elif value in ("", None):
        text = "none"
    else:
        text = str(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + "…"
