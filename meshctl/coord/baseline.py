"""What a signing command may build on: the checkout verified the way a node verifies it (pure).

Admins are nodes too (DESIGN.md, round two). Before anything is signed, the checkout must verify
from the admin's own trust memory: the pinned root, the last accepted serial and state hash, every
file's hash and signature. What is left after that is exactly what valid signatures cover, and a
signing command builds its new state from that alone. The differences from a node's check:

- a state signed under an older root (before a rotation) is the base of the state re-signed under
  the newest one;
- an expired state is a base (`admin renew` exists for it), with a note;
- a state below the admin threshold is a base only when it carries this admin's own valid signature,
  or for a co-signature (`admin sign --cosign`, which needs one admin's valid signature to add to);
- files the command itself supplies (`inputs`: the edited policy for `admin sign`, and with
  `--update-pins` every pinned file, ALL_PINNED) are not compared with their signed hashes,
  since they are the change being signed and shown;
- files nodes never read (README, CI configuration) must match the hashes state.json pins.

Problems in different files are all named, one line each.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Final

from meshctl.coord import records, strictjson, verify
from meshctl.coord.records import PeerRecord, RootDoc, StateDoc
from meshctl.coord.trust import TrustMemory
from meshctl.coord.verify import Snapshot, Verified
from meshctl.errors import MeshctlError, VerificationError
from meshctl.keys import VerifyKey

MAX_NAMED_FIELDS: Final = 6  # an unsigned edit is named by at most this many fields
ALL_PINNED: Final = "(pinned files)"  # in `inputs`: the README and CI files are the command's to sign


@dataclass(frozen=True, slots=True)
class Baseline:
    """A checkout's content as far as valid signatures cover it."""

    snapshot: Snapshot
    verified: Verified
    state_bytes: bytes
    roots: tuple[RootDoc, ...]
    signers: frozenset[VerifyKey]  # admin keys with a valid signature on state.json
    complete: bool  # the admin threshold is met: a node accepts this state
    policy_known: bool  # verified.policy_text is the signed policy (False: an input, its signed text unknown)
    notes: tuple[str, ...] = ()

    @property
    def state(self) -> StateDoc:
        return self.verified.state

    @property
    def root(self) -> RootDoc:
        return self.verified.root

    @property
    def pinned_root(self) -> str:
        return "sha256:" + self.verified.root_hashes[0]

    def memory(self) -> TrustMemory:
        return self.verified.memory(None)


def verify_baseline(
    snap: Snapshot,
    pinned: str,
    now: int,
    memory: TrustMemory | None,
    *,
    own_keys: Collection[VerifyKey] = (),
    cosign: bool = False,
    inputs: Collection[str] = (),
    signed_texts: Mapping[str, bytes] | None = None,
    remembered_state: bytes | None = None,
    cache: MutableMapping[str, tuple[str, PeerRecord]] | None = None,
    sig_paths: Collection[str] | None = None,
) -> Baseline:
    """The checkout verified for signing; a VerificationError names every file that differs.

    `signed_texts` (sha256 -> bytes) offers earlier texts of input files, so that the signed
    policy can be shown next to its edit; `remembered_state` (the bytes of the state this admin
    accepted last) lets an unsigned state.json be refused with the fields it changed. `cache` (as
    verify.verify_peers takes it) and `sig_paths` (the .sig files whose every entry is checked;
    None: all) let a second look at the same checkout skip what the first verified.
    """
    kinds = verify.check_paths(snap)
    roots, root_hashes = verify.walk_roots(snap, pinned, memory.root_hashes if memory else ())
    newest = roots[-1]
    verify.check_root_expiry(newest, now)
    data, signers, signing_root, any_entries = _state_signers(snap, roots)
    state_sha = verify.sha256_hex(data)
    complete = len(signers) >= signing_root.admin_threshold
    if not complete:
        own = bool(signers & set(own_keys))  # this admin signed it already (a threshold above 1)
        if not own and not (cosign and signers):
            raise _unsigned(newest, signers, any_entries, data, remembered_state)
    state = verify.parse_signed_state(data, newest)
    if state.root_version != signing_root.version:
        raise VerificationError(f"state.json: field root_version is {state.root_version}, but admins of "
                                f"root version {signing_root.version} signed it")
    _check_memory(state, state_sha, memory)
    notes = []
    if state.expires <= now:
        notes.append(f"state.json expired at {records.format_time(state.expires)}")
    problems: list[str] = []
    recs: Mapping[str, records.PeerRecord] = {}
    try:
        recs = verify.verify_peers(snap, state, kinds, cache)
    except MeshctlError as exc:
        problems.append(exc.message)
    policy_text, policy_known = _policy(snap, state, inputs, signed_texts or {}, problems)
    if ALL_PINNED not in inputs:
        problems += verify.pin_problems(snap, state, kinds)
    verified = Verified(newest, root_hashes, state, state_sha, recs, policy_text,
                        verify.build_netmap(newest, state, state_sha, recs, policy_text))
    if not problems:
        signed = sorted(p for p, kind in kinds.items() if kind == "sig" and not p.startswith("requests/")
                        and (sig_paths is None or p in sig_paths))
        problems += verify.signature_entry_problems(snap, verified, signed)
    if problems:
        raise VerificationError("\n".join(problems), "these files differ from what valid signatures cover; "
                                "restore them from the last signed commit (git log -- state.json)")
    return Baseline(snap, verified, data, tuple(roots), frozenset(signers), complete, policy_known, tuple(notes))


def _state_signers(snap: Snapshot, roots: list[RootDoc]) -> tuple[bytes, set[VerifyKey], RootDoc, bool]:
    """state.json's bytes and valid admin signers, under the newest root or, for a state signed just
    before a root rotation, under the one before it."""
    newest = roots[-1]
    data, signers, any_entries = verify.read_state_signers(snap, newest)
    if len(signers) < newest.admin_threshold and len(roots) > 1:
        _data, earlier, _ = verify.read_state_signers(snap, roots[-2])
        if len(earlier) >= roots[-2].admin_threshold:
            return data, earlier, roots[-2], any_entries
    return data, signers, newest, any_entries


def _unsigned(root: RootDoc, signers: set[VerifyKey], any_entries: bool, data: bytes,
              remembered: bytes | None) -> VerificationError:
    message = verify.unsigned_state_error(root, len(signers), any_entries).message
    changed = differing_fields(data, remembered) if remembered is not None else []
    if changed:
        more = len(changed) > MAX_NAMED_FIELDS
        message += "; unsigned change to " + ", ".join(changed[:MAX_NAMED_FIELDS]) + (", ..." if more else "")
    if signers:
        return VerificationError(message, "another admin signed it: review and add your signature with "
                                 "`meshctl admin sign --cosign` (it shows what changes) before the next change")
    return VerificationError(message, "nothing was signed: restore the last signed state.json "
                             "(git log -p -- state.json) and find who changed it")


def _check_memory(state: StateDoc, state_sha: str, memory: TrustMemory | None) -> None:
    try:
        verify.check_memory(state, state_sha, memory)
    except VerificationError as exc:
        raise VerificationError(exc.message, "the git host may be serving an older or another state; if "
                                "you signed a newer one on a branch that was never merged, merge it or sign on "
                                "it") from None


def _policy(snap: Snapshot, state: StateDoc, inputs: Collection[str], signed_texts: Mapping[str, bytes],
            problems: list[str]) -> tuple[str, bool]:
    """The signed policy text, and whether it is known (an input policy's signed text may not be)."""
    if "policy.hujson" not in inputs:
        try:
            return verify.verify_policy(snap, state), True
        except MeshctlError as exc:
            problems.append(exc.message)
            return "", False
    earlier = signed_texts.get(state.policy_sha256)
    if earlier is None:
        return "", False
    try:
        return earlier.decode("utf-8"), True
    except UnicodeDecodeError:
        return "", False


def differing_fields(data: bytes, remembered: bytes) -> list[str]:
    """The dotted paths where an unsigned state.json differs from a remembered signed one (both are
    parsed as strict, bounded JSON; either failing names nothing)."""
    try:
        new = strictjson.loads(data, name="state.json", max_bytes=records.MAX_STATE_BYTES)
        old = strictjson.loads(remembered, name="state.json", max_bytes=records.MAX_STATE_BYTES)
    except MeshctlError:
        return []
    out: list[str] = []
    _walk_differences(old, new, "", out)
    return out


def _walk_differences(old: Any, new: Any, prefix: str, out: list[str]) -> None:
    if len(out) > MAX_NAMED_FIELDS:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            _walk_differences(old.get(key), new.get(key), f"{prefix}{key}.", out)
    elif old != new:
        out.append(prefix.rstrip(".") or "(the whole document)")
