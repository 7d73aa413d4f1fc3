"""`meshctl repo verify`: the pull-request check, run by the repository's CI (pure).

The CLI hands it git's trees (GitSnapshot of the commits), not a checkout, so a gitlink, a symbolic
link or an executable file is seen and refused as nodes refuse it. Without a base revision the
head is verified on its own, anchored on its own root/1. With a base, the change itself is judged:

- the head verifies as a node verifies it, with the base's roots, serial and state hash as the
  memory: root versions never change, the serial only grows;
- files nodes never read (README, CI configuration) match the hashes the head's state pins;
- every signature entry in a changed .sig file is a valid signature by a key that may sign it;
- without a newly signed state the change is one join request: exactly one request added, or a
  device's own request replaced (signed by the same identity key), and nothing else changed;
- with a newly signed state, only what that state covers changes: roots, peers/, the policy, the
  pinned files, and the requests it approved (moved to peers/ unchanged);
- every pending request verifies and uses no member's or revoked device's keys; the policy tests pass.

So a green check means: nothing unsigned changed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from meshctl.coord import records, routes, verify
from meshctl.coord.records import StateDoc
from meshctl.coord.state_diff import fingerprint
from meshctl.coord.verify import Snapshot, TrustMemory, Verified
from meshctl.errors import MeshctlError

JOIN_RULE = "a join request may only add its own requests/NAME.json"


@dataclass(frozen=True, slots=True)
class CheckReport:
    problems: tuple[str, ...]
    verified: Verified | None
    added_requests: tuple[tuple[str, str], ...] = ()  # (name, key fingerprint) of requests this change adds

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class _Base:
    snap: Snapshot
    pinned: str
    memory: TrustMemory
    state: StateDoc


def _base(base: Snapshot) -> _Base:
    verify.check_paths(base)  # every size bounded before the reads below
    pinned = verify.fingerprint(base.read("root/1.root.json"))
    _root, hashes = verify.verify_roots(base, pinned)
    data = base.read("state.json")
    state = records.parse_state(data)
    return _Base(base, pinned, TrustMemory(hashes, state.serial, verify.sha256_hex(data)), state)


def check_requests(head: Snapshot, verified: Verified) -> list[str]:
    """Every pending request: self-signed, no key already in use or revoked; a join request for a
    new name, or an update request for a member (its changed record, signed by the member's own
    identity key: `meshctl set --advertise-routes ...`)."""
    problems: list[str] = []
    files = head.files()
    seen: dict[object, str] = {}
    for rec in verified.records.values():
        for value in (rec.identity_key, rec.wg_public_key, rec.disco_key):
            seen[value] = f"member {rec.name}"
    mesh = (verified.state.ipv4_cidr, verified.state.ipv6_prefix)
    for path in sorted(p for p in files if verify.REQUEST_RE.match(p)):
        try:
            rec, _digest = verify.verify_record(head, path, verified.root.network_id, files)
        except MeshctlError as exc:
            problems.append(exc.message)
            continue
        member = verified.records.get(rec.name)
        if member is not None and rec.identity_key != member.identity_key:
            problems.append(f"{path}: {rec.name!r} is already a member (an update must be signed by its own "
                            "identity key)")
        problems += [f"{path}: advertise_routes: {p}" for p in routes.advertised_problems(rec.advertise_routes, mesh)]
        for value in (rec.identity_key, rec.wg_public_key, rec.disco_key):
            if value in seen and not (member is not None and seen[value] == f"member {rec.name}"):
                problems.append(f"{path}: key {value.short()} is already used by {seen[value]}")
            seen[value] = f"request {rec.name}"
        for gone in verified.state.revoked:
            if gone.matches(rec):
                problems.append(f"{path}: keys of {gone.name}, revoked {records.format_time(gone.at)} (an admin "
                                "approves them again only with --allow-revoked-key)")
    return problems


def _changed_paths(head: Snapshot, base: Snapshot) -> list[str]:
    hf, bf = head.files(), base.files()
    changed = []
    for path in sorted(set(hf) | set(bf)):
        if path not in hf or path not in bf:
            changed.append(path)
        elif hf[path] is not None and hf[path] == bf[path]:
            continue
        elif head.read(path) != base.read(path):
            changed.append(path)
    return changed


def _request_name(path: str) -> str | None:
    m = verify.REQUEST_RE.match(path.removesuffix(".sig"))
    return m.group(1) if m else None


def _change_problems(head: Snapshot, base: _Base, verified: Verified, changed: Sequence[str]) -> list[str]:
    newly_signed = verified.state_sha256 != base.memory.state_sha256
    problems = []
    for path in changed:
        if _request_name(path) is not None:
            continue  # below
        if verify.classify_path(path) == "pinnable":
            if not verified.state.pinned:  # a state from before pins: nothing covers the file
                problems.append(f"{path}: changed, and no signature covers it (state.json pins no files; "
                                "an admin signs them with `meshctl admin sign --update-pins`)")
            continue  # otherwise pin_problems compared it with its pin
        if not newly_signed and path != "state.json.sig":  # a co-signature changes only the .sig
            problems.append(f"{path}: changed without a newly signed state.json ({JOIN_RULE})")
    names = sorted({n for p in changed if (n := _request_name(p)) is not None})
    if newly_signed:
        problems += [p for n in names if (p := _approved_request_problem(head, base, verified, n))]
    else:
        problems += _join_request_problems(head, base, names)
    return problems


def _approved_request_problem(head: Snapshot, base: _Base, verified: Verified, name: str) -> str | None:
    """In a newly signed change a request may only leave requests/ for peers/, unchanged: a join
    request for a new member, or a member's update request (signed by the member's own key)."""
    path = f"requests/{name}.json"
    hf, bf = head.files(), base.snap.files()
    update = name in base.state.peers
    if path not in hf and path in bf and name in verified.state.peers:
        peer = f"peers/{name}.json"
        if peer in hf and head.read(peer) == base.snap.read(path):
            if update and _owner(base.snap, peer) != _owner(head, peer):
                return f"{path}: an update of member {name} signed by another identity key"
            return None
        return f"{path}: approved, but peers/{name}.json is not this request"
    what = "removed" if path not in hf else "added" if path not in bf else "changed"
    return f"{path}: {what} in a change an admin signed, and no signature covers it"


def _join_request_problems(head: Snapshot, base: _Base, names: Sequence[str]) -> list[str]:
    problems = []
    if len(names) > 1:
        problems.append(f"requests/: a join request adds exactly one request; this change touches {len(names)} "
                        f"({', '.join(names[:5])})")
    hf, bf = head.files(), base.snap.files()
    for name in names:
        path = f"requests/{name}.json"
        if path not in hf:
            problems.append(f"{path}: removed ({JOIN_RULE})")
        elif path in bf:
            old, new = _owner(base.snap, path), _owner(head, path)
            if old is None or new is None or old != new:
                problems.append(f"{path}: replaces another device's request (key {old or 'unreadable'}; the new one "
                                f"is signed by key {new or 'unreadable'}): only the same identity key may replace it")
    return problems


def _owner(snap: Snapshot, path: str) -> str | None:
    """The key fingerprint of a request's identity key, if the request parses."""
    try:
        return fingerprint(records.parse_peer(verify.read_bounded(snap, path, records.MAX_PEER_BYTES), path))
    except MeshctlError:
        return None


def _added_requests(head: Snapshot, base: Snapshot | None) -> tuple[tuple[str, str], ...]:
    bf = base.files() if base is not None else {}
    out = []
    for path in sorted(p for p in head.files() if verify.REQUEST_RE.match(p)):
        if base is None or path not in bf or head.read(path) != base.read(path):
            fp = _owner(head, path)
            if fp is not None:
                out.append((path[len("requests/"):-len(".json")], fp))
    return tuple(out)


def check_change(head: Snapshot, base: Snapshot | None, now: int,
                 policy_tests: Callable[[Verified], list[str]] | None = None) -> CheckReport:
    try:
        kinds = verify.check_paths(head)  # every size bounded before the first read below
    except MeshctlError as exc:
        return CheckReport((exc.message,), None)
    anchor: _Base | None = None
    try:
        if base is not None:
            anchor = _base(base)
            pinned, memory = anchor.pinned, anchor.memory
        else:
            pinned, memory = verify.fingerprint(head.read("root/1.root.json")), None
    except KeyError:
        return CheckReport(("root/1.root.json: missing",), None)
    except MeshctlError as exc:
        return CheckReport((f"base: {exc.message}",), None)
    try:
        verified = verify.verify_snapshot(head, pinned, now, memory)
    except MeshctlError as exc:
        return CheckReport((exc.message,), None)
    problems = verify.pin_problems(head, verified.state, kinds)
    if anchor is not None:
        changed = _changed_paths(head, anchor.snap)
        problems += verify.signature_entry_problems(head, verified, [p for p in changed if p.endswith(".sig")])
        problems += _change_problems(head, anchor, verified, changed)
    problems += check_requests(head, verified)
    if policy_tests is not None:
        problems += policy_tests(verified)
    return CheckReport(tuple(problems), verified, _added_requests(head, base))
