"""The delegation rules (coord/delegation.py): which enrolled devices a node accepts.

Every enrollment here is what the git host could serve on a device branch: made up, bent,
replayed, swapped or withheld. Nothing it serves may add a device outside what an auth key
listed in the signed state allows.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json

import pytest
from delegation_helpers import (
    DAY,
    NOW,
    OTHER_NETWORK,
    authkey,
    device,
    enroll,
    member,
    netmap,
    revoked,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from meshctl.coord import signing
from meshctl.coord.delegation import Candidate, Verdict, decide
from meshctl.coord.enrollment import parse_enrollment
from meshctl.coord.netmap import NetMap

SERVER = authkey(("tag:server", "tag:web"))
LAPTOP = device()


def judge(nm: NetMap, *candidates: Candidate, remembered: tuple[Candidate, ...] = (),
          used: dict[str, str] | None = None, now: int = NOW) -> Verdict:
    return decide(nm, {c.name: c for c in candidates}, {c.name: c for c in remembered}, used or {}, now)


def refusal(nm: NetMap, candidate: Candidate, now: int = NOW) -> str:
    verdict = judge(nm, candidate, now=now)
    assert candidate.name not in verdict.accepted, "accepted, but should be refused"
    return verdict.refused[candidate.name]


def test_an_enrollment_within_its_keys_scope_is_accepted_with_the_keys_tags() -> None:
    web = enroll(SERVER, device(), "web-1", "100.64.1.7")
    verdict = judge(netmap(keys=[SERVER]), web)
    got = verdict.accepted["web-1"]
    assert got.tags == ("tag:server", "tag:web")
    assert str(got.enrollment.addresses[0]) == "100.64.1.7"
    assert got.key.id == SERVER.id
    assert verdict.refused == {}
    assert verdict.used == {SERVER.id: "web-1"}  # single use: remembered who used it


def test_fewer_tags_may_be_asked_for() -> None:
    verdict = judge(netmap(keys=[SERVER]), enroll(SERVER, device(), "web-1", tags=("tag:web",)))
    assert verdict.accepted["web-1"].tags == ("tag:web",)


# --- keys that add nobody ----------------------------------------------------------------


def test_a_made_up_key_adds_nobody() -> None:
    made_up = authkey()  # never listed in the state
    assert "is not in the signed state (made up, or revoked)" in refusal(netmap(keys=[SERVER]),
                                                                        enroll(made_up, device(), "x"))


def test_a_key_with_a_listed_id_but_another_secret_adds_nobody() -> None:
    forger = authkey()
    assert f"not signed by auth key {SERVER.id}" in refusal(
        netmap(keys=[SERVER]), enroll(forger, device(), "x", key_id=SERVER.id))


def test_an_expired_key_adds_nobody() -> None:
    old = authkey(expires=NOW - 1)
    assert f"auth key {old.id} expired at" in refusal(netmap(keys=[old]), enroll(old, device(), "x"))


def test_a_revoked_key_adds_nobody_and_drops_what_it_added() -> None:
    key = authkey(reusable=True)
    web = enroll(key, device(), "web-1")
    assert "web-1" in judge(netmap(keys=[key]), web).accepted
    after = judge(netmap(keys=[]), web, remembered=(web,))  # the admins removed the key
    assert after.accepted == {}
    assert "is not in the signed state (made up, or revoked)" in after.refused["web-1"]
    assert after.used == {}


# --- a key used outside its scope --------------------------------------------------------------


def test_another_tag_is_refused() -> None:
    assert "asks for tag:db, outside auth key" in refusal(
        netmap(keys=[SERVER]), enroll(SERVER, device(), "db-1", tags=("tag:server", "tag:db")))


def test_an_address_outside_the_pool_is_refused() -> None:
    assert f"address 100.64.2.7 is outside auth key {SERVER.id}'s pool 100.64.1.0/24" in refusal(
        netmap(keys=[SERVER]), enroll(SERVER, device(), "web-1", "100.64.2.7"))


def test_an_ipv6_address_not_derived_from_the_ipv4_is_refused() -> None:
    assert "is not the IPv6 address of 100.64.1.7" in refusal(
        netmap(keys=[SERVER]), enroll(SERVER, device(), "web-1", "100.64.1.7", v6="fd7a:115c:a1e0::99"))


@pytest.mark.parametrize(("pool", "v4", "why"), [
    ("100.64.0.0/24", "100.64.0.0", "network address"),
    ("100.100.100.0/24", "100.100.100.100", "MagicDNS's address"),
    ("100.127.255.0/24", "100.127.255.255", "broadcast address"),
])
def test_addresses_no_device_may_have_are_refused(pool: str, v4: str, why: str) -> None:
    key = authkey(pool=pool)
    assert why in refusal(netmap(keys=[key]), enroll(key, device(), "x", v4))


def test_a_name_key_or_address_of_a_member_is_refused() -> None:
    desk = device()
    nm = netmap([member("desk", desk, "100.64.1.5")], keys=[SERVER])
    assert "the name 'desk' is member" in refusal(nm, enroll(SERVER, device(), "desk", "100.64.1.6"))
    assert "address 100.64.1.5 is member desk's" in refusal(nm, enroll(SERVER, device(), "web", "100.64.1.5"))
    stolen = dataclasses.replace(device(), wireguard=desk.wireguard)
    assert "its WireGuard key is member desk's" in refusal(nm, enroll(SERVER, stolen, "web", "100.64.1.6"))


def test_a_revoked_devices_keys_and_resting_address_are_refused() -> None:
    gone = device()
    nm = netmap(keys=[SERVER], revoked=[revoked("old", gone, "100.64.1.9")])
    assert "its identity key is revoked device old's" in refusal(nm, enroll(SERVER, gone, "back", "100.64.1.10"))
    assert "address 100.64.1.9 rests until" in refusal(nm, enroll(SERVER, device(), "new", "100.64.1.9"))
    later = NOW + 31 * DAY  # the quarantine is over, the key still valid
    key = authkey(expires=later + DAY)
    nm = netmap(keys=[key], revoked=[revoked("old", gone, "100.64.1.9")])
    assert "new" in judge(nm, enroll(key, device(), "new", "100.64.1.9"), now=later).accepted


def test_an_enrollment_created_in_the_future_is_refused() -> None:
    assert "in the future" in refusal(netmap(keys=[SERVER]), enroll(SERVER, device(), "x", created=NOW + 3600))


# --- the git host forging or replaying -------------------------------------------------------


def test_forged_bytes_are_refused() -> None:
    web = enroll(SERVER, device(), "web-1", "100.64.1.7")
    bent = web.enrollment.replace(b"100.64.1.7", b"100.64.1.8").replace(b"6440:107", b"6440:108")
    assert "not signed by auth key" in refusal(netmap(keys=[SERVER]), dataclasses.replace(web, enrollment=bent))


def test_an_enrollment_signed_by_only_one_of_its_two_keys_is_refused() -> None:
    keys = device()
    only_key = enroll(SERVER, keys, "web-1", signers=[SERVER.secret])
    only_device = enroll(SERVER, keys, "web-1", signers=[keys.identity])
    assert "not signed by its identity key" in refusal(netmap(keys=[SERVER]), only_key)
    assert f"not signed by auth key {SERVER.id}" in refusal(netmap(keys=[SERVER]), only_device)


def test_a_swapped_peer_record_is_refused() -> None:
    web = enroll(SERVER, device(), "web-1")
    other = enroll(SERVER, device(), "web-1")  # another device's record (self-signed, valid on its own)
    swapped = dataclasses.replace(web, peer=other.peer, peer_sig=other.peer_sig)
    assert "is for another peer record" in refusal(netmap(keys=[SERVER]), swapped)


def test_a_peer_record_not_signed_by_its_identity_key_is_refused() -> None:
    web = enroll(SERVER, device(), "web-1")
    assert "peer.json is not signed by its identity key" in refusal(
        netmap(keys=[SERVER]), dataclasses.replace(web, peer_sig=b'{"signatures": []}'))


def test_an_enrollment_replayed_on_another_branch_is_refused() -> None:
    web = enroll(SERVER, device(), "web-1")
    assert "but it is on endpoints/web-2" in refusal(netmap(keys=[SERVER]), dataclasses.replace(web, name="web-2"))


def test_an_enrollment_from_another_mesh_is_refused() -> None:
    assert "made for another mesh" in refusal(netmap(keys=[SERVER]),
                                              enroll(SERVER, device(), "web-1", network=OTHER_NETWORK))


def test_a_signature_of_another_file_type_cannot_be_replayed() -> None:
    keys = device()
    web = enroll(SERVER, keys, "web-1")
    as_peer = signing.marshal_signatures([signing.sign(k, "peer", netmap().network.network_id, web.enrollment)
                                          for k in (SERVER.secret, keys.identity)])
    assert "not signed by auth key" in refusal(netmap(keys=[SERVER]), dataclasses.replace(web, enrollment_sig=as_peer))


def test_garbage_on_a_branch_is_one_line() -> None:
    web = enroll(SERVER, device(), "web-1")
    assert "enrollment.json" in refusal(netmap(keys=[SERVER]), dataclasses.replace(web, enrollment=b"\xff{"))


def test_an_enrollment_that_tries_to_say_more_is_refused() -> None:
    keys = device()
    web = enroll(SERVER, keys, "web-1")
    doc = json.loads(web.enrollment)
    doc["owner"] = "admin@example.com"
    data = json.dumps(doc).encode()
    sig = signing.marshal_signatures([signing.sign(k, "enrollment", netmap().network.network_id, data)
                                      for k in (SERVER.secret, keys.identity)])
    assert "unknown field owner" in refusal(netmap(keys=[SERVER]),
                                            dataclasses.replace(web, enrollment=data, enrollment_sig=sig))


# --- competing enrollments: one fixed winner -------------------------------------------------


def test_a_single_use_key_adds_one_device_the_earliest() -> None:
    early = enroll(SERVER, device(), "b-second-name", "100.64.1.7", created=NOW - 100)
    late = enroll(SERVER, device(), "a-first-name", "100.64.1.8", created=NOW - 50)
    verdict = judge(netmap(keys=[SERVER]), late, early)
    assert list(verdict.accepted) == ["b-second-name"]
    assert f"single-use auth key {SERVER.id} was used by b-second-name" in verdict.refused["a-first-name"]


def test_a_tie_goes_to_the_lowest_identity_key_whatever_the_order() -> None:
    one, two = device(), device()
    low, high = sorted((one, two), key=lambda k: k.identity.public().raw)
    a = enroll(SERVER, high, "a", "100.64.1.7")
    b = enroll(SERVER, low, "b", "100.64.1.8")
    assert list(judge(netmap(keys=[SERVER]), a, b).accepted) == ["b"]
    assert list(judge(netmap(keys=[SERVER]), b, a).accepted) == ["b"]


def test_a_reusable_key_adds_many_but_never_one_address_twice() -> None:
    key = authkey(reusable=True)
    a = enroll(key, device(), "a", "100.64.1.7", created=NOW - 100)
    b = enroll(key, device(), "b", "100.64.1.8", created=NOW - 90)
    c = enroll(key, device(), "c", "100.64.1.7", created=NOW - 80)
    verdict = judge(netmap(keys=[key]), a, b, c)
    assert sorted(verdict.accepted) == ["a", "b"]
    assert "address 100.64.1.7 is also a's, enrolled first" in verdict.refused["c"]
    assert verdict.used == {}


def test_what_was_accepted_stays_when_an_earlier_competitor_shows_up_later() -> None:
    first = enroll(SERVER, device(), "first", "100.64.1.7", created=NOW - 50)
    seen = judge(netmap(keys=[SERVER]), first)
    backdated = enroll(SERVER, device(), "backdated", "100.64.1.8", created=NOW - 5000)
    verdict = judge(netmap(keys=[SERVER]), first, backdated, remembered=(first,), used=seen.used)
    assert list(verdict.accepted) == ["first"]
    assert "was used by first" in verdict.refused["backdated"]


def test_the_host_cannot_swap_an_accepted_enrollment_for_another_devices() -> None:
    other_key = authkey(reusable=True)
    mine = enroll(SERVER, device(), "web-1", "100.64.1.7")
    theirs = enroll(other_key, device(), "web-1", "100.64.1.8")  # valid on its own, under another listed key
    verdict = judge(netmap(keys=[SERVER, other_key]), theirs, remembered=(mine,))
    assert verdict.accepted["web-1"].candidate == mine
    assert "another device's enrollment" in verdict.refused["web-1"]


def test_an_older_enrollment_of_the_same_device_is_a_replay() -> None:
    keys, key = device(), authkey(reusable=True)
    old = enroll(key, keys, "web-1", "100.64.1.7", created=NOW - 500)
    new = enroll(key, keys, "web-1", "100.64.1.8", created=NOW - 100)
    verdict = judge(netmap(keys=[key]), new, remembered=(old,))
    assert verdict.accepted["web-1"].candidate == new  # the device enrolled again: the newer one stands
    verdict = judge(netmap(keys=[key]), old, remembered=(new,))
    assert verdict.accepted["web-1"].candidate == new
    assert "replay refused" in verdict.refused["web-1"]


def test_a_withheld_branch_drops_nobody_who_was_accepted() -> None:
    web = enroll(SERVER, device(), "web-1")
    verdict = judge(netmap(keys=[SERVER]), remembered=(web,), used={SERVER.id: "web-1"})
    assert list(verdict.accepted) == ["web-1"]


def test_an_absorbed_device_is_judged_by_the_state_alone() -> None:
    keys = device()
    web = enroll(SERVER, keys, "web-1", "100.64.1.7")
    nm = netmap([member("web-1", keys, "100.64.1.7", ("tag:server",))], keys=[SERVER])
    verdict = judge(nm, web, remembered=(web,))
    assert verdict.accepted == {} and verdict.refused == {}


@settings(max_examples=60, deadline=None)
@given(st.permutations(range(5)), st.lists(st.integers(0, 3), min_size=5, max_size=5))
def test_the_winner_does_not_depend_on_the_order_branches_are_read(order: list[int], created: list[int]) -> None:
    """Five devices, one address each from a small range, created at few distinct times: whatever
    order the host lists them in, every node picks the same set."""
    key = authkey(reusable=True)
    devices = [device() for _ in range(5)]
    cands = [enroll(key, devices[i], f"d{i}", f"100.64.1.{10 + i % 2}", created=NOW - 100 + created[i])
             for i in range(5)]
    nm = netmap(keys=[key])
    reference = judge(nm, *cands)
    shuffled = decide(nm, {cands[i].name: cands[i] for i in order}, {}, {}, NOW)
    assert sorted(shuffled.accepted) == sorted(reference.accepted)
    assert len(reference.accepted) == 2  # one per address


def test_an_enrollment_parses_back_to_what_was_signed() -> None:
    web = enroll(SERVER, device(), "web-1", tags=("tag:web",))
    doc = parse_enrollment(web.enrollment)
    assert doc.tags == ("tag:web",)
    assert doc.authkey == SERVER.id
    assert doc.addresses[1] == ipaddress.IPv6Address("fd7a:115c:a1e0::6440:105")


def test_the_key_text_is_never_repeated_in_an_error() -> None:
    from meshctl.coord.enrollment import key_text, parse_key_text
    from meshctl.errors import UsageError

    secret = key_text(authkey().secret)
    for bent in (secret[:-1] + ("0" if secret[-1] != "0" else "1"), secret + "x", secret.upper(), "x" + secret):
        with pytest.raises(UsageError) as got:
            parse_key_text(bent)
        assert secret[-64:][:40] not in got.value.message and secret[-64:][:40] not in str(got.value.hint)
    assert parse_key_text(f"  {secret}\n").public() == parse_key_text(secret).public()
