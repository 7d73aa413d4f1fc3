"""Admin operations on a checkout of the coordination repository.

Each operation reads the checkout, computes the new files (pure), writes them
and commits. Signing needs the admin's private key, which never enters the repo.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from meshctl.coord import records, route_approval, signing, verify
from meshctl.coord.fs_snapshot import FsSnapshot
from meshctl.coord.records import Assignment, RootDoc, StateDoc
from meshctl.coord.route_approval import RoutesChoice
from meshctl.coord.routes import Prefix
from meshctl.coord.trust import STATE_LIFETIME_S as STATE_LIFETIME_S  # re-exported: tests, bench
from meshctl.errors import MeshctlError, ParseError, UsageError, VerificationError
from meshctl.keys import SigningKey, VerifyKey, load_signing_key, write_private_key

ROOT_LIFETIME_S: Final = 5 * 365 * 86400
DEFAULT_CIDR: Final = "100.64.0.0/10"
MAGICDNS_IP: Final = ipaddress.IPv4Address("100.100.100.100")
DEFAULT_STUN: Final = ("stun.l.google.com:19302", "stun1.l.google.com:19302",
                       "stun.cloudflare.com:3478")


def template_dir() -> Path:
    """coord-repo-template/, from the source tree or the PyInstaller bundle."""
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        return Path(bundle) / "coord-repo-template"
    return Path(__file__).resolve().parents[2] / "coord-repo-template"


def default_admin_key_path() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "meshctl" / "admin.key"


def load_admin_keys(paths: Sequence[Path]) -> list[SigningKey]:
    keys = []
    for path in paths:
        if not path.exists():
            raise UsageError(f"{path}: admin key file not found",
                             "pass --admin-key PATH (or set MESHCTL_ADMIN_KEY)")
        keys.append(load_signing_key(path))
    return keys


def load_or_create_admin_key(path: Path) -> tuple[SigningKey, bool]:
    if path.exists():
        return load_signing_key(path), False
    key = SigningKey.generate()
    write_private_key(path, key)
    return key, True


@dataclass(frozen=True, slots=True)
class Checkout:
    """The parsed, root-verified content of a checkout (signatures on state not required)."""

    path: Path
    root: RootDoc
    root_hashes: tuple[str, ...]
    state: StateDoc

    @property
    def fingerprint(self) -> str:
        return "sha256:" + self.root_hashes[0]


def open_checkout(path: Path) -> Checkout:
    if not (path / "root" / "1.root.json").exists():
        raise UsageError(f"{path}: not a meshctl coordination repository (no root/1.root.json)",
                         "run this inside the checkout or pass --repo DIR")
    snap = FsSnapshot(path)
    pinned = verify.fingerprint((path / "root" / "1.root.json").read_bytes())
    root, hashes = verify.verify_roots(snap, pinned)
    try:
        state = records.parse_state((path / "state.json").read_bytes())
    except FileNotFoundError:
        raise VerificationError(f"{path}/state.json: missing") from None
    except ParseError as exc:
        raise VerificationError(str(exc)) from None
    return Checkout(path, root, hashes, state)


def _sign_file(path: Path, file_type: str, network_id: str, keys: Sequence[SigningKey],
               keep_existing: bool = False) -> None:
    data = path.read_bytes()
    sigs = [signing.sign(k, file_type, network_id, data) for k in keys]
    sig_path = path.with_name(path.name + ".sig")
    if keep_existing and sig_path.exists():
        old = signing.parse_signatures(sig_path.read_bytes(), name=str(sig_path))
        sigs = list(old) + sigs
    sig_path.write_bytes(signing.marshal_signatures(sigs))


def _admin_signers(co: Checkout, keys: Sequence[SigningKey]) -> list[SigningKey]:
    allowed = set(co.root.admin_keys)
    usable = [k for k in keys if k.public() in allowed]
    if not usable:
        raise UsageError("the admin key is not an admin key of this mesh",
                         f"admin keys: {', '.join(k.short() for k in co.root.admin_keys)}")
    return usable


def write_state(co: Checkout, state: StateDoc, keys: Sequence[SigningKey], now: int,
                bump: bool = True) -> StateDoc:
    """Refresh serial, expiry and policy hash, then write and sign state.json."""
    policy = (co.path / "policy.hujson").read_bytes()
    new = replace(
        state,
        serial=state.serial + 1 if bump else state.serial,
        expires=now + STATE_LIFETIME_S,
        root_version=co.root.version,
        policy_sha256=verify.sha256_hex(policy),
    )
    path = co.path / "state.json"
    path.write_bytes(records.marshal_state(new))
    _sign_file(path, "state", co.root.network_id, _admin_signers(co, keys))
    return new


def signature_status(co: Checkout) -> tuple[int, int]:
    """(valid admin signatures on state.json, threshold)."""
    data = (co.path / "state.json").read_bytes()
    sig_path = co.path / "state.json.sig"
    sigs = signing.parse_signatures(sig_path.read_bytes(), name=str(sig_path)) if sig_path.exists() else ()
    good = signing.valid_signers(sigs, co.root.admin_keys, "state", co.root.network_id, data)
    return len(good), co.root.admin_threshold


# --- init ------------------------------------------------------------------------------------


def init_repo(dest: Path, name: str, cidr: str, domain: str | None, admin_keys: Sequence[SigningKey],
              root_threshold: int, admin_threshold: int, now: int) -> Checkout:
    if not records.NAME_RE.match(name):
        raise UsageError(f"--name {name!r}: use lowercase letters, digits and '-'")
    try:
        v4 = ipaddress.IPv4Network(cidr)
    except ValueError:
        raise UsageError(f"--cidr {cidr!r}: not an IPv4 CIDR such as 100.64.0.0/10") from None
    domain = domain or f"{name}.mesh"
    if not records.DOMAIN_RE.match(domain):
        raise UsageError(f"--domain {domain!r}: not a valid DNS domain")
    if dest.exists() and any(dest.iterdir()):
        raise UsageError(f"{dest}: directory exists and is not empty")
    pubs = tuple(k.public() for k in admin_keys)
    for what, t in (("--root-threshold", root_threshold), ("--admin-threshold", admin_threshold)):
        if not 1 <= t <= len(pubs):
            raise UsageError(f"{what} {t}: must be between 1 and the number of keys ({len(pubs)})")
    shutil.copytree(template_dir(), dest, dirs_exist_ok=True)
    for sub in ("peers", "requests", "root"):
        (dest / sub).mkdir(exist_ok=True)
        (dest / sub / ".keep").unlink(missing_ok=True)
    network_id = secrets.token_hex(16)
    root = RootDoc(network_id, name, 1, now + ROOT_LIFETIME_S, pubs, root_threshold, pubs,
                   admin_threshold)
    root_path = dest / "root" / "1.root.json"
    root_path.write_bytes(records.marshal_root(root))
    _sign_file(root_path, "root", network_id, admin_keys)
    ula = ipaddress.IPv6Network(((0xFD << 120) | (secrets.randbits(40) << 80), 48))
    state = StateDoc(network_id, 0, 1, now, v4, ula, domain, "0" * 64, {}, (), DEFAULT_STUN)
    co = Checkout(dest, root, (verify.sha256_hex(root_path.read_bytes()),), state)
    write_state(co, state, admin_keys, now)
    return open_checkout(dest)


# --- approve / revoke / renew / sign ---------------------------------------------------------


def _ipv6_for(state: StateDoc, v4: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    # The IPv4 address embedded in the ULA /48: stable and unique whenever the IPv4 is.
    return state.ipv6_prefix[int(v4)]


def next_ipv4(state: StateDoc) -> ipaddress.IPv4Address:
    used = {a for asg in state.peers.values() for a in asg.addresses}
    net = state.ipv4_cidr
    first = 1 if net.num_addresses > 2 else 0
    for i in range(first, min(net.num_addresses - 1, first + 1_000_000)):
        candidate = net[i]
        if candidate not in used and candidate != MAGICDNS_IP:
            return candidate
    raise MeshctlError(f"no free address left in {net}")


def approve(co: Checkout, name: str, keys: Sequence[SigningKey], now: int, ip: str | None = None,
            tags: Sequence[str] = (), owner: str = "",
            routes: RoutesChoice | None = None) -> tuple[StateDoc, list[str], list[str]]:
    """A join request (requests/NAME.json for a new name): move it to peers/, assign addresses,
    tags, owner and routes. For a member: its update request (a changed record, the same identity
    key) replaces its record, and/or its approved routes change; addresses, tags and owner stay."""
    if name in co.state.peers:
        return _approve_member(co, name, keys, now, routes, given=bool(ip or tags or owner))
    req = co.path / "requests" / f"{name}.json"
    if not req.exists():
        pending = sorted(p.stem for p in (co.path / "requests").glob("*.json"))
        raise UsageError(f"requests/{name}.json: no join request named {name!r}",
                         f"pending requests: {', '.join(pending) or 'none'}")
    files = FsSnapshot(co.path).files()
    rec, digest = verify.verify_record(FsSnapshot(co.path), f"requests/{name}.json",
                                       co.root.network_id, files)
    state = co.state
    for tag in tags:
        if not records.TAG_RE.match(tag):
            raise UsageError(f"--tag {tag!r}: tags look like tag:server")
    if not records.OWNER_RE.match(owner):
        raise UsageError(f"--owner {owner!r}: not a valid owner")
    if ip is not None:
        try:
            v4 = ipaddress.IPv4Address(ip)
        except ValueError:
            raise UsageError(f"--ip {ip!r}: not an IPv4 address") from None
        if v4 not in state.ipv4_cidr:
            raise UsageError(f"--ip {ip}: outside the mesh prefix {state.ipv4_cidr}")
    else:
        v4 = next_ipv4(state)
    approved = _decide_routes(co, rec, (), routes, _Identity(tuple(tags), owner))
    assignment = Assignment(digest, (v4, _ipv6_for(state, v4)), tuple(tags), owner, approved)
    peers = dict(state.peers)
    peers[name] = assignment
    candidate = replace(state, peers=peers)
    # Check uniqueness against existing members before moving anything.
    existing = {n: records.parse_peer((co.path / "peers" / f"{n}.json").read_bytes(), n)
                for n in state.peers}
    verify.check_unique(candidate, existing | {name: rec})
    _check_routes(candidate, name)
    (co.path / "peers").mkdir(exist_ok=True)  # git does not keep empty directories
    for suffix in ("", ".sig"):
        (co.path / "requests" / f"{name}.json{suffix}").rename(co.path / "peers" / f"{name}.json{suffix}")
    new = write_state(co, candidate, keys, now)
    moved = [f"peers/{name}.json", f"peers/{name}.json.sig"]
    removed = [f"requests/{name}.json", f"requests/{name}.json.sig"]
    return new, moved + ["state.json", "state.json.sig"], removed


@dataclass(frozen=True, slots=True)
class _Identity:
    """Who a device is to the policy's autoApprovers: its tags, else its owner."""

    tags: tuple[str, ...]
    owner: str


def _decide_routes(co: Checkout, rec: records.PeerRecord, current: Sequence[Prefix],
                   choice: RoutesChoice | None, who: _Identity) -> tuple[Prefix, ...]:
    """The approved routes after this approval; a plain one asks the policy's autoApprovers."""
    auto_routes: tuple[Prefix, ...] = ()
    auto_exit = False
    if choice is None and (rec.advertise_routes or rec.advertise_exit_node):
        from meshctl.policy.approvers import auto_approved
        from meshctl.policy.parse import parse_policy

        try:
            policy = parse_policy((co.path / "policy.hujson").read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"policy.hujson: unreadable ({exc})") from None
        except ParseError as exc:
            raise UsageError(exc.message, "fix the policy, or name the routes with --routes") from None
        auto = auto_approved(policy, who, rec.advertise_routes, rec.advertise_exit_node)
        auto_routes, auto_exit = auto.routes, auto.exit_node
    return route_approval.decide(rec, current, choice, auto_routes, auto_exit)


def _check_routes(state: StateDoc, member: str) -> None:
    """Refuse to sign routes that break coord/routes.py's rules (nodes would refuse the state)."""
    try:
        verify.check_routes(state, member)
    except VerificationError as exc:
        raise UsageError(exc.message.removeprefix("state.json: "), exc.hint) from None


def _approve_member(co: Checkout, name: str, keys: Sequence[SigningKey], now: int,
                    choice: RoutesChoice | None, given: bool) -> tuple[StateDoc, list[str], list[str]]:
    if given:
        raise UsageError(f"--ip, --tag and --owner are for join requests; {name!r} is already a member",
                         "revoke it and approve a new join request to change them")
    state = co.state
    current = state.peers[name]
    snap = FsSnapshot(co.path)
    files = snap.files()
    member, _ = verify.verify_record(snap, f"peers/{name}.json", co.root.network_id, files)
    request = f"requests/{name}.json"
    record, digest = member, current.record_sha256
    if request in files:
        record, digest = verify.verify_record(snap, request, co.root.network_id, files)
        if record.identity_key != member.identity_key:
            raise VerificationError(
                f"{request}: signed by identity key {record.identity_key.short()}, but member {name} is "
                f"{member.identity_key.short()}", "an update comes from the device itself; a new device joins "
                "under a new name")
    approved = _decide_routes(co, record, current.routes, choice, _Identity(current.tags, current.owner))
    if request not in files and approved == current.routes:
        raise UsageError(f"nothing to approve: {name} is a member with no pending update "
                         f"(requests/{name}.json) and its routes stay {route_approval.describe_routes(approved)}",
                         "fetch its update/NAME branch first, or name the routes with --routes")
    peers = dict(state.peers)
    peers[name] = replace(current, record_sha256=digest, routes=approved)
    candidate = replace(state, peers=peers)
    existing = {n: records.parse_peer((co.path / "peers" / f"{n}.json").read_bytes(), n)
                for n in state.peers if n != name}
    verify.check_unique(candidate, existing | {name: record})
    _check_routes(candidate, name)
    changed = ["state.json", "state.json.sig"]
    removed: list[str] = []
    if request in files:
        for suffix in ("", ".sig"):
            (co.path / f"{request}{suffix}").replace(co.path / "peers" / f"{name}.json{suffix}")
        changed += [f"peers/{name}.json", f"peers/{name}.json.sig"]
        removed = [request, f"{request}.sig"]
    new = write_state(co, candidate, keys, now)
    return new, changed, removed


def route_rows(co: Checkout) -> list[route_approval.RouteRow]:
    """`meshctl admin routes`: every member's routes, with its pending update request if any."""
    snap = FsSnapshot(co.path)
    files = snap.files()
    recs, pending = {}, {}
    for name in co.state.peers:
        path = f"peers/{name}.json"
        if path in files:
            recs[name] = verify.verify_record(snap, path, co.root.network_id, files)[0]
    for path in sorted(p for p in files if verify.REQUEST_RE.match(p)):
        try:
            rec = verify.verify_record(snap, path, co.root.network_id, files)[0]
        except VerificationError:
            continue  # `repo verify` reports it; this list shows what could be approved
        if rec.name in co.state.peers or rec.advertise_routes or rec.advertise_exit_node:
            pending[rec.name] = rec
    return route_approval.route_rows(co.state.peers, recs, pending)


def revoke(co: Checkout, name: str, keys: Sequence[SigningKey], now: int) -> tuple[StateDoc, list[str], list[str]]:
    if name not in co.state.peers:
        raise UsageError(f"state.json: no member named {name!r}")
    peers = dict(co.state.peers)
    del peers[name]
    removed = [f"peers/{name}.json", f"peers/{name}.json.sig"]
    for path in removed:
        (co.path / path).unlink(missing_ok=True)
    new = write_state(co, replace(co.state, peers=peers), keys, now)
    return new, ["state.json", "state.json.sig"], removed


def set_relays(co: Checkout, relays: Sequence[records.RelayEntry], keys: Sequence[SigningKey],
               now: int) -> StateDoc:
    return write_state(co, replace(co.state, relays=tuple(relays)), keys, now)


def renew(co: Checkout, keys: Sequence[SigningKey], now: int) -> StateDoc:
    return write_state(co, co.state, keys, now)


def cosign(co: Checkout, keys: Sequence[SigningKey]) -> tuple[int, int]:
    """Add signatures to the current state.json without changing it (thresholds above 1)."""
    path = co.path / "state.json"
    _sign_file(path, "state", co.root.network_id, _admin_signers(co, keys), keep_existing=True)
    return signature_status(co)


def rotate_root(co: Checkout, old_keys: Sequence[SigningKey], new_root_keys: Sequence[VerifyKey],
                new_admin_keys: Sequence[VerifyKey], root_threshold: int, admin_threshold: int,
                signers: Sequence[SigningKey], now: int) -> RootDoc:
    """Write root/N+1 signed by the given keys (they must meet both N's and N+1's thresholds)."""
    new = RootDoc(co.root.network_id, co.root.name, co.root.version + 1, now + ROOT_LIFETIME_S,
                  tuple(new_root_keys), root_threshold, tuple(new_admin_keys), admin_threshold)
    path = co.path / "root" / f"{new.version}.root.json"
    path.write_bytes(records.marshal_root(new))
    _sign_file(path, "root", co.root.network_id, list(old_keys) + list(signers))
    return new


def invite_text(co: Checkout, url: str | None) -> str:
    return (f"meshctl join {url or '<REPO_URL>'} --root {co.fingerprint}")
