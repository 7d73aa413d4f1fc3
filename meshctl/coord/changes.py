"""Each signing command's own change, built from a verified Baseline and its arguments alone (pure).

Every builder starts from `base.state` (what valid signatures cover) and returns a `Change`; the
fields it does not touch carry over unchanged. coord/signed_change.py signs and verifies the result.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from meshctl.coord import addressing, records, route_approval, signing, verify
from meshctl.coord.addressing import MAGICDNS_IP as MAGICDNS_IP  # re-exported: admin, tests
from meshctl.coord.addressing import QUARANTINE_S
from meshctl.coord.baseline import ALL_PINNED, Baseline
from meshctl.coord.delegation import Enrolled, identity_signature
from meshctl.coord.records import Assignment, AuthKey, PeerRecord, Revoked, StateDoc
from meshctl.coord.route_approval import RoutesChoice
from meshctl.coord.routes import Prefix
from meshctl.coord.signed_change import Change, OverlaySnapshot, pinnable_hashes
from meshctl.coord.state_diff import StateView, authkey_line, fingerprint
from meshctl.errors import MeshctlError, ParseError, UsageError, VerificationError
from meshctl.keys import VerifyKey

# --- addresses ---------------------------------------------------------------------------------


def quarantined(state: StateDoc, now: int) -> dict[ipaddress.IPv4Address | ipaddress.IPv6Address, Revoked]:
    """Addresses of devices revoked less than QUARANTINE_S ago, with the revocation that holds them."""
    return addressing.quarantined(state.revoked, now)


def next_ipv4(state: StateDoc, now: int = 0) -> ipaddress.IPv4Address:
    """The first IPv4 address no member uses, that is not MagicDNS's and not in quarantine."""
    used = {a for asg in state.peers.values() for a in asg.addresses} | set(quarantined(state, now))
    found = addressing.free_ipv4(state.ipv4_cidr, used)
    if found is None:
        raise MeshctlError(f"no free address left in {state.ipv4_cidr}")
    return found


def ipv6_for(state: StateDoc, v4: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    return addressing.mesh_ipv6_for(state.ipv6_prefix, v4)


def _explicit_ipv4(state: StateDoc, ip: str, now: int) -> tuple[ipaddress.IPv4Address, list[str]]:
    try:
        v4 = ipaddress.IPv4Address(ip)
    except ValueError:
        raise UsageError(f"--ip {ip!r}: not an IPv4 address") from None
    if v4 not in state.ipv4_cidr:
        raise UsageError(f"--ip {ip}: outside the mesh prefix {state.ipv4_cidr}")
    held = quarantined(state, now).get(v4)
    if held is None:
        return v4, []
    until = records.format_time(held.at + QUARANTINE_S)
    return v4, [f"{v4} was {held.name}'s (revoked {records.format_time(held.at)}); quarantined until {until}, "
                "used because --ip names it"]


# --- key fingerprints --------------------------------------------------------------------------


def normalize_fingerprint(text: str) -> str:
    """`--expect-key`: the fingerprint `join` printed (16 hex digits; case, ':' and '-' ignored), or
    the whole `ed25519:...` identity key."""
    if text.startswith("ed25519:"):
        try:
            return VerifyKey.from_text(text).key_id()
        except ParseError as exc:
            raise UsageError(f"--expect-key {text[:80]!r}: {exc.message}") from None
    cleaned = "".join(ch for ch in text.lower() if ch not in ":- ")
    if len(cleaned) != 16 or any(ch not in "0123456789abcdef" for ch in cleaned):
        raise UsageError(f"--expect-key {text[:80]!r}: expected the 16-digit key fingerprint `meshctl join` printed")
    return cleaned


def _revoked_matches(state: StateDoc, rec: PeerRecord) -> list[Revoked]:
    return [r for r in state.revoked if r.matches(rec)]


def _which_keys(r: Revoked, rec: PeerRecord) -> str:
    same = [what for what, a, b in (("identity", r.identity_key, rec.identity_key),
                                    ("WireGuard", r.wg_public_key, rec.wg_public_key),
                                    ("disco", r.disco_key, rec.disco_key)) if a == b]
    return " and ".join(same)


# --- the commands ------------------------------------------------------------------------------


def approve(base: Baseline, name: str, now: int, ip: str | None = None, tags: Sequence[str] = (),
            owner: str = "", expect_key: str | None = None, allow_revoked_key: bool = False,
            routes: RoutesChoice | None = None, expires_in: int | None = None) -> Change:
    """Move requests/NAME to peers/, assign addresses, tags, owner and routes (`routes`, else what
    the signed policy's autoApprovers approve), and, with `expires_in` seconds, a membership expiry
    (nodes drop the member from then on). For a member: approve_member."""
    state = base.state
    if name in state.peers:
        if expires_in is not None:
            raise UsageError(f"--expires is for join requests; {name!r} is already a member",
                             f"change its expiry with `meshctl admin renew {name} --expires ...`")
        if ip is not None or tags or owner or allow_revoked_key:
            raise UsageError(f"--ip, --tag, --owner and --allow-revoked-key are for join requests; {name!r} is "
                             "already a member", "revoke it and approve a new join request to change them")
        return approve_member(base, name, routes, expect_key)
    path = f"requests/{name}.json"
    files = base.snapshot.files()
    if path not in files:
        pending = sorted(p[len("requests/"):-len(".json")] for p in files if verify.REQUEST_RE.match(p))
        raise UsageError(f"{path}: no join request named {name!r}", f"pending requests: {', '.join(pending) or 'none'}")
    expected = normalize_fingerprint(expect_key) if expect_key is not None else None
    for tag in tags:
        if not records.TAG_RE.match(tag):
            raise UsageError(f"--tag {tag!r}: tags look like tag:server")
    if not records.OWNER_RE.match(owner):
        raise UsageError(f"--owner {owner!r}: not a valid owner")
    rec, data, sig = verify.signed_record(base.snapshot, path, state.network_id)
    fp = fingerprint(rec)
    if expected is not None and expected != fp:
        raise VerificationError(f"{path}: key fingerprint {fp} does not match --expect-key {expected}",
                                "this request was not made by the device you expect: do not approve it")
    revoked = _revoked_matches(state, rec)
    if revoked and not allow_revoked_key:
        r = revoked[0]
        raise VerificationError(
            f"{path}: {_which_keys(r, rec)} key of {r.name}, revoked {records.format_time(r.at)}",
            "a revoked device does not come back under another name unnoticed; if you mean it, "
            "approve with --allow-revoked-key")
    warnings: list[str] = []
    if ip is not None:
        v4, warnings = _explicit_ipv4(state, ip, now)
    else:
        v4 = next_ipv4(state, now)
    v6 = ipv6_for(state, v4)
    approved = _decide_routes(base, rec, (), routes, tuple(tags), owner)
    expires = now + expires_in if expires_in is not None else None
    assignment = Assignment(verify.sha256_hex(data), (v4, v6), tuple(tags), owner, routes=approved, expires=expires)
    new = dataclasses.replace(state, peers={**state.peers, name: assignment},
                              revoked=tuple(r for r in state.revoked if r not in revoked))
    _check_routes(new, name)
    moved = {path: None, f"{path}.sig": None, f"peers/{name}.json": data,
             f"peers/{name}.json.sig": signing.marshal_signatures([sig])}
    lines = [f"approved {name}: {v4} {v6}", f"key fingerprint {fp} ({path})",
             *route_approval.approval_notes(name, (), approved)]
    if expires is not None:
        lines.append(f"membership expires {records.format_time(expires)}")
    return Change(new, moved, tuple(lines), f"Approve {name}", tuple(warnings))


def set_member_expiry(base: Baseline, name: str, now: int, expires_in: int | None) -> Change:
    """Extend (or, with None, lift) a member's membership expiry."""
    state = base.state
    if name not in state.peers:
        raise UsageError(f"state.json: no member named {name!r}")
    expires = now + expires_in if expires_in is not None else None
    peers = {**state.peers, name: dataclasses.replace(state.peers[name], expires=expires)}
    when = records.format_time(expires) if expires is not None else "never"
    return Change(dataclasses.replace(state, peers=peers), summary=(f"membership of {name} expires: {when}",),
                  message=f"Renew {name}")


def approve_member(base: Baseline, name: str, routes: RoutesChoice | None = None,
                   expect_key: str | None = None) -> Change:
    """A member's update request (requests/NAME.json: its changed record, signed by the member's
    own identity key) replaces its record, and/or its approved routes change (`routes`, else what
    is approved and still advertised, plus autoApprovers'). Addresses, tags and owner stay."""
    state = base.state
    current = state.peers[name]
    member = base.verified.records[name]
    path = f"requests/{name}.json"
    record, files, summary = member, {}, []
    if path in base.snapshot.files():
        record, data, sig = verify.signed_record(base.snapshot, path, state.network_id)
        if record.identity_key != member.identity_key:
            raise VerificationError(
                f"{path}: signed by identity key {record.identity_key.short()}, but member {name} is "
                f"{member.identity_key.short()}", "an update comes from the device itself; a new device joins "
                "under a new name")
        if expect_key is not None and normalize_fingerprint(expect_key) != fingerprint(record):
            raise VerificationError(f"{path}: key fingerprint {fingerprint(record)} does not match --expect-key "
                                    f"{normalize_fingerprint(expect_key)}")
        current = dataclasses.replace(current, record_sha256=verify.sha256_hex(data))
        files = {path: None, f"{path}.sig": None, f"peers/{name}.json": data,
                 f"peers/{name}.json.sig": signing.marshal_signatures([sig])}
        summary.append(f"approved the update of {name} (record replaced; addresses, tags and owner kept)")
    approved = _decide_routes(base, record, current.routes, routes, current.tags, current.owner)
    if not files and approved == current.routes:
        raise UsageError(f"nothing to approve: {name} is a member with no pending update ({path}) and its routes "
                         f"stay {route_approval.describe_routes(approved)}",
                         f"fetch its update/{name} branch first, or name the routes with --routes")
    new = dataclasses.replace(state, peers={**state.peers, name: dataclasses.replace(current, routes=approved)})
    _check_routes(new, name)
    summary += route_approval.approval_notes(name, state.peers[name].routes, approved)
    return Change(new, files, tuple(summary), f"Approve {'update of' if files else 'routes of'} {name}")


@dataclasses.dataclass(frozen=True, slots=True)
class _Identity:
    """Who a device is to the policy's autoApprovers: its tags, else its owner."""

    tags: tuple[str, ...]
    owner: str


def _decide_routes(base: Baseline, rec: PeerRecord, current: Sequence[Prefix], choice: RoutesChoice | None,
                   tags: tuple[str, ...], owner: str) -> tuple[Prefix, ...]:
    """The approved routes after this approval; a plain one asks the signed policy's autoApprovers."""
    auto_routes: tuple[Prefix, ...] = ()
    auto_exit = False
    if choice is None and (rec.advertise_routes or rec.advertise_exit_node):
        from meshctl.policy.approvers import auto_approved
        from meshctl.policy.parse import parse_policy

        try:
            policy = parse_policy(base.verified.policy_text)
        except ParseError as exc:
            raise UsageError(exc.message, "fix the policy, or name the routes with --routes") from None
        auto = auto_approved(policy, _Identity(tags, owner), rec.advertise_routes, rec.advertise_exit_node)
        auto_routes, auto_exit = auto.routes, auto.exit_node
    return route_approval.decide(rec, current, choice, auto_routes, auto_exit)


def _check_routes(state: StateDoc, member: str) -> None:
    """Refuse to sign routes that break coord/routes.py's rules (nodes would refuse the state)."""
    try:
        verify.check_routes(state, member)
    except VerificationError as exc:
        raise UsageError(exc.message.removeprefix("state.json: "), exc.hint) from None


def revoke(base: Baseline, name: str, now: int) -> Change:
    """Remove a member; its keys are remembered as revoked, its addresses rest for QUARANTINE_S."""
    state = base.state
    if name not in state.peers:
        raise UsageError(f"state.json: no member named {name!r}")
    rec = base.verified.records[name]
    gone = Revoked(name, rec.identity_key, rec.wg_public_key, rec.disco_key, state.peers[name].addresses, now)
    peers = {n: a for n, a in state.peers.items() if n != name}
    new = dataclasses.replace(state, peers=peers, revoked=(*state.revoked, gone))
    return Change(new, {f"peers/{name}.json": None, f"peers/{name}.json.sig": None},
                  (f"revoked {name} (key {fingerprint(rec)})",), f"Revoke {name}")


def renew(base: Baseline) -> Change:
    """The same content with a new serial and expiry."""
    return Change(base.state, message="Renew")


def sign_policy(base: Baseline, update_pins: bool = False) -> Change:
    """Sign the checkout's policy.hujson (and, with update_pins, its README and CI files)."""
    snap = base.snapshot
    if "policy.hujson" not in snap.files():
        raise UsageError("policy.hujson: missing")
    files: dict[str, bytes | None] = {"policy.hujson": snap.read("policy.hujson")}
    pinned = pinnable_hashes(snap, {}) if update_pins else base.state.pinned
    return Change(dataclasses.replace(base.state, pinned=pinned), files, message="Sign")


def sign_inputs(update_pins: bool) -> frozenset[str]:
    """The files `admin sign` supplies itself: the policy, and with --update-pins the pinned files."""
    return frozenset({"policy.hujson", ALL_PINNED} if update_pins else {"policy.hujson"})


def set_stun(base: Baseline, servers: Sequence[str]) -> Change:
    """The STUN servers nodes ask for their public address (HOST:PORT each)."""
    for server in servers:
        if not records.HOSTPORT_RE.match(server) or not 1 <= int(server.rsplit(":", 1)[1]) <= 65535:
            raise UsageError(f"STUN server {server[:80]!r}: expected HOST:PORT such as stun.example.org:3478")
    if not servers or len(servers) > records.MAX_STUN or len(set(servers)) != len(servers):
        raise UsageError(f"give 1 to {records.MAX_STUN} distinct STUN servers")
    return Change(dataclasses.replace(base.state, stun=tuple(servers)), message="Set STUN servers",
                  summary=(f"STUN servers: {', '.join(servers)}",))


def cosign(base: Baseline, remembered: StateView | None) -> Change:
    """Add this admin's signature to the state as it is (admin thresholds above 1). The diff starts
    from the last state this admin accepted, when it is at hand."""
    shown_from = None
    if remembered is not None:
        # Records of members whose record did not change are the ones verified here.
        same = {n: rec for n, rec in base.verified.records.items()
                if n in remembered.state.peers and remembered.state.peers[n].record_sha256
                == base.state.peers[n].record_sha256}
        shown_from = StateView(remembered.state, same, remembered.policy_text)
    return Change(base.state, message="Co-sign", resign=False, shown_from=shown_from)


# --- auth keys (scoped delegations) ------------------------------------------------------------

DEFAULT_AUTHKEY_LIFETIME_S: Final = 90 * 86400


def authkey_create(base: Baseline, public: VerifyKey, now: int, tags: Sequence[str] = (), reusable: bool = False,
                   expires_in: int = DEFAULT_AUTHKEY_LIFETIME_S, pool: str | None = None) -> Change:
    """List a new auth key's public half with its scope (the private half never enters the repo)."""
    state = base.state
    for tag in tags:
        if not records.TAG_RE.match(tag):
            raise UsageError(f"--tag {tag!r}: tags look like tag:server")
    if len(set(tags)) != len(tags) or len(tags) > records.MAX_TAGS:
        raise UsageError(f"--tag: give at most {records.MAX_TAGS} distinct tags")
    try:
        network = ipaddress.IPv4Network(pool) if pool is not None else state.ipv4_cidr
    except ValueError:
        raise UsageError(f"--pool {pool!r}: not an IPv4 CIDR such as 100.64.1.0/24 (no host bits set)") from None
    if not network.subnet_of(state.ipv4_cidr):
        raise UsageError(f"--pool {network}: not inside the mesh prefix {state.ipv4_cidr}")
    if len(state.authkeys) >= records.MAX_AUTHKEYS:
        raise UsageError(f"state.json lists {len(state.authkeys)} auth keys already, the most it may",
                         "revoke unused ones first: meshctl admin authkey list")
    key = AuthKey(public.key_id(), public, tuple(tags), network, now + expires_in, reusable)
    new = dataclasses.replace(state, authkeys={**state.authkeys, key.id: key})
    return Change(new, summary=(f"created {authkey_line(key)}",), message=f"Create auth key {key.id}")


def authkey_revoke(base: Baseline, key_id: str, pending: Sequence[str] = ()) -> Change:
    """Remove an auth key: it adds nobody from now on, and nodes drop the devices it added that
    no admin absorbed (`pending`: their names, told to the admin)."""
    state = base.state
    if key_id not in state.authkeys:
        listed = ", ".join(sorted(state.authkeys)) or "none"
        raise UsageError(f"state.json: no auth key {key_id!r}", f"auth keys: {listed}")
    key = state.authkeys[key_id]
    new = dataclasses.replace(state, authkeys={k: v for k, v in state.authkeys.items() if k != key_id})
    lines = [f"revoked {authkey_line(key)}"]
    lines += [f"dropped: {name}, enrolled with it and never absorbed (nodes drop it on their next sync)"
              for name in pending]
    return Change(new, summary=tuple(lines), message=f"Revoke auth key {key_id}")


@dataclass(frozen=True, slots=True)
class Absorbed:
    """Enrolled devices taken into the state as ordinary members (the next signing command's part)."""

    before: Baseline  # the verified checkout, before: what the diff starts from
    files: Mapping[str, bytes]  # peers/NAME.json(.sig) of each
    lines: tuple[str, ...]
    names: tuple[str, ...]
    warnings: tuple[str, ...] = ()  # branches not read, enrollments refused
    skipped: tuple[str, ...] = ()  # accepted by nodes, but not absorbed (their auth key is being revoked)


def absorb(base: Baseline, accepted: Mapping[str, Enrolled]) -> tuple[Baseline, Absorbed]:
    """The baseline with every accepted enrollment as a member (addresses and tags of the enrollment,
    no owner, no expiry); a single-use key that added one is used up and leaves the state. The
    builders of the command's own change start from the returned baseline."""
    state = base.state
    peers = dict(state.peers)
    used: set[str] = set()
    files: dict[str, bytes] = {}
    lines = []
    recs = dict(base.verified.records)
    for name in sorted(accepted):
        e = accepted[name]
        peers[name] = Assignment(verify.sha256_hex(e.candidate.peer), tuple(e.enrollment.addresses), e.tags)
        files[f"peers/{name}.json"] = e.candidate.peer
        files[f"peers/{name}.json.sig"] = signing.marshal_signatures([identity_signature(e)])
        recs[name] = e.record
        if not e.key.reusable:
            used.add(e.key.id)
        lines.append(f"absorbed {name}: {' '.join(map(str, e.enrollment.addresses))}, key {fingerprint(e.record)}, "
                     f"enrolled with auth key {e.key.id}{' (used up)' if not e.key.reusable else ''}")
    new = dataclasses.replace(state, peers=peers,
                              authkeys={k: v for k, v in state.authkeys.items() if k not in used})
    verified = dataclasses.replace(base.verified, state=new, records=recs)
    snapshot = OverlaySnapshot(base.snapshot, files)
    after = dataclasses.replace(base, snapshot=snapshot, verified=verified)
    return after, Absorbed(base, files, tuple(lines), tuple(sorted(accepted)))


def with_absorbed(change: Change, absorbed: Absorbed) -> Change:
    """The command's change with the absorbed members' files (unless the command removed them,
    `revoke NAME` of a device just absorbed) and lines."""
    warnings = change.warnings + absorbed.warnings
    if not absorbed.names:
        return dataclasses.replace(change, warnings=warnings)
    files = {**absorbed.files, **change.files}
    message = f"{change.message}; absorb enrolled {', '.join(absorbed.names)}"
    return dataclasses.replace(change, files=files, summary=change.summary + absorbed.lines, message=message,
                               warnings=warnings)
