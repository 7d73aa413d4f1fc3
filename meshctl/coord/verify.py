"""Verification of a coordination repository snapshot (pure).

Input: the files of one commit (a `Snapshot`), the pinned root fingerprint,
what this node accepted last (`TrustMemory`) and `now`. Output: a `Verified`
state and its `NetMap`, or a VerificationError naming the file and the reason.

Rules (DESIGN.md, "Rules that make the host untrusted"):
- root/1 hashes to the pinned fingerprint; root/N+1 is signed by the root
  thresholds of both N and N+1; a root version never changes once seen.
- state.json is signed by the admin threshold of the newest root, lists the
  sha256 of every file a node may use, and has not expired.
- A lower serial than remembered is a rollback; the same serial with other
  bytes is equivocation. Both are refused.
- Every peer file is listed in state.json with its hash and self-signed by the
  identity key inside it; names, keys and addresses are unique and inside the
  mesh prefixes. Unknown paths and oversized files are refused.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from meshctl.coord import records, routes, sigbatch, signing
from meshctl.coord.netmap import NetMap, NetworkSettings, Peer, Relay
from meshctl.coord.records import PeerRecord, RootDoc, StateDoc
from meshctl.coord.sigbatch import SignatureCheck
from meshctl.coord.trust import TrustMemory as TrustMemory  # re-exported: it lived here first
from meshctl.errors import ParseError, VerificationError
from meshctl.keys import VerifyKey

MAX_FILES: Final = 250_000  # 2 files per peer at MAX_PEERS, plus requests: refuse a million-file repo early
MAX_POLICY_BYTES: Final = 1024 * 1024
MAX_OTHER_BYTES: Final = 256 * 1024  # README, CI files

ROOT_RE: Final = re.compile(r"\Aroot/([1-9][0-9]{0,5})\.root\.json\Z")
PEER_RE: Final = re.compile(r"\Apeers/([a-z0-9-]{1,63})\.json\Z")
REQUEST_RE: Final = re.compile(r"\Arequests/([a-z0-9-]{1,63})\.json\Z")
OTHER_FILES: Final = frozenset({"policy.hujson", "state.json", "state.json.sig"})


class Snapshot(Protocol):
    """The files of one revision. `files()` maps path -> content id (git blob id or None)."""

    def files(self) -> Mapping[str, str | None]: ...

    def size(self, path: str) -> int: ...

    def read(self, path: str) -> bytes: ...


class MemorySnapshot:
    """A snapshot of files held in memory (a request read from a branch, tests)."""

    def __init__(self, files: Mapping[str, bytes]) -> None:
        self._data = dict(files)

    def files(self) -> dict[str, str | None]:
        return dict.fromkeys(self._data)

    def size(self, path: str) -> int:
        return len(self._data[path])

    def read(self, path: str) -> bytes:
        return self._data[path]


@dataclass(frozen=True, slots=True)
class Verified:
    root: RootDoc
    root_hashes: tuple[str, ...]
    state: StateDoc
    state_sha256: str
    records: Mapping[str, PeerRecord]
    policy_text: str
    netmap: NetMap

    def memory(self, commit: str | None) -> TrustMemory:
        return TrustMemory(self.root_hashes, self.state.serial, self.state_sha256, commit,
                           self.state.expires)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint(root1: bytes) -> str:
    """The root fingerprint printed by `meshctl admin invite` and pinned by `join --root`."""
    return "sha256:" + sha256_hex(root1)


def _refuse(message: str, hint: str | None = None) -> VerificationError:
    return VerificationError(message, hint)


# --- paths ----------------------------------------------------------------------------------


def classify_path(path: str) -> str:
    """'root' | 'peer' | 'request' | 'sig' | 'other' | 'pinnable' (a file nodes never read);
    raises for a path meshctl does not know."""
    if path.endswith(".sig"):
        base = path[: -len(".sig")]
        if ROOT_RE.match(base) or PEER_RE.match(base) or REQUEST_RE.match(base) or base == "state.json":
            return "sig"
    elif ROOT_RE.match(path):
        return "root"
    elif PEER_RE.match(path):
        return "peer"
    elif REQUEST_RE.match(path):
        return "request"
    elif path in OTHER_FILES:
        return "other"
    elif records.PINNABLE_RE.match(path):
        return "pinnable"
    raise _refuse(f"{path}: unknown path in the coordination repository",
                  "only root/, peers/, requests/, state.json, policy.hujson and CI files belong here")


def read_bounded(snap: Snapshot, path: str, limit: int) -> bytes:
    size = snap.size(path)
    if size > limit:
        raise _refuse(f"{path}: file is {size} bytes, more than the limit of {limit}")
    return snap.read(path)


def size_limit(path: str, kind: str) -> int:
    """The most bytes a file of this path may hold."""
    if kind == "sig":
        return signing.MAX_SIG_FILE_BYTES
    if kind == "root":
        return records.MAX_ROOT_BYTES
    if kind in ("peer", "request"):
        return records.MAX_PEER_BYTES
    if path == "state.json":
        return records.MAX_STATE_BYTES
    if path == "policy.hujson":
        return MAX_POLICY_BYTES
    return MAX_OTHER_BYTES


def check_paths(snap: Snapshot) -> dict[str, str]:
    """Every path known and every size bounded (from the size alone, before any read); path -> kind."""
    files = snap.files()
    if len(files) > MAX_FILES:
        raise _refuse(f"repository has {len(files)} files, more than the limit of {MAX_FILES}")
    kinds = {path: classify_path(path) for path in files}
    for path, kind in kinds.items():
        limit = size_limit(path, kind)
        size = snap.size(path)
        if size > limit:
            raise _refuse(f"{path}: file is {size} bytes, more than the limit of {limit}")
    return kinds


# --- roots ----------------------------------------------------------------------------------


def _signatures(snap: Snapshot, path: str, files: Mapping[str, object]) -> tuple[signing.Signature, ...]:
    sig_path = path + ".sig"
    if sig_path not in files:
        raise _refuse(f"{sig_path}: signature file is missing")
    try:
        return signing.parse_signatures(
            read_bounded(snap, sig_path, signing.MAX_SIG_FILE_BYTES), name=sig_path
        )
    except ParseError as exc:
        raise _refuse(str(exc)) from None


def _parse(fn: object, data: bytes, name: str) -> object:
    try:
        return fn(data, name)  # type: ignore[operator]
    except ParseError as exc:
        raise _refuse(str(exc)) from None


def verify_roots(
    snap: Snapshot, pinned: str, remembered: tuple[str, ...] = (), now: int | None = None
) -> tuple[RootDoc, tuple[str, ...]]:
    """Walk root/1..N; return the newest root and the hash of every version.

    With `now`, the newest root must not have expired: its keys are what a node trusts, and
    trust in them lasts only as long as the root says.
    """
    roots, hashes = walk_roots(snap, pinned, remembered)
    if now is not None:
        check_root_expiry(roots[-1], now)
    return roots[-1], hashes


def check_root_expiry(newest: RootDoc, now: int) -> None:
    if newest.expires <= now:
        raise _refuse(f"root/{newest.version}.root.json: expired at {records.format_time(newest.expires)}",
                      f"the root keys must publish root/{newest.version + 1}.root.json, signed by both "
                      "versions' root thresholds")


def walk_roots(
    snap: Snapshot, pinned: str, remembered: tuple[str, ...] = ()
) -> tuple[list[RootDoc], tuple[str, ...]]:
    """Every root version, each checked against the pin, the memory and the signature thresholds."""
    files = snap.files()
    versions = sorted(int(m.group(1)) for p in files if (m := ROOT_RE.match(p)))
    if not versions:
        raise _refuse("root/1.root.json: missing: this is not a meshctl coordination repository")
    if versions != list(range(1, len(versions) + 1)):
        raise _refuse(f"root/: versions must run 1..N without gaps, found {versions[:10]}")
    if len(versions) < len(remembered):
        raise _refuse(
            f"root/{len(versions)+1}.root.json: missing, but root version {len(remembered)} "
            "was accepted before (rollback)"
        )
    hashes: list[str] = []
    roots: list[RootDoc] = []
    for version in versions:
        path = f"root/{version}.root.json"
        data = read_bounded(snap, path, records.MAX_ROOT_BYTES)
        digest = sha256_hex(data)
        if version == 1 and "sha256:" + digest != pinned:
            raise _refuse(f"{path}: fingerprint sha256:{digest} does not match the pinned root {pinned}",
                          "this is another mesh, or the repository was forged")
        if version <= len(remembered) and remembered[version - 1] != digest:
            raise _refuse(f"{path}: root version {version} changed after it was accepted")
        root = _parse(records.parse_root, data, path)
        assert isinstance(root, RootDoc)
        if root.version != version:
            raise _refuse(f"{path}: field version is {root.version}, expected {version}")
        sigs = _signatures(snap, path, files)
        prev = roots[-1] if roots else None
        signers = [root] if prev is None else [prev, root]
        for signer in signers:
            if prev is not None and root.network_id != prev.network_id:
                raise _refuse(f"{path}: network_id differs from root version {prev.version}")
            good = signing.valid_signers(sigs, signer.root_keys, "root", root.network_id, data)
            if len(good) < signer.root_threshold:
                which = "its own" if signer is root else f"version {signer.version}'s"
                raise _refuse(
                    f"{path}: signed by {len(good)} of {which} root keys, "
                    f"threshold is {signer.root_threshold}"
                )
        hashes.append(digest)
        roots.append(root)
    return roots, tuple(hashes)


# --- state and peers ------------------------------------------------------------------------


def read_state_signers(snap: Snapshot, root: RootDoc) -> tuple[bytes, set[VerifyKey], bool]:
    """state.json's bytes, the admin keys of `root` with a valid signature on them, and whether
    there are signature entries at all (a missing .sig file is refused here)."""
    files = snap.files()
    if "state.json" not in files:
        raise _refuse("state.json: missing")
    data = read_bounded(snap, "state.json", records.MAX_STATE_BYTES)
    sigs = _signatures(snap, "state.json", files)
    return data, signing.valid_signers(sigs, root.admin_keys, "state", root.network_id, data), bool(sigs)


def unsigned_state_error(root: RootDoc, good: int, any_entries: bool) -> VerificationError:
    if any_entries and not good:
        why = f"no valid signature by an admin key of root version {root.version}"
    else:
        why = f"signed by {good} admin keys, threshold is {root.admin_threshold}"
    return _refuse(f"state.json.sig: {why}", "state.json must be signed with `meshctl admin sign`")


def parse_signed_state(data: bytes, root: RootDoc) -> StateDoc:
    """Parse state.json (only after its signatures were checked) and bind it to `root`."""
    state = _parse(records.parse_state, data, "state.json")
    assert isinstance(state, StateDoc)
    if state.network_id != root.network_id:
        raise _refuse(f"state.json: field network_id {state.network_id} is not this mesh's "
                      f"({root.network_id})")
    return state


def verify_state_doc(snap: Snapshot, root: RootDoc, now: int) -> tuple[StateDoc, str]:
    # Signature before parsing: unsigned bytes never reach the parser's deeper checks.
    data, good, any_entries = read_state_signers(snap, root)
    if len(good) < root.admin_threshold:
        raise unsigned_state_error(root, len(good), any_entries)
    state = parse_signed_state(data, root)
    if state.root_version != root.version:
        raise _refuse(f"state.json: field root_version is {state.root_version}, the newest root is "
                      f"{root.version}", "re-sign the state after a root rotation")
    if state.expires <= now:
        raise expired_error(state.expires)
    return state, sha256_hex(data)


def expired_error(expires: int) -> VerificationError:
    return _refuse(f"state.json: expired at {records.format_time(expires)}",
                   "an admin must run `meshctl admin renew`; the last good configuration is kept")


def check_memory(state: StateDoc, state_sha256: str, memory: TrustMemory | None) -> None:
    if memory is None:
        return
    if state.serial < memory.serial:
        raise _refuse(f"state.json: serial {state.serial} is lower than the accepted serial "
                      f"{memory.serial} (rollback refused)")
    if state.serial == memory.serial and state_sha256 != memory.state_sha256:
        raise _refuse(f"state.json: serial {state.serial} was accepted before with other content "
                      "(equivocation refused)")


def verify_record(
    snap: Snapshot, path: str, network_id: str, files: Mapping[str, object]
) -> tuple[PeerRecord, str]:
    """Parse and check the self-signature of a peers/ or requests/ file."""
    rec, digest, check = read_record(snap, path, network_id, files)
    if not check.passes():
        raise _unsigned(path)
    return rec, digest


def read_record(
    snap: Snapshot, path: str, network_id: str, files: Mapping[str, object]
) -> tuple[PeerRecord, str, SignatureCheck]:
    """Parse a peers/ or requests/ file; its self-signature is returned as a check still to run."""
    data = read_bounded(snap, path, records.MAX_PEER_BYTES)
    rec = _parse(records.parse_peer, data, path)
    assert isinstance(rec, PeerRecord)
    stem = path.rsplit("/", 1)[1][: -len(".json")]
    if rec.name != stem:
        raise _refuse(f"{path}: field name is {rec.name!r}, but the file is named {stem!r}")
    if rec.network_id != network_id:
        raise _refuse(f"{path}: field network_id is not this mesh's")
    key_id = rec.identity_key.key_id()
    candidates = tuple(s.sig for s in _signatures(snap, path, files) if s.keyid == key_id)
    message = signing.signed_message("peer", network_id, data)
    return rec, sha256_hex(data), SignatureCheck(rec.identity_key, candidates, message)


def _unsigned(path: str) -> VerificationError:
    return _refuse(f"{path}.sig: not signed by the record's identity key")


@dataclass(slots=True)
class _Member:
    name: str
    path: str
    record: PeerRecord
    digest: str
    cache_key: str | None
    check: SignatureCheck | None  # None: a cached record, its signature was checked before


def verify_peers(
    snap: Snapshot,
    state: StateDoc,
    kinds: Mapping[str, str],
    cache: MutableMapping[str, tuple[str, PeerRecord]] | None = None,
) -> dict[str, PeerRecord]:
    """Every listed member's record, checked in name order; the first problem is the one told.

    Records are parsed first and their signatures checked together afterwards (sigbatch runs
    them on both cores); a parse error stops the reading, but members before it are still
    checked fully first, so the error reported is the same as a one-by-one walk would give.
    """
    files = snap.files()
    listed = set(state.peers)
    present = {m.group(1) for p, k in kinds.items() if k == "peer" and (m := PEER_RE.match(p))}
    for name in sorted(present - listed):
        raise _refuse(f"peers/{name}.json: not listed in state.json")
    members: list[_Member] = []
    stopped: VerificationError | None = None
    for name in sorted(listed):
        try:
            members.append(_read_member(snap, name, state.network_id, files, cache))
        except VerificationError as exc:
            stopped = exc
            break
    pending = [m.check for m in members if m.check is not None]
    verdicts = iter(sigbatch.run_checks(pending))
    out: dict[str, PeerRecord] = {}
    for member in members:
        if member.check is not None:
            if not next(verdicts):
                raise _unsigned(member.path)
            if cache is not None and member.cache_key:
                cache[member.cache_key] = (member.digest, member.record)
        if member.digest != state.peers[member.name].record_sha256:
            raise _refuse(f"{member.path}: sha256 {member.digest[:16]}… differs from the hash "
                          "listed in state.json")
        if member.record.network_id != state.network_id:
            raise _refuse(f"{member.path}: field network_id is not this mesh's")
        out[member.name] = member.record
    if stopped is not None:
        raise stopped
    check_unique(state, out)
    return out


def _read_member(
    snap: Snapshot,
    name: str,
    network_id: str,
    files: Mapping[str, object],
    cache: MutableMapping[str, tuple[str, PeerRecord]] | None,
) -> _Member:
    path = f"peers/{name}.json"
    if path not in files:
        raise _refuse(f"{path}: listed in state.json but missing")
    blob, sig_blob = files[path], files.get(path + ".sig")
    key = f"{blob}:{sig_blob}" if blob and sig_blob else None
    hit = cache.get(key) if cache is not None and key else None
    if hit is not None:
        return _Member(name, path, hit[1], hit[0], key, None)
    rec, digest, check = read_record(snap, path, network_id, files)
    return _Member(name, path, rec, digest, key, check)


def check_unique(state: StateDoc, recs: Mapping[str, PeerRecord]) -> None:
    seen: dict[object, str] = {}
    for name in sorted(recs):
        rec, assignment = recs[name], state.peers[name]
        # Raw bytes as keys: hashing 30,000 key objects in Python costs a large mesh ~60 ms.
        for what, value in (("identity key", rec.identity_key.raw), ("WireGuard key", rec.wg_public_key.raw),
                            ("disco key", rec.disco_key.raw)):
            if (what, value) in seen:
                raise _refuse(f"peers/{name}.json: {what} is also used by {seen[(what, value)]}")
            seen[(what, value)] = name
        versions = [a.version for a in assignment.addresses]
        if len(set(versions)) != len(versions):
            raise _refuse(f"state.json: peer {name} has two addresses of one IP version")
        for addr in assignment.addresses:
            inside = addr in (state.ipv4_cidr if addr.version == 4 else state.ipv6_prefix)
            if not inside:
                raise _refuse(f"state.json: peer {name} address {addr} is outside the mesh prefix")
            if ("address", addr) in seen:
                raise _refuse(f"state.json: peer {name} address {addr} is also used by "
                              f"{seen[('address', addr)]}")
            seen[("address", addr)] = name


def verify_policy(snap: Snapshot, state: StateDoc) -> str:
    return _read_policy(snap, state.policy_sha256)


def _read_policy(snap: Snapshot, sha256: str | None) -> str:
    """policy.hujson as text, bounded; with `sha256`, only if it is the signed one."""
    files = snap.files()
    if "policy.hujson" not in files:
        raise _refuse("policy.hujson: missing")
    data = read_bounded(snap, "policy.hujson", MAX_POLICY_BYTES)
    if sha256 is not None and sha256_hex(data) != sha256:
        raise _refuse("policy.hujson: sha256 differs from policy_sha256 in state.json",
                      "after editing the policy, run `meshctl admin sign`")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse("policy.hujson: not valid UTF-8") from None


def relay_addresses(state: StateDoc) -> dict[str, list[routes.IPAddress]]:
    """The relays listed with a literal IP address (a name is resolved on the node, not here)."""
    out: dict[str, list[routes.IPAddress]] = {}
    for relay in state.relays:
        host = relay.address.rsplit(":", 1)[0].strip("[]")
        try:
            out.setdefault(relay.name, []).append(records.parse_ip(host))
        except ValueError:
            continue
    return out


_NO_ROUTES: Final = routes.EffectiveRoutes((), False)


def check_routes(state: StateDoc, member: str | None = None) -> None:
    """The approved routes follow coord/routes.py's rules (no mesh addresses, no relay, no
    overlap but HA pairs); the first broken one is told (one naming `member`, if any does)."""
    approved = {name: a.routes for name, a in state.peers.items() if a.routes}
    if not approved:
        return
    problems = routes.route_problems(approved, (state.ipv4_cidr, state.ipv6_prefix), relay_addresses(state))
    if problems:
        first = next((p for p in problems if member is not None and (p.startswith(f"member {member}:")
                                                                       or f" {member}'s " in p)), problems[0])
        raise _refuse(f"state.json: {first}", "an admin must approve other routes (`meshctl admin approve "
                      "NAME --routes ...`)")


def _peer(name: str, rec: PeerRecord, assignment: records.Assignment) -> Peer:
    offered = (routes.effective_routes(rec.advertise_routes, rec.advertise_exit_node, assignment.routes)
               if assignment.routes else _NO_ROUTES)  # nearly every member: skip the work at 30,000
    return Peer(
        name=name,
        identity_key=rec.identity_key,
        wg_public_key=rec.wg_public_key,
        disco_key=rec.disco_key,
        addresses=tuple(sorted(assignment.addresses, key=lambda a: a.version)),
        tags=assignment.tags,
        owner=assignment.owner,
        endpoints=rec.endpoints,
        approved_routes=offered.routes,
        exit_node=offered.exit_node,
        expires=assignment.expires,
    )


def pin_problems(snap: Snapshot, state: StateDoc, kinds: Mapping[str, str],
                 skip: Collection[str] = ()) -> list[str]:
    """Files nodes never read (README, CI configuration) against the hashes state.json pins, one line
    per file that differs, is missing or is not pinned. Nodes do not check these; admins' tools and
    `meshctl repo verify` do, so that no unsigned change to them goes unnoticed. A state from before
    pins (none listed) has nothing to compare; the next state an admin signs pins them."""
    if not state.pinned:
        return []
    problems = []
    files = snap.files()
    for path in sorted(state.pinned):
        if path in skip:
            continue
        if path not in files:
            problems.append(f"{path}: pinned in state.json but missing")
        elif sha256_hex(read_bounded(snap, path, MAX_OTHER_BYTES)) != state.pinned[path]:
            problems.append(f"{path}: sha256 differs from the hash pinned in state.json")
    for path in sorted(p for p, kind in kinds.items() if kind == "pinnable"):
        if path not in state.pinned and path not in skip:
            problems.append(f"{path}: not pinned in state.json (no signature covers it)")
    return problems


def _entitled_keys(snap: Snapshot, verified: Verified, path: str) -> tuple[str, Sequence[VerifyKey]]:
    """The file type and the keys that may sign `path` (the subject of a .sig file)."""
    if path == "state.json":
        roots, _ = walk_roots(snap, "sha256:" + verified.root_hashes[0])
        return "state", [k for r in roots for k in r.admin_keys]  # one signed before a rotation too
    if m := ROOT_RE.match(path):
        roots, _ = walk_roots(snap, "sha256:" + verified.root_hashes[0])
        version = int(m.group(1))
        return "root", list(roots[version - 1].root_keys) + (list(roots[version - 2].root_keys) if version > 1 else [])
    name = path.rsplit("/", 1)[1][: -len(".json")]
    if path.startswith("peers/") and name in verified.records:
        return "peer", (verified.records[name].identity_key,)
    try:
        return "peer", (records.parse_peer(read_bounded(snap, path, records.MAX_PEER_BYTES), path).identity_key,)
    except ParseError:
        return "peer", ()  # an unreadable record is reported by the record checks


def signature_entry_problems(snap: Snapshot, verified: Verified, sig_paths: Iterable[str]) -> list[str]:
    """Every entry of these .sig files is a valid signature by a key that may sign its file: a node
    needs only enough valid entries, but nothing unsigned may hide in the others either."""
    problems = []
    files = snap.files()
    for sig_path in sig_paths:
        path = sig_path.removesuffix(".sig")
        if sig_path not in files or path not in files:
            continue  # a signature without its file (or the reverse) is the verifier's to name
        try:
            sigs = signing.parse_signatures(read_bounded(snap, sig_path, signing.MAX_SIG_FILE_BYTES), name=sig_path)
        except ParseError as exc:
            problems.append(exc.message)
            continue
        file_type, keys = _entitled_keys(snap, verified, path)
        if file_type == "peer" and len(sigs) == 1 and keys and sigs[0].keyid == keys[0].key_id():
            continue  # the one entry: the record checks verified it (no second Ed25519 check per member)
        data = snap.read(path)
        ids = [s.keyid for s in sigs]
        for sig in sigs:
            if ids.count(sig.keyid) > 1 or not signing.valid_signers([sig], keys, file_type,
                                                                      verified.root.network_id, data):
                problems.append(f"{sig_path}: entry {sig.keyid[:16]!r} is not a valid signature by a key that "
                                f"may sign {path}")
                break
    return problems


def signed_record(snap: Snapshot, path: str, network_id: str) -> tuple[PeerRecord, bytes, signing.Signature]:
    """A peers/ or requests/ record, its bytes and the one signature entry that is its identity key's."""
    rec, _digest, check = read_record(snap, path, network_id, snap.files())
    good = [sig for sig in check.signatures if check.key.verify(sig, check.message)]
    if not good:
        raise _unsigned(path)
    return rec, snap.read(path), signing.Signature(rec.identity_key.key_id(), good[0])


def build_netmap(root: RootDoc, state: StateDoc, state_sha256: str,
                 recs: Mapping[str, PeerRecord], policy_text: str) -> NetMap:
    peers = tuple(_peer(name, recs[name], state.peers[name]) for name in sorted(recs))
    return NetMap(
        network=NetworkSettings(root.network_id, root.name, state.ipv4_cidr, state.ipv6_prefix,
                                state.domain),
        serial=state.serial,
        expires=state.expires,
        state_sha256=state_sha256,
        peers=peers,
        relays=tuple(Relay(r.name, r.address, r.identity_key) for r in state.relays),
        stun_servers=state.stun,
        policy_text=policy_text,
        authkeys=tuple(state.authkeys[k] for k in sorted(state.authkeys)),
        revoked=state.revoked,
    )


def verify_snapshot(
    snap: Snapshot,
    pinned: str,
    now: int,
    memory: TrustMemory | None = None,
    cache: MutableMapping[str, tuple[str, PeerRecord]] | None = None,
) -> Verified:
    """Everything a node checks before it uses a revision of the repository."""
    return _verify(snap, pinned, now, memory, cache, signed_policy=True)


def verify_members(snap: Snapshot, pinned: str, now: int) -> Verified:
    """Everything verify_snapshot checks but the policy's hash: policy.hujson is taken as it is,
    an unsigned edit included. For trying a policy edit against the signed members before it
    is signed (`meshctl acl check` in a checkout); never for configuring a node."""
    return _verify(snap, pinned, now, None, None, signed_policy=False)


def _verify(snap: Snapshot, pinned: str, now: int, memory: TrustMemory | None,
            cache: MutableMapping[str, tuple[str, PeerRecord]] | None, signed_policy: bool) -> Verified:
    kinds = check_paths(snap)
    root, root_hashes = verify_roots(snap, pinned, memory.root_hashes if memory else (), now)
    state, state_sha = verify_state_doc(snap, root, now)
    check_memory(state, state_sha, memory)
    check_routes(state)
    recs = verify_peers(snap, state, kinds, cache)
    policy = _read_policy(snap, state.policy_sha256 if signed_policy else None)
    return Verified(root, root_hashes, state, state_sha, recs, policy,
                    build_netmap(root, state, state_sha, recs, policy))
