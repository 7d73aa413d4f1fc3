"""When a device publishes its endpoint record (coord/endpoint_publish.py): the git host's load."""

from __future__ import annotations

import pytest

from meshctl.coord.endpoint_publish import (
    FAILED_RETRY_S,
    NO_RIGHTS_RETRY_S,
    REFRESH_S,
    RESTART_REFRESH_S,
    Published,
    describe,
    newer_fresh_record,
    publish_reason,
)
from meshctl.coord.endpoint_record import EndpointRecord
from meshctl.coord.endpoint_verify import FRESH_FOR_S
from meshctl.keys import DiscoPrivate, NodePrivate

T = 1_733_000_000
C = ("203.0.113.7:51820", "10.0.0.2:51820")
DONE = Published(counter=T * 1000, at=T, candidates=C, agent=True, tried_at=T)


@pytest.mark.parametrize(("pub", "now", "kw", "reason"), [
    (Published(), T, {}, "first record"),
    (DONE, T + 1, {}, None),  # nothing changed: no push
    (DONE, T + 10 * 3600, {}, None),  # however old, while nobody looks for it
    (DONE, T + 1, {"candidates": ("198.51.100.1:51820",)}, "candidates changed"),
    (DONE, T + 1, {"agent": False}, "candidates changed"),  # cron now, not an agent
    (DONE, T + REFRESH_S - 1, {"looking": True}, None),
    (DONE, T + REFRESH_S, {"looking": True}, "refresh for a peer that is looking"),
    (DONE, T + RESTART_REFRESH_S - 1, {"started": True}, None),  # restarted at once: peers kept it
    (DONE, T + RESTART_REFRESH_S, {"started": True}, "agent started"),
    (DONE, T + RESTART_REFRESH_S, {"replaced": True}, "the branch no longer holds our record"),
    (Published(refused="no", tried_at=T), T + NO_RIGHTS_RETRY_S - 1, {"candidates": ("1.2.3.4:5",)}, None),
    (Published(refused="no", tried_at=T), T + NO_RIGHTS_RETRY_S, {}, "first record"),
    (Published(failed="down", tried_at=T), T + FAILED_RETRY_S - 1, {}, None),
    (Published(failed="down", tried_at=T), T + FAILED_RETRY_S, {}, "first record"),
    (Published(counter=1, at=T, candidates=C, failed="down", tried_at=T + 60), T + 60 + FAILED_RETRY_S, {},
     "retry"),
])
def test_publish_reason(pub: Published, now: int, kw: dict[str, object], reason: str | None) -> None:
    got = publish_reason(pub, kw.get("candidates", C), kw.get("agent", True), now,  # type: ignore[arg-type]
                         bool(kw.get("looking")), bool(kw.get("started")), bool(kw.get("replaced")))
    assert got == reason


def record(at: int) -> EndpointRecord:
    return EndpointRecord("ab" * 16, "desk", at * 1000, at, C, DiscoPrivate.generate().public(),
                          NodePrivate.generate().public())


def test_a_peer_that_published_after_us_and_is_fresh_may_be_looking() -> None:
    assert newer_fresh_record([record(T + 5)], T, T + 10)
    assert not newer_fresh_record([record(T - 5)], T, T + 10)  # before our last record: it has seen ours
    assert not newer_fresh_record([record(T + 5)], T, T + 5 + FRESH_FOR_S + 1)  # gone quiet since
    assert newer_fresh_record([record(T)], None, T)  # we never published


def test_status_says_why_a_record_is_not_published() -> None:
    assert describe(DONE, T + 12) == "published 12s ago (2 candidates)"
    refused = describe(Published(refused="git://h/c.git: push refused: hook declined", tried_at=T), T)
    assert refused.startswith("not published: no push rights (git://h/c.git: push refused: hook declined)")
    assert "relay or its static endpoint" in refused
    assert describe(Published(), T) == "not published yet"
