"""The map in force (coord/effective.py): the signed state's, with enrolled devices, keys rotated
through endpoint records and expired memberships dropped; and how it is kept and compared."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest
from delegation_helpers import DAY, NOW, authkey, device, enroll, member, netmap, revoked

from meshctl.agent.inputs import Inputs
from meshctl.agent.status import EXPIRY_WARNING_S, membership_warnings
from meshctl.agent.sync_pass import DesiredMemo
from meshctl.coord.delegation import decide
from meshctl.coord.effective import apply_view, effective_netmap, next_change
from meshctl.coord.endpoint_publish import build_record
from meshctl.coord.endpoint_record import EndpointRecord, parse_endpoint
from meshctl.coord.endpoint_verify import EndpointView
from meshctl.coord.netmap import NetMap
from meshctl.coord.netmap_json import netmap_from_json, netmap_to_json
from meshctl.coord.rotate import rotation_due
from meshctl.duration import format_duration, parse_duration
from meshctl.identity import DeviceKeys

DESK, LAPTOP = device(), device()


def record(keys: DeviceKeys, name: str, new: DeviceKeys | None = None, counter: int = 1) -> EndpointRecord:
    """`name`'s endpoint record signed with its identity key, carrying `new`'s WireGuard and disco keys."""
    carried = new or keys
    _rec, files = build_record(keys.identity, netmap().network.network_id, name, (), carried.disco.public(),
                               carried.wireguard.public(), True, NOW, counter, None)
    return parse_endpoint(files["endpoint.json"])


def base(expires: int | None = None, self_name: str = "desk") -> NetMap:
    return netmap([member("desk", DESK, "100.64.0.1"), member("laptop", LAPTOP, "100.64.0.2", expires=expires)],
                  self_name=self_name)


def test_a_rotation_in_a_record_replaces_the_members_keys_and_nothing_else() -> None:
    nm = base()
    new = device()
    eff = effective_netmap(nm, {}, {"laptop": record(LAPTOP, "laptop", new)}, NOW)
    laptop = eff.netmap.peer("laptop")
    assert laptop is not None
    assert laptop.wg_public_key == new.wireguard.public() and laptop.disco_key == new.disco.public()
    assert laptop.identity_key == LAPTOP.identity.public()  # the identity never rotates
    assert laptop.addresses == nm.peer("laptop").addresses
    assert eff.rotated == {"laptop"}


def test_a_rotated_key_another_device_uses_or_a_revoked_one_had_is_refused() -> None:
    nm = base()
    stolen = dataclasses.replace(device(), wireguard=DESK.wireguard)
    eff = effective_netmap(nm, {}, {"laptop": record(LAPTOP, "laptop", stolen)}, NOW)
    assert eff.netmap.peer("laptop").wg_public_key == LAPTOP.wireguard.public()
    assert "is desk's (refused; the signed keys stay)" in eff.key_refusals["laptop"]
    gone = device()
    nm = dataclasses.replace(nm, revoked=(revoked("old", gone, "100.64.0.9"),))
    eff = effective_netmap(nm, {}, {"laptop": record(LAPTOP, "laptop", gone)}, NOW)
    assert "was revoked device old's (refused)" in eff.key_refusals["laptop"]


def test_this_nodes_own_keys_are_its_key_files_not_its_record() -> None:
    new = device()
    eff = effective_netmap(base(), {}, {}, NOW, (new.wireguard.public(), new.disco.public()))
    assert eff.netmap.self_peer.wg_public_key == new.wireguard.public()


def test_an_expired_membership_is_dropped_and_said_why() -> None:
    nm = base(expires=NOW + 10)
    assert effective_netmap(nm, {}, {}, NOW + 9).netmap.peer("laptop") is not None
    eff = effective_netmap(nm, {}, {}, NOW + 10)
    assert eff.netmap.peer("laptop") is None
    assert dict(eff.netmap.dropped)["laptop"].startswith("membership expired at ")


def test_enrolled_devices_join_the_map_until_their_key_goes() -> None:
    key = authkey(("tag:server",), expires=NOW + DAY)
    web = enroll(key, device(), "web", "100.64.1.7")
    nm = netmap([member("desk", DESK, "100.64.0.1")], keys=[key], self_name="desk")
    view = EndpointView(enrollments={"web": web}, used={key.id: "web"})
    got = apply_view(nm, view, NOW).netmap.peer("web")
    assert got is not None and got.tags == ("tag:server",) and got.enrolled_with == key.id
    assert apply_view(nm, view, NOW + DAY).netmap.peer("web") is None  # the key expired
    assert apply_view(dataclasses.replace(nm, authkeys=()), view, NOW).netmap.peer("web") is None  # revoked


def test_a_rotated_member_keeps_its_signed_routes_and_an_enrolled_device_has_none() -> None:
    """Routes come from the signed state alone: a key rotation keeps them, an enrollment (whose
    record may advertise some) gets none until an admin approves them."""
    lan = (ipaddress.ip_network("192.168.50.0/24"),)
    router = dataclasses.replace(member("laptop", LAPTOP, "100.64.0.2"), approved_routes=lan, exit_node=True)
    key = authkey()
    web = enroll(key, device(), "web", "100.64.1.7", advertise_routes=(ipaddress.ip_network("10.9.0.0/16"),))
    nm = netmap([member("desk", DESK, "100.64.0.1"), router], keys=[key], self_name="desk")
    new = device()
    view = EndpointView(records={"laptop": record(LAPTOP, "laptop", new)}, enrollments={"web": web})
    eff = apply_view(nm, view, NOW).netmap
    laptop, enrolled = eff.peer("laptop"), eff.peer("web")
    assert laptop is not None and laptop.wg_public_key == new.wireguard.public()
    assert laptop.approved_routes == lan and laptop.exit_node
    assert enrolled is not None and enrolled.approved_routes == () and not enrolled.exit_node


def test_the_map_in_force_stands_for_its_signed_map() -> None:
    """Applying again to a map in force (the agent's map of its last pass) gives the same map: the
    signed one underneath is what is applied to, so nothing is dropped or added twice."""
    key = authkey()
    web = enroll(key, device(), "web", "100.64.1.7")
    nm = netmap([member("desk", DESK, "100.64.0.1"), member("laptop", LAPTOP, "100.64.0.2", expires=NOW + 5)],
                keys=[key], self_name="desk")
    view = EndpointView(enrollments={"web": web})
    once = apply_view(nm, view, NOW).netmap
    assert once.signed is nm
    later = apply_view(once, view, NOW + 5).netmap
    assert later.peer("laptop") is None and later.peer("web") is not None and later.signed is nm


def test_next_change_is_the_first_expiry_the_map_relies_on() -> None:
    key = authkey(expires=NOW + 300)
    nm = netmap([member("desk", DESK, "100.64.0.1"), member("laptop", LAPTOP, "100.64.0.2", expires=NOW + 900)],
                keys=[key])
    assert next_change(nm, NOW) == NOW + 900
    web = decide(nm, {"web": enroll(key, device(), "web")}, {}, {}, NOW).accepted
    eff = effective_netmap(nm, web, {}, NOW).netmap
    assert next_change(eff, NOW) == NOW + 300
    assert next_change(netmap([member("desk", DESK, "100.64.0.1")]), NOW) is None


def test_a_no_op_pass_ends_when_the_clock_changes_the_map() -> None:
    """Every pass builds the map in force at its own `now`: the agent's memo of desired() (equal
    inputs, same result) gives way once a membership expires, and the member's peer goes."""
    nm = netmap([member("desk", DESK, "100.64.0.1"), member("laptop", LAPTOP, "100.64.0.2", expires=NOW + 30)],
                self_name="desk")
    memo = DesiredMemo()

    def peers_at(t: int) -> set[str]:
        inputs = Inputs(apply_view(nm, None, t).netmap, DESK.wireguard, 51820, {})
        return {p.public_key.b64() for p in memo(inputs).wg.peers}

    assert peers_at(NOW + 29) == {LAPTOP.wireguard.public().b64()}
    assert peers_at(NOW + 29) == {LAPTOP.wireguard.public().b64()}  # the memo's answer
    assert peers_at(NOW + 30) == set()


def test_the_netmap_cache_keeps_what_nodes_judge_by() -> None:
    key = authkey(("tag:a",), pool="100.64.3.0/24", reusable=True)
    nm = netmap([member("laptop", LAPTOP, "100.64.0.2", expires=NOW + 60)], keys=[key],
                revoked=[revoked("old", device(), "100.64.0.9")])
    back = netmap_from_json(netmap_to_json(nm))
    assert back.authkeys == nm.authkeys and back.revoked == nm.revoked
    assert back.peer("laptop").expires == NOW + 60
    old_cache = netmap_to_json(nm)
    del old_cache["authkeys"]  # written before: refused, so the map is rebuilt from the repository
    with pytest.raises(KeyError):
        netmap_from_json(old_cache)


def test_the_view_digest_follows_keys_and_enrollments_not_candidates() -> None:
    rec = record(LAPTOP, "laptop")
    moved = dataclasses.replace(rec, candidates=("198.51.100.7:41641",), counter=2)
    assert EndpointView(records={"laptop": rec}).digest() == EndpointView(records={"laptop": moved}).digest()
    rotated = record(LAPTOP, "laptop", device(), counter=3)
    assert EndpointView(records={"laptop": rec}).digest() != EndpointView(records={"laptop": rotated}).digest()
    web = enroll(authkey(), device(), "web")
    assert EndpointView().digest() != EndpointView(enrollments={"web": web}).digest()


def test_status_warns_fourteen_days_ahead_and_once_dropped() -> None:
    soon = base(expires=NOW + EXPIRY_WARNING_S)
    me_soon = base(expires=NOW + EXPIRY_WARNING_S, self_name="laptop")
    assert membership_warnings(me_soon, NOW)[0].startswith("the membership of laptop expires at ")
    assert "in 14 days" in membership_warnings(me_soon, NOW)[0]
    assert membership_warnings(me_soon, NOW - 1) == []  # fifteen days ahead: nothing yet
    assert "in 2 hours" in membership_warnings(me_soon, NOW + EXPIRY_WARNING_S - 2 * 3600)[0]
    gone = effective_netmap(me_soon, {}, {}, NOW + EXPIRY_WARNING_S).netmap
    told = membership_warnings(gone, NOW + EXPIRY_WARNING_S)[0]
    assert told.startswith("laptop is no longer a member: membership expired")
    assert membership_warnings(soon, NOW) == []  # desk's own membership does not expire


@pytest.mark.parametrize(("every", "made", "now", "due"), [
    (None, NOW, NOW + 10**9, False), (90 * DAY, NOW, NOW + 90 * DAY - 1, False), (90 * DAY, NOW, NOW + 90 * DAY, True),
    (90 * DAY, None, NOW, False),
])
def test_rotation_is_due_every_so_long_after_the_keys_were_made(every: int | None, made: int | None, now: int,
                                                               due: bool) -> None:
    assert rotation_due(every, made, now) is due


@pytest.mark.parametrize(("text", "seconds"), [("90d", 90 * DAY), ("12h", 43200), ("30m", 1800), ("45s", 45),
                                               ("2w", 14 * DAY), ("180D", 180 * DAY)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0d", "-1d", "1.5d", "90", "d", "90 days", "99999999d", "1d\n1d", "٣d"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_durations_print_in_the_largest_unit() -> None:
    assert [format_duration(s) for s in (90 * DAY, 3600, 90, 61)] == ["90d", "1h", "90s", "61s"]
