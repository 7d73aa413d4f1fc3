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

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pygit2

from meshctl.coord import endpoint_publish, endpoint_verify
from meshctl.coord import repo as gitrepo
from meshctl.coord.endpoint_publish import Published, PublishRequest
from meshctl.coord.endpoint_record import RECORD_FILE, SIG_FILE, EndpointRecord, branch_of, parse_endpoint
from meshctl.coord.endpoint_verify import Accepted, EndpointView, Refused
from meshctl.coord.node_state import NodeState
from meshctl.coord.records import NAME_RE
from meshctl.errors import GitError
from meshctl.identity import DeviceKeys
from meshctl.keys import VerifyKey

log = logging.getLogger(__name__)

MAX_BRANCH_FILES = len(endpoint_verify.ALLOWED_FILES)


def read_endpoints(repo: pygit2.Repository, node: NodeState, network_id: str, state_sha256: str,
                   members: Callable[[], Mapping[str, VerifyKey]], self_name: str) -> EndpointView:
    """Judge the branches the last fetch brought (`members`: name -> identity key, asked only
    when some branch moved or the state changed)."""
    tips = gitrepo.endpoint_tips(repo)
    mem = node.load_endpoint_memory(network_id)
    before = (dict(mem.seen), dict(mem.accepted), dict(mem.refused), mem.state_sha256)
    if mem.state_sha256 != state_sha256:  # membership may have changed: judge everything again
        mem.accepted, mem.refused, mem.state_sha256 = {}, {}, state_sha256
    identities: Mapping[str, VerifyKey] | None = None
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
                identities = members()
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
            log.warning("endpoints/%s: ignored: %s", name, verdict.reason)
        if cached is not None:  # the newest record accepted before stays in use
            records[name] = parse_endpoint(cached[1].encode())
    if (dict(mem.seen), dict(mem.accepted), dict(mem.refused), mem.state_sha256) != before:
        node.save_endpoint_memory(mem)
    published = repo.references.get(gitrepo.PUBLISH_REF)
    replaced = published is not None and tips.get(self_name) != str(published.target)
    return EndpointView(records, refused, replaced)


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


def publish_if_due(repo_dir: Path, url: str, node: NodeState, load_keys: Callable[[], DeviceKeys],
                   network_id: str, name: str, request: PublishRequest, now: int,
                   member: Callable[[], bool] = lambda: True, ssh_key: str | None = None) -> Published:
    """Push a new record when endpoint_publish says so; returns what is now known of the publish.
    `member` is asked only then: nobody would accept a record of a device not (yet) in the state."""
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
            gitrepo.publish_branch(repo, branch_of(name), files, f"endpoints of {name}: {reason}",
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
