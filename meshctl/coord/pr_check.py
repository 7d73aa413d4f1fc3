"""`meshctl repo verify`: the pull-request check, run by the repository's CI.

Without a base revision it verifies the checkout on its own (anchored on its own
root/1). With `--base` it also checks the change against the base branch: root
versions never change, the serial only grows, and a change that is not signed
by admins may only add or update join requests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from meshctl.coord import records, routes, verify
from meshctl.coord.verify import Snapshot, TrustMemory, Verified
from meshctl.errors import MeshctlError


@dataclass(frozen=True, slots=True)
class CheckReport:
    problems: tuple[str, ...]
    verified: Verified | None

    @property
    def ok(self) -> bool:
        return not self.problems


def _base_memory(base: Snapshot) -> tuple[str, TrustMemory]:
    pinned = verify.fingerprint(base.read("root/1.root.json"))
    _root, hashes = verify.verify_roots(base, pinned)
    data = base.read("state.json")
    state = records.parse_state(data)
    return pinned, TrustMemory(hashes, state.serial, verify.sha256_hex(data))


def check_requests(head: Snapshot, verified: Verified) -> list[str]:
    """Join requests (a new name) and update requests (a member's changed record, signed by the
    member's own identity key: `meshctl set --advertise-routes ...`)."""
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


def check_change(head: Snapshot, base: Snapshot | None, now: int,
                 policy_tests: Callable[[Verified], list[str]] | None = None) -> CheckReport:
    problems: list[str] = []
    try:
        verify.check_paths(head)  # every size bounded before the first read below
    except MeshctlError as exc:
        return CheckReport((exc.message,), None)
    try:
        if base is not None:
            pinned, memory = _base_memory(base)
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
    if base is not None and memory is not None:
        unsigned_change = verified.state_sha256 == memory.state_sha256
        for path in _changed_paths(head, base):
            if unsigned_change and not verify.REQUEST_RE.match(path.removesuffix(".sig")):
                problems.append(f"{path}: changed without a newly signed state.json "
                                "(a join request may only add requests/*)")
    problems += check_requests(head, verified)
    if policy_tests is not None:
        problems += policy_tests(verified)
    return CheckReport(tuple(problems), verified)
