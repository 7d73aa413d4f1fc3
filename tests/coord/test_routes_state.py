"""Routes in the signed files (issue 19, items 1 and the admin's commands): the record's offer and
the state's approval, parsed strictly; verification; `admin approve --routes`, update requests,
autoApprovers; `admin routes`; the pull-request check."""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from mesh_builder import NOW, Mesh, new_device

from meshctl.coord import admin, changes, netmap_json, pr_check, records
from meshctl.coord import routes as routes_mod
from meshctl.coord.advertise import Advertised, parse_advertise_routes
from meshctl.coord.fs_snapshot import FsSnapshot
from meshctl.coord.join import sign_record
from meshctl.coord.netmap import Peer
from meshctl.coord.node_state import NodeState
from meshctl.coord.route_approval import parse_routes_option
from meshctl.errors import EXIT_REFUSED, EXIT_USAGE, MeshctlError, ParseError, UsageError, VerificationError
from meshctl.keys import DiscoPrivate, NodePrivate, SigningKey

N = ipaddress.ip_network
LAN = Advertised((N("192.168.50.0/24"),))
EXIT = Advertised((), True)


def _record(**kw: object) -> records.PeerRecord:
    rec = records.PeerRecord("a" * 32, "r1", SigningKey.generate().public(), NodePrivate.generate().public(),
                             DiscoPrivate.generate().public(), (), NOW)
    return replace(rec, **kw)  # type: ignore[arg-type]


# --- the record ------------------------------------------------------------------------------------


def test_record_offer_round_trips_sorted() -> None:
    rec = _record(advertise_routes=(N("fd00:1::/64"), N("10.0.0.0/8"), N("192.168.1.0/24")), advertise_exit_node=True)
    data = records.marshal_peer(rec)
    doc = json.loads(data)
    assert doc["advertise_routes"] == ["10.0.0.0/8", "192.168.1.0/24", "fd00:1::/64"]
    assert doc["advertise_exit_node"] is True
    back = records.parse_peer(data, "peers/r1.json")
    assert back.advertise_routes == (N("10.0.0.0/8"), N("192.168.1.0/24"), N("fd00:1::/64"))
    assert back.advertise_exit_node


def test_a_record_without_an_offer_is_byte_for_byte_as_before() -> None:
    doc = json.loads(records.marshal_peer(_record()))
    assert "advertise_routes" not in doc and "advertise_exit_node" not in doc


@pytest.mark.parametrize(("field", "value", "error"), [
    ("advertise_routes", ["192.168.1.7/24"], "field advertise_routes: '192.168.1.7/24' has host bits set"),
    ("advertise_routes", ["0.0.0.0/0"], "field advertise_routes: a default route is exit-node use"),
    ("advertise_routes", ["10.0.0.0/8", "10.0.0.0/8"], "field advertise_routes: has duplicate items"),
    ("advertise_routes", "10.0.0.0/8", "must be a list of at most 128 items"),
    ("advertise_routes", [f"10.{i}.0.0/16" for i in range(129)], "must be a list of at most 128 items"),
    ("advertise_routes", [7], "invalid item"),
    ("advertise_exit_node", "yes", "field advertise_exit_node: must be true or false"),
    ("advertise_exit_node", 1, "field advertise_exit_node: must be true or false"),
])
def test_record_offer_is_parsed_strictly(field: str, value: object, error: str) -> None:
    doc = json.loads(records.marshal_peer(_record()))
    doc[field] = value
    with pytest.raises(ParseError) as info:
        records.parse_peer(json.dumps(doc).encode(), "peers/r1.json")
    assert error in info.value.message
    assert info.value.message.startswith("peers/r1.json:")


@pytest.mark.parametrize(("value", "error"), [
    (["0.0.0.0/0"], "0.0.0.0/0 and ::/0 are approved together"),
    (["10.0.0.1/8"], "has host bits set"),
    (["10.0.0.0/8", "10.0.0.0/8"], "has duplicate items"),
])
def test_state_approval_is_parsed_strictly(mesh: Mesh, value: list[str], error: str) -> None:
    mesh.add("r1")
    doc = json.loads((mesh.path / "state.json").read_bytes())
    doc["peers"]["r1"]["routes"] = value
    with pytest.raises(ParseError, match=error):
        records.parse_state(json.dumps(doc).encode())


# --- verification --------------------------------------------------------------------------------


def test_only_advertised_and_approved_routes_reach_the_netmap(mesh: Mesh) -> None:
    mesh.request("r1", advertise=Advertised((N("192.168.50.0/24"), N("10.9.0.0/16")), True))
    admin.approve(mesh.checkout, "r1", mesh.admin_keys, NOW, routes=parse_routes_option("192.168.50.0/24"))
    mesh.add("laptop")
    nm = mesh.verify().netmap
    r1 = nm.peer("r1")
    assert r1 is not None and r1.approved_routes == (N("192.168.50.0/24"),) and not r1.exit_node
    laptop = nm.peer("laptop")
    assert laptop is not None and laptop.approved_routes == () and not laptop.exit_node


def test_an_approval_the_record_does_not_advertise_is_never_used(mesh: Mesh) -> None:
    """The admin-signed state alone cannot make a device route: its own record must offer it."""
    mesh.add("r1")
    state_path = mesh.path / "state.json"
    state = records.parse_state(state_path.read_bytes())
    peers = dict(state.peers)
    peers["r1"] = replace(peers["r1"], routes=(N("192.168.50.0/24"), N("0.0.0.0/0"), N("::/0")))
    admin.write_state(mesh.checkout, replace(state, peers=peers), mesh.admin_keys, NOW)
    r1 = mesh.verify().netmap.peer("r1")
    assert r1 is not None and r1.approved_routes == () and not r1.exit_node


def test_a_state_with_conflicting_routes_is_refused(mesh: Mesh) -> None:
    """Signed by the admin or not, a state whose routes overlap the mesh is refused (exit code 3)."""
    mesh.request("r1", advertise=Advertised((N("100.64.0.0/16"),)))
    admin.approve(mesh.checkout, "r1", mesh.admin_keys, NOW)
    state_path = mesh.path / "state.json"
    state = records.parse_state(state_path.read_bytes())
    peers = dict(state.peers)
    peers["r1"] = replace(peers["r1"], routes=(N("100.64.0.0/16"),))
    admin.write_state(mesh.checkout, replace(state, peers=peers), mesh.admin_keys, NOW)
    with pytest.raises(VerificationError) as info:
        mesh.verify()
    assert info.value.exit_code == EXIT_REFUSED
    assert info.value.message == "state.json: member r1: route 100.64.0.0/16: overlaps the mesh's own addresses"


def test_netmap_cache_keeps_routes(mesh: Mesh) -> None:
    mesh.request("r1", advertise=Advertised((N("192.168.50.0/24"),), True))
    admin.approve(mesh.checkout, "r1", mesh.admin_keys, NOW, routes=parse_routes_option("all"))
    nm = mesh.verify().netmap
    back = netmap_json.netmap_from_json(json.loads(json.dumps(netmap_json.netmap_to_json(nm))))
    assert back == nm
    r1 = back.peer("r1")
    assert r1 is not None and r1.exit_node and r1.approved_routes == (N("192.168.50.0/24"),)


def test_routes_and_membership_expiry_live_side_by_side(mesh: Mesh) -> None:
    """Issue 20's `expires` and issue 19's `routes` in one assignment: signed, parsed strictly,
    in the netmap and its cache, and the digest of a change names both."""
    mesh.request("r1", advertise=Advertised((N("192.168.50.0/24"),), True))
    plan, _ = admin.run_change(mesh.checkout.path, mesh.admin_keys, NOW, lambda s: changes.approve(
        s.baseline, "r1", s.now, routes=parse_routes_option("all"), expires_in=180 * 86400))
    line = next(x for x in plan.diff if "member r1" in x)
    assert "routes 0.0.0.0/0,192.168.50.0/24,::/0" in line and "expires " in line
    doc = json.loads((mesh.path / "state.json").read_bytes())["peers"]["r1"]
    assert doc["routes"] == ["0.0.0.0/0", "192.168.50.0/24", "::/0"] and doc["expires"].endswith("Z")
    nm = mesh.verify().netmap
    r1 = nm.peer("r1")
    assert r1 is not None and r1.exit_node and r1.approved_routes == (N("192.168.50.0/24"),)
    assert r1.expires == NOW + 180 * 86400
    assert netmap_json.netmap_from_json(json.loads(json.dumps(netmap_json.netmap_to_json(nm)))) == nm


@pytest.mark.parametrize("expires", [None, 1_900_000_000])
@pytest.mark.parametrize("routes", [(), (N("192.168.50.0/24"),)])
def test_netmap_cache_keeps_routes_and_expiry_each_alone(routes: tuple[routes_mod.Prefix, ...],
                                                         expires: int | None) -> None:
    rec = _record()
    peer = Peer("r1", rec.identity_key, rec.wg_public_key, rec.disco_key, (ipaddress.IPv4Address("100.64.0.5"),),
                approved_routes=routes, exit_node=bool(routes), expires=expires)
    assert netmap_json.peer_from_json(json.loads(json.dumps(netmap_json.peer_to_json(peer)))) == peer


def test_approve_expires_for_a_member_points_at_renew(mesh: Mesh) -> None:
    mesh.add("r1")
    with pytest.raises(UsageError) as info:
        admin.run_change(mesh.checkout.path, mesh.admin_keys, NOW,
                         lambda s: changes.approve(s.baseline, "r1", s.now, expires_in=86400))
    assert info.value.message == "--expires is for join requests; 'r1' is already a member"
    assert "meshctl admin renew r1 --expires" in (info.value.hint or "")


def test_record_cache_keeps_the_offer_and_drops_older_entries(tmp_path: Path) -> None:
    node = NodeState(tmp_path)
    rec = _record(advertise_routes=(N("192.168.50.0/24"),), advertise_exit_node=True)
    node.save_record_cache("a" * 32, {"k": ("d" * 64, rec)}, {"k"})
    assert node.load_record_cache("a" * 32) == {"k": ("d" * 64, rec)}
    doc = json.loads((tmp_path / "records-cache.json").read_text())
    doc["records"]["k"] = doc["records"]["k"][:7]  # an older meshctl's entry: no offer
    (tmp_path / "records-cache.json").write_text(json.dumps(doc))
    assert node.load_record_cache("a" * 32) == {}  # rebuilt, never a record missing what it signed


# --- admin approve --------------------------------------------------------------------------------


def test_approve_join_with_routes_all(mesh: Mesh) -> None:
    mesh.request("r1", advertise=Advertised((N("192.168.50.0/24"),), True))
    state, _, _ = admin.approve(mesh.checkout, "r1", mesh.admin_keys, NOW, routes=parse_routes_option("all"))
    assert state.peers["r1"].routes == (N("0.0.0.0/0"), N("192.168.50.0/24"), N("::/0"))


def test_plain_approve_approves_nothing_without_auto_approvers(mesh: Mesh) -> None:
    mesh.request("r1", advertise=Advertised((N("192.168.50.0/24"),), True))
    state, _, _ = admin.approve(mesh.checkout, "r1", mesh.admin_keys, NOW)
    assert state.peers["r1"].routes == ()


AUTO = """{
  "tagOwners": {"tag:router": [], "tag:exit": []},
  "autoApprovers": {"routes": {"192.168.0.0/16": ["tag:router"]}, "exitNode": ["tag:exit"]},
  "grants": [{"src": ["*"], "dst": ["*"], "ip": ["*"]}],
}"""


def _sign_policy(mesh: Mesh, text: str) -> None:
    (mesh.path / "policy.hujson").write_text(text)
    admin.sign(mesh.checkout, mesh.admin_keys, NOW)  # autoApprovers are read from the signed policy


def test_plain_approve_applies_auto_approvers(mesh: Mesh) -> None:
    _sign_policy(mesh, AUTO)
    mesh.request("r1", advertise=Advertised((N("192.168.50.0/24"), N("10.0.0.0/8")), True))
    state, _, _ = admin.approve(mesh.checkout, "r1", mesh.admin_keys, NOW, tags=["tag:router"])
    assert state.peers["r1"].routes == (N("192.168.50.0/24"),)  # 10/8 is nobody's to approve; no tag:exit
    mesh.request("ex", advertise=EXIT)
    state, _, _ = admin.approve(mesh.checkout, "ex", mesh.admin_keys, NOW, tags=["tag:exit"])
    assert state.peers["ex"].routes == (N("0.0.0.0/0"), N("::/0"))
    mesh.request("laptop", advertise=Advertised((N("192.168.60.0/24"),)))
    state, _, _ = admin.approve(mesh.checkout, "laptop", mesh.admin_keys, NOW, owner="alice@example.com")
    assert state.peers["laptop"].routes == ()  # a user's device is not tag:router


def test_explicit_routes_override_auto_approvers(mesh: Mesh) -> None:
    _sign_policy(mesh, AUTO)
    mesh.request("r1", advertise=Advertised((N("192.168.50.0/24"),)))
    state, _, _ = admin.approve(mesh.checkout, "r1", mesh.admin_keys, NOW, tags=["tag:router"],
                                routes=parse_routes_option("none"))
    assert state.peers["r1"].routes == ()


@pytest.mark.parametrize(("option", "error"), [
    ("10.9.0.0/16", "--routes 10.9.0.0/16: r1 does not advertise it (advertised: 192.168.50.0/24)"),
    ("exit", "--routes exit: r1 does not advertise an exit node"),
    ("192.168.50.1/24", "--routes: '192.168.50.1/24' has host bits set"),
    ("all,exit", "'all' stands alone"),
])
def test_approve_refuses_routes_not_advertised(mesh: Mesh, option: str, error: str) -> None:
    mesh.request("r1", advertise=LAN)
    with pytest.raises(UsageError) as info:
        admin.approve(mesh.checkout, "r1", mesh.admin_keys, NOW, routes=parse_routes_option(option))
    assert error in info.value.message
    assert info.value.exit_code == EXIT_USAGE
    assert (mesh.path / "requests" / "r1.json").exists()  # nothing moved


def test_approve_refuses_an_overlap_with_another_members_route_but_takes_an_ha_pair(mesh: Mesh) -> None:
    for name in ("r1", "r2"):
        mesh.request(name, advertise=LAN)
        admin.approve(mesh.checkout, name, mesh.admin_keys, NOW, routes=parse_routes_option("all"))
    assert mesh.verify().netmap.peer("r2").approved_routes == (N("192.168.50.0/24"),)  # type: ignore[union-attr]
    mesh.request("r3", advertise=Advertised((N("192.168.0.0/16"),)))
    with pytest.raises(UsageError, match="member r1: route 192.168.50.0/24 overlaps r3's route 192.168.0.0/16"):
        admin.approve(mesh.checkout, "r3", mesh.admin_keys, NOW, routes=parse_routes_option("all"))


def _update(mesh: Mesh, name: str, offer: Advertised, keys: object = None) -> None:
    """What `meshctl set --advertise-...` puts on branch update/NAME: the same record, new offer."""
    device = keys or mesh.devices[name]
    old = records.parse_peer((mesh.path / "peers" / f"{name}.json").read_bytes(), name)
    rec = replace(old, advertise_routes=offer.routes, advertise_exit_node=offer.exit_node, created=NOW + 5,
                  identity_key=device.identity.public())  # type: ignore[attr-defined]
    data, sig = sign_record(device, rec)  # type: ignore[arg-type]
    (mesh.path / "requests" / f"{name}.json").write_bytes(data)
    (mesh.path / "requests" / f"{name}.json.sig").write_bytes(sig)


def test_member_update_replaces_the_record_and_keeps_addresses_tags_owner(mesh: Mesh) -> None:
    mesh.add("r1", tags=["tag:router"])
    before = mesh.checkout.state.peers["r1"]
    _update(mesh, "r1", LAN)
    state, changed, removed = admin.approve(mesh.checkout, "r1", mesh.admin_keys, NOW,
                                            routes=parse_routes_option("all"))
    after = state.peers["r1"]
    assert (after.addresses, after.tags, after.owner) == (before.addresses, before.tags, before.owner)
    assert after.record_sha256 != before.record_sha256 and after.routes == (N("192.168.50.0/24"),)
    assert "peers/r1.json" in changed and removed == ["requests/r1.json", "requests/r1.json.sig"]
    assert not (mesh.path / "requests" / "r1.json").exists()
    assert mesh.verify().netmap.peer("r1").approved_routes == (N("192.168.50.0/24"),)  # type: ignore[union-attr]
    assert pr_check.check_change(FsSnapshot(mesh.path), None, NOW).ok


def test_member_update_signed_by_another_key_is_refused(mesh: Mesh) -> None:
    mesh.add("r1")
    _update(mesh, "r1", LAN, keys=new_device())
    with pytest.raises(VerificationError, match="requests/r1.json: signed by identity key"):
        admin.approve(mesh.checkout, "r1", mesh.admin_keys, NOW, routes=parse_routes_option("all"))
    report = pr_check.check_change(FsSnapshot(mesh.path), None, NOW)
    assert any("an update must be signed by its own identity key" in p for p in report.problems), report.problems


def test_pr_check_takes_an_update_request_of_a_member(mesh: Mesh) -> None:
    mesh.add("r1")
    _update(mesh, "r1", LAN)
    report = pr_check.check_change(FsSnapshot(mesh.path), None, NOW)
    assert report.ok, report.problems


def test_unapproving_and_withdrawn_routes(mesh: Mesh) -> None:
    mesh.request("r1", advertise=Advertised((N("192.168.50.0/24"), N("10.9.0.0/16"))))
    admin.approve(mesh.checkout, "r1", mesh.admin_keys, NOW, routes=parse_routes_option("all"))
    state, changed, removed = admin.approve(mesh.checkout, "r1", mesh.admin_keys, NOW,
                                            routes=parse_routes_option("10.9.0.0/16"))
    assert state.peers["r1"].routes == (N("10.9.0.0/16"),) and changed == ["state.json", "state.json.sig"]
    assert removed == []
    _update(mesh, "r1", Advertised((N("192.168.50.0/24"),)))  # the device stops offering 10.9/16
    state, _, _ = admin.approve(mesh.checkout, "r1", mesh.admin_keys, NOW)  # plain: keeps what is still offered
    assert state.peers["r1"].routes == ()


def test_plain_approve_of_a_member_with_nothing_new_says_so(mesh: Mesh) -> None:
    mesh.add("r1")
    with pytest.raises(UsageError, match="nothing to approve: r1 is a member with no pending update"):
        admin.approve(mesh.checkout, "r1", mesh.admin_keys, NOW)
    with pytest.raises(UsageError, match="--ip, --tag, --owner and --allow-revoked-key are for join requests"):
        admin.approve(mesh.checkout, "r1", mesh.admin_keys, NOW, tags=["tag:x"])


def test_route_rows(mesh: Mesh) -> None:
    for name in ("r1", "r2"):
        mesh.request(name, advertise=Advertised((N("192.168.50.0/24"),), name == "r2"))
        admin.approve(mesh.checkout, name, mesh.admin_keys, NOW, routes=parse_routes_option("192.168.50.0/24"))
    mesh.add("r3")
    _update(mesh, "r3", Advertised((N("10.3.0.0/16"),)))
    rows = {(r.member, r.route): r for r in admin.route_rows(mesh.checkout)}
    assert rows[("r1", "192.168.50.0/24")].in_use and rows[("r1", "192.168.50.0/24")].ha_group == ("r1", "r2")
    exit_row = rows[("r2", "exit node")]
    assert exit_row.advertised and not exit_row.approved
    assert rows[("r3", "10.3.0.0/16")].pending and not rows[("r3", "10.3.0.0/16")].advertised


@pytest.mark.parametrize(("text", "want", "exit_named"), [
    ("", [], False),
    ("192.168.50.0/24", ["192.168.50.0/24"], False),
    ("10.0.0.0/8, 192.168.50.0/24", ["10.0.0.0/8", "192.168.50.0/24"], False),
    ("0.0.0.0/0,::/0", [], True),
])
def test_parse_advertise_routes(text: str, want: list[str], exit_named: bool) -> None:
    got, exit_node = parse_advertise_routes(text)
    assert [str(r) for r in got] == want and exit_node is exit_named


@pytest.mark.parametrize(("text", "error"), [
    ("192.168.50.1/24", "host bits set; the network is 192.168.50.0/24"),
    ("0.0.0.0/0", "0.0.0.0/0 and ::/0 go together"),
    ("lan", "is not a CIDR (missing /LENGTH)"),
])
def test_parse_advertise_routes_errors(text: str, error: str) -> None:
    with pytest.raises(MeshctlError, match=re.escape(error)):
        parse_advertise_routes(text)
