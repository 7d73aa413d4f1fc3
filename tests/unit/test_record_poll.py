"""The agent looks for endpoint records faster while a peer has no path (agent/record_poll.py)."""

from __future__ import annotations

from meshctl.agent.record_poll import FACTOR, FIRST_S, RecordPoll

SYNC = 60.0


def polls(rp: RecordPoll, until: float, now: float = 0.0) -> list[float]:
    """The times the agent fetches, driven only by the poll's deadlines."""
    out = []
    while (d := rp.deadline()) is not None and d <= until:
        now = d
        out.append(now)
        rp.fetched(now)
    return out


def test_every_peer_connected_means_no_extra_fetch() -> None:
    rp = RecordPoll(SYNC)
    rp.update(frozenset(), False, 0.0)
    assert rp.deadline() is None
    rp.fetched(5.0)
    assert rp.deadline() is None


def test_a_pathless_peer_is_looked_for_within_seconds_then_backing_off_to_the_sync_interval() -> None:
    rp = RecordPoll(SYNC)
    rp.update(frozenset({"b"}), False, 0.0)
    assert rp.deadline() == FIRST_S
    times = polls(rp, 3600.0)
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    assert gaps[0] == FIRST_S and gaps[1] == FIRST_S * FACTOR
    assert all(g2 >= g1 for g1, g2 in zip(gaps, gaps[1:], strict=False))  # never faster again
    assert max(gaps) == SYNC  # capped: an offline peer costs what an idle agent costs
    assert len([t for t in times if t <= 60]) <= 10  # a handful in the first minute
    assert len(times) <= 60 + 12  # an hour: the sync interval's 60 and the first minute's few


def test_the_fast_pace_starts_over_for_news_only() -> None:
    rp = RecordPoll(SYNC)
    rp.update(frozenset({"b"}), False, 0.0)
    polls(rp, 300.0)
    slow = rp.deadline()
    assert slow is not None and slow - 300.0 > 30
    rp.update(frozenset({"b"}), False, 301.0)  # same peer, nothing new: stays slow
    assert rp.deadline() == slow
    rp.update(frozenset({"b"}), True, 302.0)  # its record brought new candidates
    assert rp.deadline() == 302.0 + FIRST_S
    polls(rp, 600.0)
    rp.update(frozenset({"b", "c"}), False, 601.0)  # another peer lost its path
    assert rp.deadline() == 601.0 + FIRST_S
    rp.update(frozenset(), False, 602.0)  # everyone connected again
    assert rp.deadline() is None
