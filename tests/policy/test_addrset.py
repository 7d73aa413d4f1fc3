"""Address sets as integer intervals, against a brute-force model on a small address space."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from meshctl.policy import addrset
from meshctl.policy.addrset import AddrSet

spans = st.lists(st.tuples(st.sampled_from([4, 6]), st.integers(0, 60), st.integers(0, 6)), max_size=6).map(
    lambda items: addrset.merge((v, lo, lo + n) for v, lo, n in items))


def _points(s: AddrSet) -> set[tuple[int, int]]:
    return {(v, x) for v, lo, hi in s for x in range(lo, hi + 1)}


@given(spans, spans)
def test_set_operations_match_the_model(a: AddrSet, b: AddrSet) -> None:
    assert _points(addrset.subtract(a, b)) == _points(a) - _points(b)
    assert _points(addrset.intersect(a, b)) == _points(a) & _points(b)
    assert _points(addrset.merge((*a, *b))) == _points(a) | _points(b)
    for result in (addrset.subtract(a, b), addrset.intersect(a, b)):
        assert addrset.merge(result) == result  # still sorted and merged
    for v, lo, hi in b:
        assert addrset.contains(a, (v, lo, hi)) == ({(v, x) for x in range(lo, hi + 1)} <= _points(a))


@given(spans)
def test_prefixes_cover_exactly_the_set(a: AddrSet) -> None:
    assert addrset.of(addrset.prefixes(a)) == a


def test_highest_free_skips_what_is_taken() -> None:
    prefix = ipaddress.ip_network("100.64.0.0/29")  # .1 - .6 usable
    taken = addrset.of([ipaddress.ip_address("100.64.0.6"), ipaddress.ip_network("100.64.0.2/31")])
    assert [str(a) for a in addrset.highest_free(prefix, taken, 3)] == ["100.64.0.5", "100.64.0.4", "100.64.0.1"]
    assert [str(a) for a in addrset.highest_free(prefix, taken, 9)] == ["100.64.0.5", "100.64.0.4", "100.64.0.1"]
    assert addrset.highest_free(prefix, addrset.of([prefix]), 1) == []
