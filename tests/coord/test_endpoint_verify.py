"""The rules a node applies to endpoint records (coord/endpoint_verify.py), one case each.

Every record here is what a git host (which may lie) could serve on `endpoints/<name>`.
"""

from __future__ import annotations

import json

import pytest

from meshctl.coord import signing
from meshctl.coord.endpoint_publish import build_record
from meshctl.coord.endpoint_record import EndpointRecord, marshal_endpoint
from meshctl.coord.endpoint_verify import (
    BLOB_MODE,
    FRESH_FOR_S,
    MAX_FUTURE_S,
    Accepted,
    Refused,
    Seen,
    TreeEntry,
    check_tree,
    freshness,
    judge,
    remember,
    usable_candidates,
)
from meshctl.identity import DeviceKeys
from meshctl.keys import DiscoPrivate, NodePrivate, SigningKey

NETWORK = "ab" * 16
OTHER_NETWORK = "cd" * 16
NOW = 1_733_000_000
CANDIDATES = ("203.0.113.7:51820", "10.0.0.2:51820")


def device() -> DeviceKeys:
    return DeviceKeys(SigningKey.generate(), NodePrivate.generate(), DiscoPrivate.generate())


LAPTOP = device()


def published(keys: DeviceKeys = LAPTOP, name: str = "laptop", network: str = NETWORK, now: int = NOW,
              counter: int | None = None, candidates: tuple[str, ...] = CANDIDATES,
              signer: SigningKey | None = None) -> tuple[bytes, bytes]:
    rec, files = build_record(keys.identity, network, name, candidates, keys.disco.public(),
                              keys.wireguard.public(), True, now, now * 1000 if counter is None else counter, None)
    data = files["endpoint.json"]
    if signer is not None:
        files["endpoint.json.sig"] = signing.marshal_signatures([signing.sign(signer, "endpoint", network, data)])
    return data, files["endpoint.json.sig"]


def accepted(data: bytes, sig: bytes, seen: Seen | None = None) -> Accepted:
    verdict = judge("laptop", data, sig, LAPTOP.identity.public(), NETWORK, seen)
    assert isinstance(verdict, Accepted), verdict
    return verdict


def refused(data: bytes, sig: bytes, seen: Seen | None = None, name: str = "laptop",
            identity: object = LAPTOP.identity.public()) -> Refused:
    verdict = judge(name, data, sig, identity, NETWORK, seen)  # type: ignore[arg-type]
    assert isinstance(verdict, Refused), verdict
    return verdict


def test_a_members_record_is_accepted_and_its_candidates_used() -> None:
    got = accepted(*published())
    assert got.record.candidates == CANDIDATES
    assert usable_candidates(got.record, LAPTOP.wireguard.public(), LAPTOP.disco.public(), NOW) == CANDIDATES


def test_forged_bytes_are_refused() -> None:
    data, sig = published()
    forged = data.replace(b"203.0.113.7", b"198.51.100.9")
    assert "not signed by laptop's identity key" in refused(forged, sig).reason


def test_signed_by_another_key_is_refused() -> None:
    data, sig = published(signer=SigningKey.generate())
    assert "not signed by laptop's identity key" in refused(data, sig).reason


def test_another_members_signature_does_not_count() -> None:
    desk = device()
    data, sig = published(keys=desk, name="laptop")  # desk signs a record naming laptop
    assert "not signed" in refused(data, sig).reason


def test_a_record_from_another_mesh_is_refused() -> None:
    data, sig = published(network=OTHER_NETWORK)
    assert "not signed" in refused(data, sig).reason  # the network_id is part of what is signed


def test_a_signature_of_another_file_type_cannot_be_replayed() -> None:
    data, _ = published()
    as_peer = signing.marshal_signatures([signing.sign(LAPTOP.identity, "peer", NETWORK, data)])
    assert "not signed" in refused(data, as_peer).reason


def test_a_record_on_another_devices_branch_is_refused() -> None:
    data, sig = published()
    assert "names 'laptop', but it is on endpoints/desk" in refused(data, sig, name="desk").reason


def test_a_non_member_is_refused_before_anything_is_read() -> None:
    assert refused(b"\xff garbage", b"", identity=None).reason == "not a member of the mesh"


def test_a_record_that_tries_to_grant_anything_is_refused() -> None:
    data, _ = published()
    doc = json.loads(data)
    doc["addresses"] = ["100.64.0.1"]
    doc["tags"] = ["tag:admin"]
    granted = json.dumps(doc).encode()
    sig = signing.marshal_signatures([signing.sign(LAPTOP.identity, "endpoint", NETWORK, granted)])
    assert "unknown field addresses" in refused(granted, sig).reason


def test_rolled_back_record_is_refused() -> None:
    new = accepted(*published(counter=2000))
    seen = remember(None, new, LAPTOP.identity.public())
    verdict = refused(*published(counter=1000), seen=seen)
    assert verdict.rollback and "rolled back: counter 1000 is below 2000" in verdict.reason


def test_equivocation_is_refused_and_the_same_record_accepted_again() -> None:
    first = published(counter=2000)
    seen = remember(None, accepted(*first), LAPTOP.identity.public())
    accepted(*first, seen=seen)  # the same record again: fine
    other = published(counter=2000, candidates=("198.51.100.1:1",))
    verdict = refused(*other, seen=seen)
    assert verdict.rollback and "equivocation" in verdict.reason


def test_memory_only_moves_forward_and_starts_afresh_for_a_new_device_under_the_name() -> None:
    high = remember(None, accepted(*published(counter=2000)), LAPTOP.identity.public())
    assert remember(high, accepted(*published(counter=1000)), LAPTOP.identity.public()) == high
    newcomer = SigningKey.generate().public()
    low = accepted(*published(counter=1000))
    assert remember(high, low, newcomer).counter == 1000
    # a re-joined device (new identity key) is not held to the old device's counter
    rejoined = device()
    data, sig = published(keys=rejoined, counter=5)
    assert isinstance(judge("laptop", data, sig, rejoined.identity.public(), NETWORK, high), Accepted)


@pytest.mark.parametrize(("published_at", "usable"), [
    (NOW, True),
    (NOW - FRESH_FOR_S, True),
    (NOW - FRESH_FOR_S - 1, False),  # stale
    (NOW + MAX_FUTURE_S, True),
    (NOW + MAX_FUTURE_S + 1, False),  # from the future
])
def test_candidates_are_used_only_while_fresh(published_at: int, usable: bool) -> None:
    rec = accepted(*published(now=published_at)).record
    got = usable_candidates(rec, LAPTOP.wireguard.public(), LAPTOP.disco.public(), NOW)
    assert got == (CANDIDATES if usable else ())
    assert (freshness(rec, NOW) is None) == usable


def test_stale_and_future_records_still_count_for_rollback() -> None:
    stale = accepted(*published(now=NOW - 3600, counter=9000))
    seen = remember(None, stale, LAPTOP.identity.public())
    assert refused(*published(counter=8000), seen=seen).rollback


def test_candidates_of_a_record_for_other_keys_are_not_used() -> None:
    rec = accepted(*published()).record
    assert usable_candidates(rec, NodePrivate.generate().public(), LAPTOP.disco.public(), NOW) == ()
    assert usable_candidates(rec, LAPTOP.wireguard.public(), DiscoPrivate.generate().public(), NOW) == ()


def test_garbage_signature_file_is_refused_not_raised() -> None:
    data, _ = published()
    assert "endpoint.json.sig" in refused(data, b"{").reason


def entry(path: str, kind: str = "blob", mode: int = BLOB_MODE, size: int = 100) -> TreeEntry:
    return TreeEntry(path, kind, mode, size)


@pytest.mark.parametrize(("entries", "problem"), [
    ([entry("endpoint.json"), entry("endpoint.json.sig")], None),
    ([entry("endpoint.json"), entry("endpoint.json.sig"), entry("peer.json"), entry("peer.json.sig")], None),
    ([entry("endpoint.json")], "endpoint.json.sig is missing"),
    ([entry("endpoint.json"), entry("endpoint.json.sig"), entry("state.json")], "unexpected file 'state.json'"),
    ([entry("endpoint.json", kind="tree", mode=0o40000), entry("endpoint.json.sig")], "not a plain file"),
    ([entry("endpoint.json", mode=0o120000), entry("endpoint.json.sig")], "not a plain file"),
    ([entry("endpoint.json", mode=0o100755), entry("endpoint.json.sig")], "not a plain file"),
    ([entry("endpoint.json", kind="commit", mode=0o160000), entry("endpoint.json.sig")], "not a plain file"),
    ([entry("endpoint.json", size=10**9), entry("endpoint.json.sig")], "more than"),
])
def test_branch_tree_holds_only_known_plain_files(entries: list[TreeEntry], problem: str | None) -> None:
    got = check_tree(entries)
    if problem is None:
        assert got is None
    else:
        assert got is not None and problem in got


def test_record_type_cannot_be_mistaken_for_a_peer_record() -> None:
    rec = EndpointRecord(NETWORK, "laptop", 1, NOW, (), LAPTOP.disco.public(), LAPTOP.wireguard.public())
    from meshctl.coord.records import parse_peer
    from meshctl.errors import ParseError

    with pytest.raises(ParseError):
        parse_peer(marshal_endpoint(rec), "peers/laptop.json")
