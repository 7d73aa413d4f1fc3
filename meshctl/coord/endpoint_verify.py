"""Which endpoint records a node may use (pure): the rules of ROUND2.md section 1.

The git host serves every `endpoints/<name>` branch; none of it is trusted. A record is
accepted only if
- its branch holds nothing but known files, all plain blobs of bounded size (`check_tree`);
- its name is the branch's and a current member's (or, later, a valid pending enrollment's:
  the caller passes the identity key to check against, or None);
- it is signed by that member's identity key from the verified state, as type "endpoint"
  for this mesh's network_id, and its network_id is this mesh's;
- its counter is not below the highest this node accepted for that device (rollback) nor
  equal to it with other bytes (equivocation) (`Seen`, kept in the node's state directory).
An accepted record's candidates are used only while fresh: at most FRESH_FOR_S old and at
most MAX_FUTURE_S ahead of this node's clock (`usable_candidates`). Its keys must be the
member's keys from the verified state (a rotation through the record is issue 20's).
A record never grants anything: the worst a forged, replayed or withheld one can do is make
a node punch towards an address where nobody answers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from meshctl.coord import endpoint_record, signing
from meshctl.coord.delegation import Candidate
from meshctl.coord.endpoint_record import RECORD_FILE, SIG_FILE, EndpointRecord
from meshctl.errors import ParseError
from meshctl.keys import DiscoPublic, NodePublic, VerifyKey

FRESH_FOR_S: Final = 10 * 60  # a record older than this says nothing about where the device is now
MAX_FUTURE_S: Final = 5 * 60  # clocks disagree a little; a record from further ahead is suspect
# The files a device's branch may hold: its endpoint record, and for issue 20 its own peer record
# and enrollment (each with its signature). Anything else makes the whole branch unusable.
ALLOWED_FILES: Final = frozenset({
    RECORD_FILE, SIG_FILE, "peer.json", "peer.json.sig", "enrollment.json", "enrollment.json.sig"})
MAX_FILE_BYTES: Final = 16 * 1024  # per file; the endpoint record itself is bounded tighter by its parser
BLOB_MODE: Final = 0o100644


@dataclass(frozen=True, slots=True)
class TreeEntry:
    """One entry of a branch's tree, as git lists it (read before any blob is)."""

    path: str
    kind: str  # "blob", "tree", "commit" (a submodule)
    mode: int
    size: int


@dataclass(frozen=True, slots=True)
class Seen:
    """The newest record this node accepted from one device (only ever moves forward)."""

    counter: int
    sha256: str
    identity: str  # the identity key it was signed with: another device under the name starts afresh


@dataclass(frozen=True, slots=True)
class Accepted:
    record: EndpointRecord
    sha256: str


@dataclass(frozen=True, slots=True)
class Refused:
    name: str
    reason: str  # one line, shown in the log and `meshctl status`
    rollback: bool = False  # rolled back or equivocating: the host (or the device) lies


Judgement = Accepted | Refused


@dataclass(frozen=True, slots=True)
class EndpointView:
    """What the devices' branches say, as far as this node accepts it."""

    records: Mapping[str, EndpointRecord] = field(default_factory=dict)  # newest accepted, per member
    refused: Mapping[str, str] = field(default_factory=dict)  # member -> why its branch is not used
    own_replaced: bool = False  # this device's own branch is not what it published last (gone, or rewritten)
    # Enrolled devices (coord/delegation.py): the enrollments accepted (name -> files), the ones
    # refused (name -> why), and which single-use key each used.
    enrollments: Mapping[str, Candidate] = field(default_factory=dict)
    enroll_refused: Mapping[str, str] = field(default_factory=dict)
    used: Mapping[str, str] = field(default_factory=dict)

    def digest(self) -> str:
        """What the map in force depends on here: the enrollments accepted and the keys each record
        carries (candidates change paths, not the map)."""
        parts = [f"e {n} {c.sha256}" for n, c in sorted(self.enrollments.items())]
        parts += [f"k {n} {r.wg_public_key.b64()} {r.disco_key.b64()}" for n, r in sorted(self.records.items())]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_tree(entries: Iterable[TreeEntry]) -> str | None:
    """The first problem with a branch's tree, or None (from git's listing alone: nothing is read)."""
    names = set()
    for e in entries:
        if e.path not in ALLOWED_FILES:
            return f"unexpected file {e.path[:80]!r}"
        if e.kind != "blob" or e.mode != BLOB_MODE:
            return f"{e.path}: not a plain file (mode {e.mode:o})"
        if e.size > MAX_FILE_BYTES:
            return f"{e.path}: {e.size} bytes, more than {MAX_FILE_BYTES}"
        names.add(e.path)
    for needed in (RECORD_FILE, SIG_FILE):
        if needed not in names:
            return f"{needed} is missing"
    return None


def judge(name: str, data: bytes, sig_data: bytes, identity: VerifyKey | None, network_id: str,
          seen: Seen | None) -> Judgement:
    """Accept or refuse the record on branch `endpoints/<name>` (see the module docstring).

    `identity`: the key `name` signs with in the verified state (None: not a member).
    """
    if identity is None:
        return Refused(name, "not a member of the mesh")
    try:
        sigs = signing.parse_signatures(sig_data, name=SIG_FILE)
    except ParseError as exc:
        return Refused(name, str(exc))
    message = signing.signed_message(endpoint_record.FILE_TYPE, network_id, data)
    if not any(s.keyid == identity.key_id() and identity.verify(s.sig, message) for s in sigs):
        # Also what a record signed for another mesh looks like: its network_id is in the message.
        return Refused(name, f"not signed by {name}'s identity key {identity.short()}")
    try:
        record = endpoint_record.parse_endpoint(data, RECORD_FILE)
    except ParseError as exc:
        return Refused(name, str(exc))
    if record.name != name:
        return Refused(name, f"{RECORD_FILE} names {record.name!r}, but it is on endpoints/{name}")
    if record.network_id != network_id:
        return Refused(name, f"{RECORD_FILE}: network_id is not this mesh's")
    digest = sha256_hex(data)
    if seen is not None and seen.identity == identity.text():
        if record.counter < seen.counter:
            return Refused(name, f"rolled back: counter {record.counter} is below {seen.counter}, "
                                 "accepted before (refused)", rollback=True)
        if record.counter == seen.counter and digest != seen.sha256:
            return Refused(name, f"counter {record.counter} was accepted before with other content "
                                 "(equivocation refused)", rollback=True)
    return Accepted(record, digest)


def remember(seen: Seen | None, accepted: Accepted, identity: VerifyKey) -> Seen:
    """The memory after accepting `accepted` (never lower than before for the same device)."""
    if seen is not None and seen.identity == identity.text() and seen.counter >= accepted.record.counter:
        return seen
    return Seen(accepted.record.counter, accepted.sha256, identity.text())


def freshness(record: EndpointRecord, now: int) -> str | None:
    """None when the record's candidates may be used at `now`, else why not."""
    age = now - record.timestamp
    if age > FRESH_FOR_S:
        return f"stale: published {age // 60} min ago"
    if -age > MAX_FUTURE_S:
        return f"from the future: timestamp {-age} s ahead of this node's clock"
    return None


def keys_match(record: EndpointRecord, wg_key: NodePublic, disco_key: DiscoPublic) -> bool:
    return record.wg_public_key == wg_key and record.disco_key == disco_key


def usable_candidates(record: EndpointRecord, wg_key: NodePublic, disco_key: DiscoPublic,
                      now: int) -> tuple[str, ...]:
    """The candidates a node may probe now: none unless fresh and made for the member's keys."""
    if freshness(record, now) is not None or not keys_match(record, wg_key, disco_key):
        return ()
    return record.candidates
