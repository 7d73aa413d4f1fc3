"""Endpoint records through the git host (shell): read the devices' branches that the coordination
fetch brought, and publish this device's own.

Reading: every `endpoints/<name>` branch of a member is judged by coord/endpoint_verify.py; the
verdicts are kept in endpoints.json per branch commit (a branch that did not move is not read
again), together with the rollback memory. A refusal is logged once per commit. A device whose
newest branch is refused (rolled back, forged) keeps the record accepted before, if any: a host
that withholds the new one cannot bring an old one back.

Publishing: coord/endpoint_publish.py decides when; this pushes one parentless commit to
`endpoints/<name>` and remembers how the host took it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pygit2

from meshctl.coord import delegation, device_branches, endpoint_publish, endpoint_verify, enrollment, records
from meshctl.coord import repo as gitrepo
from meshctl.coord.delegation import Candidate
from meshctl.coord.endpoint_publish import Published, PublishRequest
from meshctl.coord.endpoint_record import RECORD_FILE, SIG_FILE, EndpointRecord, branch_of, parse_endpoint
from meshctl.coord.endpoint_verify import Accepted, EndpointView, Refused
from meshctl.coord.netmap import NetMap
from meshctl.coord.node_state import EndpointMemory, EnrollmentMemory, NodeState
from meshctl.coord.records import NAME_RE
from meshctl.errors import GitError, ParseError
from meshctl.identity import DeviceKeys
from meshctl.keys import VerifyKey

log = logging.getLogger(__name__)

MAX_BRANCH_FILES = len(endpoint_verify.ALLOWED_FILES)
REJUDGE_S = 3600  # enrollments are judged again at least this often (time alone can change the verdict)


def read_endpoints(repo: pygit2.Repository, node: NodeState, network_id: str, state_sha256: str,
                   load_netmap: Callable[[], NetMap | None], self_name: str, now: int,
                   own: Candidate | None = None) -> EndpointView:
    """Judge the branches the last fetch brought. `load_netmap` (the signed state's map) is asked
    only when some branch moved, the state changed, or enrollments need judging; `own`: this
    device's own enrollment, judged by the same rules as everyone's."""
    tips = gitrepo.endpoint_tips(repo)
    base: list[NetMap | None] = []

    def netmap() -> NetMap | None:
        if not base:
            base.append(load_netmap())
        return base[0]

    emem = node.load_enrollment_memory(network_id)
    mem = node.load_endpoint_memory(network_id)
    enrolled = _judge_enrollments(repo, node, emem, mem, tips, state_sha256, netmap, self_name, now, own)
    judged_for = state_sha256 + (":" + enrolled_digest(emem.accepted) if emem.accepted else "")
    before = (dict(mem.seen), dict(mem.accepted), dict(mem.refused), mem.state_sha256)
    if mem.state_sha256 != judged_for:  # membership may have changed: judge everything again
        mem.accepted, mem.refused, mem.state_sha256 = {}, {}, judged_for
    identities: dict[str, VerifyKey] | None = None
    records: dict[str, EndpointRecord] = {}
    refused: dict[str, str] = {}
    for name, commit in sorted(tips.items()):
        if name == self_name or not NAME_RE.match(name):
            continue
        cached = mem.accepted.get(name)
        known = mem.refused.get(name)
        if cached is not None and cached[0] == commit:
            records[name] = parse_endpoint(cached[1].encode())
            continue
        if known is not None and known[0] == commit:
            refused[name] = known[1]
        else:
            if identities is None:
                nm = netmap()
                identities = {p.name: p.identity_key for p in nm.peers} if nm is not None else {}
                identities.update(enrolled)
            verdict = _judge_branch(repo, name, commit, identities.get(name), network_id, mem.seen.get(name))
            if isinstance(verdict, Accepted):
                identity = identities[name]
                mem.seen[name] = endpoint_verify.remember(mem.seen.get(name), verdict, identity)
                mem.accepted[name] = (commit, _text(repo, commit))
                mem.refused.pop(name, None)
                records[name] = verdict.record
                continue
            mem.refused[name] = (commit, verdict.reason)
            refused[name] = verdict.reason
            if name not in emem.refused:  # an enrollment's refusal says it better
                log.warning("endpoints/%s: ignored: %s", name, verdict.reason)
        if cached is not None:  # the newest record accepted before stays in use
            records[name] = parse_endpoint(cached[1].encode())
    if (dict(mem.seen), dict(mem.accepted), dict(mem.refused), mem.state_sha256) != before:
        node.save_endpoint_memory(mem)
    published = repo.references.get(gitrepo.PUBLISH_REF)
    replaced = published is not None and tips.get(self_name) != str(published.target)
    return EndpointView(records, refused, replaced, dict(emem.accepted), dict(emem.refused), dict(emem.used))


def enrolled_digest(accepted: Mapping[str, Candidate]) -> str:
    return hashlib.sha256(" ".join(f"{n}:{c.sha256}" for n, c in sorted(accepted.items())).encode()).hexdigest()


def _judge_enrollments(repo: pygit2.Repository, node: NodeState, emem: EnrollmentMemory, mem: EndpointMemory,
                       tips: Mapping[str, str], state_sha256: str, netmap: Callable[[], NetMap | None],
                       self_name: str, now: int, own: Candidate | None) -> dict[str, VerifyKey]:
    """Decide which enrolled devices this node accepts (coord/delegation.py) and remember it in
    enrollments.json; the identity key of each accepted one. The decision is made again only when
    its inputs changed (the state, a branch, the memory) or an auth key it relied on expired."""
    fresh = {n: c for n, c in tips.items() if n != self_name and NAME_RE.match(n)}
    if _decision_inputs(state_sha256, fresh, own, emem) == emem.decided and now < emem.valid_until:
        return _identities(emem.accepted)
    nm = netmap() if (fresh or own or emem.accepted) else None
    if nm is None:
        return {}
    members = {p.name for p in nm.peers}
    found, unusable = device_branches.candidates_in(repo, dict(fresh), members)
    if own is not None and self_name not in members:
        found[self_name] = own
    rotated: dict[str, list[tuple[str, bytes]]] = {}
    for name, (_commit, text) in mem.accepted.items():
        try:
            rec = parse_endpoint(text.encode())
        except ParseError:
            continue
        rotated[name] = [("WireGuard key", rec.wg_public_key.raw), ("disco key", rec.disco_key.raw)]
    verdict = delegation.decide(nm, found, emem.accepted, emem.used, now, rotated)
    refused = {**{n: why for n, why in unusable.items() if n not in members}, **verdict.refused}
    for name, why in sorted(refused.items()):
        if emem.refused.get(name) != why:
            log.warning("endpoints/%s: enrollment refused: %s", name, why)
    for name in sorted(set(verdict.accepted) - set(emem.accepted)):
        e = verdict.accepted[name]
        log.info("enrolled %s (%s, tags %s) with auth key %s", name, " ".join(map(str, e.enrollment.addresses)),
                 ",".join(e.tags) or "none", e.key.id)
    expiries = [e.key.expires for e in verdict.accepted.values()]
    emem.accepted = {n: e.candidate for n, e in verdict.accepted.items()}
    emem.used, emem.refused = dict(verdict.used), refused
    emem.decided = _decision_inputs(state_sha256, fresh, own, emem)
    emem.valid_until = min([*expiries, now + REJUDGE_S])
    node.save_enrollment_memory(emem)
    return _identities(emem.accepted)


def _decision_inputs(state_sha256: str, tips: Mapping[str, str], own: Candidate | None,
                     emem: EnrollmentMemory) -> str:
    """Names what a decision depends on: with the same inputs it would come out the same."""
    return hashlib.sha256(repr((state_sha256, sorted(tips.items()), own.sha256 if own else None,
                                enrolled_digest(emem.accepted), sorted(emem.used.items()))).encode()).hexdigest()


def _identities(accepted: Mapping[str, Candidate]) -> dict[str, VerifyKey]:
    out = {}
    for name, c in accepted.items():
        try:
            out[name] = records.parse_peer(c.peer, "peer.json").identity_key
        except ParseError:
            continue
    return out


def _judge_branch(repo: pygit2.Repository, name: str, commit: str, identity: VerifyKey | None,
                  network_id: str, seen: endpoint_verify.Seen | None) -> endpoint_verify.Judgement:
    if identity is None:  # nothing is read from a branch nobody may write
        return Refused(name, "not a member of the mesh")
    listing = gitrepo.branch_files(repo, commit, MAX_BRANCH_FILES)
    if listing is None:
        return Refused(name, f"the branch holds more than {MAX_BRANCH_FILES} files, or objects are missing")
    entries, ids = listing
    problem = endpoint_verify.check_tree(entries)
    if problem is not None:
        return Refused(name, problem)
    try:
        data, sig = gitrepo.read_blob(repo, ids[RECORD_FILE]), gitrepo.read_blob(repo, ids[SIG_FILE])
    except KeyError:
        return Refused(name, "objects are missing")
    return endpoint_verify.judge(name, data, sig, identity, network_id, seen)


def _text(repo: pygit2.Repository, commit: str) -> str:
    listing = gitrepo.branch_files(repo, commit, MAX_BRANCH_FILES)
    assert listing is not None  # judged a moment ago
    return gitrepo.read_blob(repo, listing[1][RECORD_FILE]).decode()


# --- publishing --------------------------------------------------------------------------------


def enrollment_files(c: Candidate) -> dict[str, bytes]:
    """The files an enrolled device keeps on its branch until an admin absorbs it."""
    return dict(zip(enrollment.BRANCH_FILES, (c.peer, c.peer_sig, c.enrollment, c.enrollment_sig), strict=True))


def publish_if_due(repo_dir: Path, url: str, node: NodeState, load_keys: Callable[[], DeviceKeys],
                   network_id: str, name: str, request: PublishRequest, now: int,
                   member: Callable[[], bool] = lambda: True, ssh_key: str | None = None,
                   extra_files: Mapping[str, bytes] | None = None) -> Published:
    """Push a new record when endpoint_publish says so; returns what is now known of the publish.
    `member` is asked only then: nobody would accept a record of a device not (yet) in the state.
    `extra_files` go on the branch beside the record (an enrolled device's enrollment)."""
    pub = node.load_published()
    reason = endpoint_publish.publish_reason(pub, request.candidates, request.agent, now, request.someone_looking,
                                             request.started, request.replaced)
    if reason is None or not member():
        return pub
    keys = load_keys()
    record, files = endpoint_publish.build_record(
        keys.identity, network_id, name, request.candidates, keys.disco.public(), keys.wireguard.public(),
        request.agent, now, time.time_ns() // 1_000_000, pub.counter)
    try:
        with gitrepo.opened(repo_dir, url) as repo:
            gitrepo.publish_branch(repo, branch_of(name), {**files, **(extra_files or {})},
                                   f"endpoints of {name}: {reason}",
                                   gitrepo.Credentials(ssh_key))
    except GitError as exc:
        if gitrepo.refused_by_host(exc):
            if pub.refused is None:
                log.warning("endpoint record not published: no push rights (%s); peers reach this device "
                            "through a relay or its static endpoint", exc.message)
            pub = endpoint_publish.after_refusal(pub, record, exc.message, now)
        else:
            log.info("endpoint record not published: %s", exc.message)
            pub = endpoint_publish.after_failure(pub, record, exc.message, now)
    else:
        log.info("endpoint record published (%s): %s", reason, " ".join(record.candidates) or "no candidates")
        pub = endpoint_publish.after_push(pub, record, now)
    node.save_published(pub)
    return pub
