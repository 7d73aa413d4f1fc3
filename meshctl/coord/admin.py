"""Admin operations on a checkout of the coordination repository (the shell).

Every signing operation takes one path (coord/signed_change.py): verify the checkout the way a node
does, from the admin's own trust memory (coord/admin_trust.py), build the command's own change
from what valid signatures cover, sign it in memory, verify the result again, show what it changes,
and only then write the files, remember the new state and commit exactly what was verified.
Signing needs the admin's private key, which never enters the repo.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from meshctl.coord import changes, records, route_approval, signing, verify
from meshctl.coord import repo as gitrepo
from meshctl.coord.admin_trust import AdminTrust, Remembered
from meshctl.coord.baseline import Baseline, verify_baseline
from meshctl.coord.changes import MAGICDNS_IP as MAGICDNS_IP  # re-exported: tests
from meshctl.coord.changes import next_ipv4 as next_ipv4  # re-exported: tests
from meshctl.coord.fs_snapshot import FsSnapshot
from meshctl.coord.netmap import NetMap
from meshctl.coord.records import RootDoc, StateDoc
from meshctl.coord.route_approval import RoutesChoice
from meshctl.coord.signed_change import Change, Plan, admin_signers, pinnable_hashes, plan
from meshctl.coord.state_diff import StateView
from meshctl.coord.trust import STATE_LIFETIME_S as STATE_LIFETIME_S  # re-exported: tests, bench
from meshctl.errors import ParseError, UsageError, VerificationError
from meshctl.keys import SigningKey, VerifyKey, load_signing_key, write_private_key

ROOT_LIFETIME_S: Final = 5 * 365 * 86400
DEFAULT_CIDR: Final = "100.64.0.0/10"
DEFAULT_STUN: Final = ("stun.l.google.com:19302", "stun1.l.google.com:19302",
                       "stun.cloudflare.com:3478")
REQUESTS_DIR: Final = "requests"

# (policy text, the map it applies to) -> one line per problem: the policy's parse error or each
# failed policy test. The CLI passes meshctl.policy.check.check_policy (coord does not import policy).
PolicyCheck = Callable[[str, NetMap], list[str]]


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


def _sign_file(path: Path, file_type: str, network_id: str, keys: Sequence[SigningKey]) -> None:
    data = path.read_bytes()
    sigs = [signing.sign(k, file_type, network_id, data) for k in keys]
    path.with_name(path.name + ".sig").write_bytes(signing.marshal_signatures(sigs))


def _admin_signers(co: Checkout, keys: Sequence[SigningKey]) -> list[SigningKey]:
    return admin_signers(co.root, keys)


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
    state = StateDoc(network_id, 0, 1, now, v4, ula, domain, "0" * 64, {}, (), DEFAULT_STUN,
                     pinned=pinnable_hashes(FsSnapshot(dest), {}))
    co = Checkout(dest, root, (verify.sha256_hex(root_path.read_bytes()),), state)
    write_state(co, state, admin_keys, now)
    return open_checkout(dest)


# --- the signing path ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Session:
    """A checkout verified for signing, with the admin's memory of this mesh."""

    path: Path
    now: int
    baseline: Baseline  # what the command builds on: the verified checkout, with enrolled devices absorbed
    trust: AdminTrust | None
    remembered: Remembered | None
    absorbed: changes.Absorbed | None = None  # the enrolled devices absorbed into `baseline`

    @property
    def first_use(self) -> bool:
        return self.trust is not None and self.remembered is None

    @property
    def signed(self) -> Baseline:
        """The verified checkout as valid signatures cover it (what the diff starts from)."""
        return self.absorbed.before if self.absorbed is not None else self.baseline


def absorb_enrollments(session: Session, skip_keys: Collection[str] = ()) -> Session:
    """The session with every enrollment nodes accept absorbed into its baseline (coord/delegation.py):
    the command's change then makes them ordinary members, shown in its diff. Enrollments made with
    `skip_keys` (an auth key being revoked) are left out and named in the Absorbed."""
    from meshctl.coord import delegation, device_branches

    base = session.baseline
    found, warnings = device_branches.checkout_enrollments(session.path, set(base.state.peers))
    verdict = delegation.decide(base.verified.netmap, found, {}, {}, session.now)
    warnings += [f"endpoints/{name}: enrollment refused: {why}" for name, why in sorted(verdict.refused.items())]
    take = {n: e for n, e in verdict.accepted.items() if e.key.id not in skip_keys}
    skipped = tuple(sorted(set(verdict.accepted) - set(take)))
    baseline, absorbed = changes.absorb(base, take)
    return replace(session, baseline=baseline,
                   absorbed=replace(absorbed, warnings=tuple(warnings), skipped=skipped))


def _network_id(path: Path) -> str:
    root1 = path / "root" / "1.root.json"
    if not root1.exists():
        raise UsageError(f"{path}: not a meshctl coordination repository (no root/1.root.json)",
                         "run this inside the checkout or pass --repo DIR")
    try:
        return records.parse_root(root1.read_bytes(), "root/1.root.json").network_id
    except ParseError as exc:
        raise VerificationError(exc.message) from None


def _check_head(path: Path) -> gitrepo.GitSnapshot | None:
    """The commit the checkout's HEAD names, checked as a node checks a tree: known paths, bounded
    sizes, no gitlink, symbolic link or executable file (the files on disk do not show those)."""
    head = gitrepo.head_snapshot(path)
    if head is None:
        return None
    try:
        verify.check_paths(head)
    except VerificationError as exc:
        raise VerificationError(f"{exc.message} (in commit {head.commit[:12]}, HEAD)", exc.hint) from None
    return head


def open_session(path: Path, now: int, keys: Sequence[SigningKey] = (), trust: AdminTrust | None = None, *,
                 cosign: bool = False, inputs: Collection[str] = ()) -> Session:
    """Verify the checkout at `path` for signing (see coord/baseline.py); `inputs` are the files the
    command supplies itself."""
    network_id = _network_id(path)
    remembered = trust.load(network_id) if trust is not None else None
    memory = remembered.memory if remembered is not None else None
    root1 = (path / "root" / "1.root.json").read_bytes()
    pinned = "sha256:" + memory.root_hashes[0] if memory is not None else verify.fingerprint(root1)
    head = _check_head(path)
    snap = FsSnapshot(path)
    signed_texts = {}
    for text in (remembered.policy if remembered else None, _head_file(head, "policy.hujson")):
        if text is not None:
            signed_texts[verify.sha256_hex(text)] = text
    baseline = verify_baseline(
        snap, pinned, now, memory, own_keys=[k.public() for k in keys], cosign=cosign,
        inputs=inputs, signed_texts=signed_texts,
        remembered_state=remembered.state if remembered else None)
    return Session(path, now, baseline, trust, remembered)


def _head_file(head: gitrepo.GitSnapshot | None, path: str) -> bytes | None:
    if head is None or path not in head.files() or head.size(path) > verify.MAX_POLICY_BYTES:
        return None
    return head.read(path)


def plan_change(session: Session, change: Change, keys: Sequence[SigningKey], now: int,
                policy_check: PolicyCheck | None = None) -> Plan:
    """Sign in memory and verify the result; refuse a policy that does not parse or fails its tests."""
    highest = session.remembered.memory.serial if session.remembered is not None else 0
    if session.absorbed is not None:
        change = changes.with_absorbed(change, session.absorbed)
    try:
        result = plan(session.signed, change, keys, now, highest)
    except VerificationError as exc:
        raise VerificationError(exc.message, "nothing was signed or written: the new state would not "
                                "verify") from None
    if policy_check is not None and "policy.hujson" in change.files:
        problems = policy_check(result.after.verified.policy_text, result.after.verified.netmap)
        if problems:
            raise UsageError("\n".join(problems), "nothing was signed or committed: fix policy.hujson first")
    return result


def apply_plan(session: Session, result: Plan, now: int, commit: bool) -> str | None:
    """Write the files, remember the new state (it was signed here), and commit what was verified."""
    path = session.path
    for rel, data in result.files.items():
        target = path / rel
        if data is None:
            target.unlink(missing_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)  # git does not keep empty directories
            target.write_bytes(data)
    after = result.after
    if session.trust is not None:
        policy = result.files.get("policy.hujson") or _file(path / "policy.hujson")
        session.trust.save(after.root.network_id, after.memory(), after.state_bytes, policy,
                           after.state.policy_sha256, now)
    if not commit:
        return None
    snap = after.snapshot  # the checkout with the change laid over it, as verified
    verified = {p: snap.read(p) for p in sorted(snap.files()) if not p.startswith(REQUESTS_DIR + "/")}
    dropped = [p for p, data in result.files.items() if data is None]
    return gitrepo.commit_files(path, verified, REQUESTS_DIR, dropped, result.commit_message)


def commit_new_checkout(path: Path, message: str) -> str | None:
    """`init`: make the new directory a git checkout (branch main) and commit every file."""
    gitrepo.init_checkout(path)
    snap = FsSnapshot(path)
    return gitrepo.commit_files(path, {p: snap.read(p) for p in sorted(snap.files())}, REQUESTS_DIR, (), message)


def remember(session: Session, now: int) -> None:
    """Record a checkout verified without signing (a new mesh): what it accepted only moves forward."""
    base = session.baseline
    if session.trust is not None and base.complete:
        session.trust.save(base.root.network_id, base.memory(), base.state_bytes,
                           _file(session.path / "policy.hujson"), base.state.policy_sha256, now)


def _file(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def remembered_view(session: Session) -> StateView | None:
    """The last state this admin accepted, as the start of a co-signature's diff."""
    rem = session.remembered
    if rem is None or rem.state is None:
        return None
    try:
        state = records.parse_state(rem.state)
    except ParseError:
        return None
    policy = rem.policy.decode("utf-8", "replace") if rem.policy is not None else None
    return StateView(state, {}, policy)


def run_change(path: Path, keys: Sequence[SigningKey], now: int, build: Callable[[Session], Change], *,
               trust: AdminTrust | None = None, cosign: bool = False,
               inputs: Collection[str] = (),
               policy_check: PolicyCheck | None = None, write: bool = True, commit: bool = False,
               skip_keys: Collection[str] = ()) -> tuple[Plan, str | None]:
    """The whole signing path for one command: verify, absorb enrollments, build, plan; then (unless
    `write` is False, a dry run) write, remember and (with `commit`) commit."""
    session = open_session(path, now, keys, trust, cosign=cosign, inputs=inputs)
    if not cosign:
        session = absorb_enrollments(session, skip_keys)
    result = plan_change(session, build(session), keys, now, policy_check)
    if not write:
        return result, None
    return result, apply_plan(session, result, now, commit)


def paths_of(result: Plan) -> tuple[StateDoc, list[str], list[str]]:
    written = sorted(p for p, d in result.files.items() if d is not None)
    removed = sorted(p for p, d in result.files.items() if d is None)
    return result.state, written, removed


# --- approve / revoke / renew / sign (the library API; the CLI adds trust, dry runs and commits) ----


def approve(co: Checkout, name: str, keys: Sequence[SigningKey], now: int, ip: str | None = None,
            tags: Sequence[str] = (), owner: str = "", expect_key: str | None = None,
            allow_revoked_key: bool = False,
            routes: RoutesChoice | None = None) -> tuple[StateDoc, list[str], list[str]]:
    """A join request, a member's update request, or a member's routes (changes.approve)."""
    result, _ = run_change(co.path, keys, now, lambda s: changes.approve(
        s.baseline, name, s.now, ip, tags, owner, expect_key, allow_revoked_key, routes))
    return paths_of(result)


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
    result, _ = run_change(co.path, keys, now, lambda s: changes.revoke(s.baseline, name, s.now))
    return paths_of(result)


def renew(co: Checkout, keys: Sequence[SigningKey], now: int) -> StateDoc:
    result, _ = run_change(co.path, keys, now, lambda s: changes.renew(s.baseline))
    return result.state


def sign(co: Checkout, keys: Sequence[SigningKey], now: int, update_pins: bool = False,
         policy_check: PolicyCheck | None = None) -> StateDoc:
    """Sign the checkout's policy.hujson (refused if `policy_check` finds a problem)."""
    result, _ = run_change(co.path, keys, now, lambda s: changes.sign_policy(s.baseline, update_pins),
                           inputs=changes.sign_inputs(update_pins), policy_check=policy_check)
    return result.state


def cosign(co: Checkout, keys: Sequence[SigningKey], now: int | None = None) -> tuple[int, int]:
    """Add signatures to the current state.json without changing it (thresholds above 1)."""
    import time

    moment = int(time.time()) if now is None else now
    result, _ = run_change(co.path, keys, moment, lambda s: changes.cosign(s.baseline, remembered_view(s)),
                           cosign=True)
    return result.signatures, result.threshold


def write_state(co: Checkout, state: StateDoc, keys: Sequence[SigningKey], now: int,
                bump: bool = True) -> StateDoc:
    """Sign `state` as given (serial, expiry, root version and the policy on disk refreshed).

    No verification: for tests and benches that build states directly. Commands go through
    `run_change`, which signs only what valid signatures already cover plus the command's change.
    """
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


def trusted_root(path: Path, trust: AdminTrust | None, now: int) -> str:
    """The root fingerprint devices should pin: the one this admin's memory holds (the checkout's
    roots must match it), or, on first use, the checkout's own after its roots verify."""
    network_id = _network_id(path)
    remembered = trust.load(network_id) if trust is not None else None
    root1 = (path / "root" / "1.root.json").read_bytes()
    pinned = "sha256:" + remembered.memory.root_hashes[0] if remembered else verify.fingerprint(root1)
    verify.verify_roots(FsSnapshot(path), pinned, remembered.memory.root_hashes if remembered else (), now)
    return pinned


def invite_text(co: Checkout, url: str | None) -> str:
    return (f"meshctl join {url or '<REPO_URL>'} --root {co.fingerprint}")
