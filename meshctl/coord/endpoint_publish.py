"""When this device publishes its endpoint record, and what it signs (pure).

Load on the git host is the budget: an idle device pushes only when what it would say
changes (its candidates, or whether an agent answers disco here). A record is fresh for
endpoint_verify.FRESH_FOR_S, so while a peer is looking for this device (it has a fresh
record of its own and no path to us) the record is re-published once it is REFRESH_S old;
a device whose peers are all connected, or all offline, lets its record age: it is
re-published for the first peer that comes looking.

A push the host refuses (no write access, a protected branch) means "no push rights": it is
remembered, `meshctl status` says why (peers then reach this device only through a relay or
its static endpoint), and it is tried again only after NO_RIGHTS_RETRY_S. A host that did not
answer is tried again after FAILED_RETRY_S.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Final

from meshctl.coord import endpoint_record, signing
from meshctl.coord.endpoint_record import EndpointRecord
from meshctl.coord.endpoint_verify import freshness
from meshctl.keys import DiscoPublic, NodePublic, SigningKey

REFRESH_S: Final = 5 * 60  # half the freshness limit: a looking peer never sees it go stale
NO_RIGHTS_RETRY_S: Final = 3600  # write access is granted by a person: check hourly
FAILED_RETRY_S: Final = 30  # the host was down: try again soon (a fetch succeeds first anyway)
RESTART_REFRESH_S: Final = 60  # an agent restarted within a minute of its last publish: peers kept it


@dataclass(frozen=True, slots=True)
class PublishRequest:
    """What this device would say now: its candidates, whether an agent answers disco here,
    and whether some peer is looking for it (a fresh record of its own, no path to us)."""

    candidates: tuple[str, ...]
    agent: bool
    someone_looking: bool
    started: bool = False  # the agent has not published since it started (peers may have lost it)
    replaced: bool = False  # the host no longer holds what this device published last


@dataclass(frozen=True, slots=True)
class Published:
    """What this device last published and how the host took it (kept in the state directory)."""

    counter: int | None = None  # the highest counter ever signed here (a push may have failed)
    at: int | None = None  # when the host last took a record
    candidates: tuple[str, ...] = ()  # ... and what that record said
    agent: bool = True
    refused: str | None = None  # the host's refusal of the last push: no push rights
    failed: str | None = None  # the last push did not reach the host
    tried_at: int | None = None  # the last push attempt, whatever came of it


def publish_reason(pub: Published, candidates: tuple[str, ...], agent: bool, now: int,
                   someone_looking: bool, started: bool = False, replaced: bool = False) -> str | None:
    """Why to push now (for the log), or None to leave the record as it is.

    `started`: an agent that has not published since it started. Its peers may have lost their
    paths to it meanwhile (a reboot outlasts the NATs' mappings) and, their own records stale,
    look for nobody: a fresh record brings them back (RESTART_REFRESH_S old at least).
    `replaced`: the branch no longer holds our last record (deleted, or overwritten by another
    member with push rights, which it cannot sign): put it back, at most every RESTART_REFRESH_S."""
    tried = pub.tried_at if pub.tried_at is not None else -10**12
    if pub.refused is not None and now - tried < NO_RIGHTS_RETRY_S:
        return None
    if pub.failed is not None and now - tried < FAILED_RETRY_S:
        return None
    if pub.at is None:
        return "first record"
    if (candidates, agent) != (pub.candidates, pub.agent):
        return "candidates changed"
    if someone_looking and now - pub.at >= REFRESH_S:
        return "refresh for a peer that is looking"
    if started and now - pub.at >= RESTART_REFRESH_S:
        return "agent started"
    if replaced and now - pub.at >= RESTART_REFRESH_S:
        return "the branch no longer holds our record"
    if pub.refused is not None or pub.failed is not None:
        return "retry"
    return None


def build_record(identity: SigningKey, network_id: str, name: str, candidates: tuple[str, ...],
                 disco_key: DiscoPublic, wg_key: NodePublic, agent: bool, now: int, now_ms: int,
                 last_counter: int | None) -> tuple[EndpointRecord, dict[str, bytes]]:
    """The record and the files of its branch (endpoint.json and its signature)."""
    record = EndpointRecord(network_id, name, endpoint_record.next_counter(now_ms, last_counter), now,
                            candidates, disco_key, wg_key, agent)
    data = endpoint_record.marshal_endpoint(record)
    sig = signing.marshal_signatures([signing.sign(identity, endpoint_record.FILE_TYPE, network_id, data)])
    return record, {endpoint_record.RECORD_FILE: data, endpoint_record.SIG_FILE: sig}


def after_push(pub: Published, record: EndpointRecord, now: int) -> Published:
    return Published(record.counter, now, record.candidates, record.agent, None, None, now)


def after_refusal(pub: Published, record: EndpointRecord, why: str, now: int) -> Published:
    return replace(pub, counter=record.counter, refused=why, failed=None, tried_at=now)


def after_failure(pub: Published, record: EndpointRecord, why: str, now: int) -> Published:
    return replace(pub, counter=record.counter, failed=why, tried_at=now)


def describe(pub: Published, now: int) -> str:
    """One line for `meshctl status`."""
    if pub.refused is not None:
        return (f"not published: no push rights ({pub.refused}); peers reach this device through a "
                "relay or its static endpoint")
    if pub.failed is not None:
        return f"not published: {pub.failed}"
    if pub.at is None:
        return "not published yet"
    return f"published {max(0, now - pub.at)}s ago ({len(pub.candidates)} candidates)"


def newer_fresh_record(records: Iterable[EndpointRecord], since: int | None, now: int) -> bool:
    """Some peer published after `since` and its record is still fresh: it may be looking for us
    (how `meshctl sync`, which knows no paths, tells that a peer came online)."""
    return any(freshness(r, now) is None and (since is None or r.timestamp > since) for r in records)
