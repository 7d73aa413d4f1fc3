"""The one path every signing command takes: verified baseline -> own change -> new signed state,
verified again as a node will verify it, and described line by line (pure).

A command builds a `Change` from a `Baseline` (coord/baseline.py) and its own arguments, nothing
else: fields it does not set come from the verified state, so nothing unsigned can ride along.
`plan()` then fills in the bookkeeping (serial, expiry, root version, the policy and pinned
hashes), signs in memory, and verifies the result (the checkout with the new files laid over it)
with the same baseline check. Writing the files, the admin's trust memory and the commit is the
shell's part (coord/admin.py), done only after all of this passed, and not at all for --dry-run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from meshctl.coord import records, signing, verify
from meshctl.coord.baseline import Baseline, verify_baseline
from meshctl.coord.records import PeerRecord, RootDoc, StateDoc
from meshctl.coord.state_diff import StateView, describe
from meshctl.coord.trust import STATE_LIFETIME_S
from meshctl.coord.verify import Snapshot
from meshctl.errors import UsageError
from meshctl.keys import SigningKey

ROOT_WARNING_S: Final = STATE_LIFETIME_S  # warn when the root expires within a state's lifetime


@dataclass(frozen=True, slots=True)
class Change:
    """What one signing command changes, computed from a verified Baseline and its own arguments."""

    state: StateDoc  # new content; serial, expiry, root version, policy hash (and pins) are set by plan()
    files: Mapping[str, bytes | None] = field(default_factory=dict)  # written (bytes) or removed (None)
    summary: tuple[str, ...] = ()  # the command's own lines (the first is what it did)
    message: str = ""  # commit message, before " (serial N)"
    warnings: tuple[str, ...] = ()
    resign: bool = True  # False: add signatures to the state as it is (co-signing)
    shown_from: StateView | None = None  # what the diff starts from when not the baseline (co-signing)


@dataclass(frozen=True, slots=True)
class Plan:
    """A signed change ready to write: nothing here has touched the disk yet."""

    baseline: Baseline
    change: Change
    after: Baseline  # the checkout with the change laid over it, verified again
    files: Mapping[str, bytes | None]  # every file to write or remove, state.json and its .sig included
    diff: tuple[str, ...]
    signatures: int  # valid admin signatures on the new state
    warnings: tuple[str, ...]

    @property
    def state(self) -> StateDoc:
        return self.after.state

    @property
    def threshold(self) -> int:
        return self.after.root.admin_threshold

    @property
    def commit_message(self) -> str:
        return f"{self.change.message} (serial {self.state.serial})"


class OverlaySnapshot:
    """A snapshot with some files replaced, added or removed: the checkout as it will be."""

    def __init__(self, base: Snapshot, changes: Mapping[str, bytes | None]) -> None:
        self.base = base
        self.changes = changes
        self._files: dict[str, str | None] | None = None

    def files(self) -> dict[str, str | None]:
        if self._files is None:
            files = dict(self.base.files())
            for path, data in self.changes.items():
                if data is None:
                    files.pop(path, None)
                else:
                    files[path] = None  # new content: no git blob id to compare
            for path, blob in files.items():  # unchanged files: an id that says "as in the base"
                if blob is None and path not in self.changes:
                    files[path] = f"base:{path}"
            self._files = files
        return self._files

    def size(self, path: str) -> int:
        data = self.changes.get(path)
        return len(data) if data is not None else self.base.size(path)

    def read(self, path: str) -> bytes:
        data = self.changes.get(path)
        return data if data is not None else self.base.read(path)


def admin_signers(root: RootDoc, keys: Sequence[SigningKey]) -> list[SigningKey]:
    allowed = set(root.admin_keys)
    usable = [k for k in keys if k.public() in allowed]
    if not usable:
        raise UsageError("the admin key is not an admin key of this mesh",
                         f"admin keys: {', '.join(k.short() for k in root.admin_keys)}")
    return usable


def view(base: Baseline) -> StateView:
    return StateView(base.state, base.verified.records, base.verified.policy_text if base.policy_known else None)


def plan(base: Baseline, change: Change, keys: Sequence[SigningKey], now: int,
         highest_serial: int = 0) -> Plan:
    """Sign `change` in memory and verify the checkout as it will be. `highest_serial` is the highest
    serial this admin accepted or signed: a new state never reuses one (that would be equivocation)."""
    root = base.root
    signers = admin_signers(root, keys)
    warnings = list(base.notes) + list(change.warnings)
    if change.resign:
        state = _bookkeeping(base, change, now, highest_serial)
        data = records.marshal_state(state)
        sigs = [signing.sign(k, "state", root.network_id, data) for k in signers]
        if root.expires < now + ROOT_WARNING_S:
            warnings.append(f"root/{root.version}.root.json expires at {records.format_time(root.expires)}: "
                            "rotate the root before then (the state cannot outlive it)")
    else:
        data = base.state_bytes
        old = _valid_entries(base)
        sigs = old + [signing.sign(k, "state", root.network_id, data) for k in signers]
    files = {**change.files, "state.json": data, "state.json.sig": signing.marshal_signatures(sigs)}
    overlay = OverlaySnapshot(base.snapshot, files)
    after = verify_baseline(overlay, base.pinned_root, now, base.memory(), own_keys=[k.public() for k in signers],
                            cosign=not change.resign, cache=_verified_records(base, overlay),
                            sig_paths={p for p in files if p.endswith(".sig")})
    diff = describe(view(base) if change.resign else change.shown_from, view(after))
    return Plan(base, change, after, files, tuple(diff), len(after.signers), tuple(warnings))


def _verified_records(base: Baseline, overlay: OverlaySnapshot) -> dict[str, tuple[str, PeerRecord]]:
    """The baseline's member records, keyed as verify.verify_peers caches them, for the files the
    change leaves as they are: the second verification checks only what changed."""
    ids = overlay.files()
    out = {}
    for name, rec in base.verified.records.items():
        path = f"peers/{name}.json"
        blob, sig_blob = ids.get(path), ids.get(path + ".sig")
        if blob and sig_blob:
            out[f"{blob}:{sig_blob}"] = (base.state.peers[name].record_sha256, rec)
    return out


def _bookkeeping(base: Baseline, change: Change, now: int, highest_serial: int) -> StateDoc:
    root = base.root
    policy = change.files.get("policy.hujson")
    pinned = change.state.pinned
    if not base.state.pinned and pinned == base.state.pinned:
        pinned = pinnable_hashes(base.snapshot, change.files)  # a state from before pins: pin what is here
    return dataclasses.replace(
        change.state,
        serial=max(base.state.serial, highest_serial) + 1,
        expires=min(now + STATE_LIFETIME_S, root.expires),
        root_version=root.version,
        policy_sha256=verify.sha256_hex(policy) if policy is not None else base.state.policy_sha256,
        pinned=pinned,
    )


def pinnable_hashes(snap: Snapshot, changes: Mapping[str, bytes | None]) -> dict[str, str]:
    """sha256 of every file nodes never read, as the checkout will hold them."""
    overlay = OverlaySnapshot(snap, changes)
    return {path: verify.sha256_hex(overlay.read(path)) for path in sorted(overlay.files())
            if records.PINNABLE_RE.match(path)}


def _valid_entries(base: Baseline) -> list[signing.Signature]:
    """The state's signature entries that are valid admin signatures (anything else is dropped)."""
    files = base.snapshot.files()
    if "state.json.sig" not in files:
        return []
    sigs = signing.parse_signatures(base.snapshot.read("state.json.sig"), name="state.json.sig")
    return [s for s in sigs if signing.valid_signers([s], base.signers, "state", base.root.network_id,
                                                      base.state_bytes)]
