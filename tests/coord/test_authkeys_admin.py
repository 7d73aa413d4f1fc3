"""The admin's side of enrollment keys: `admin authkey create|list|revoke`, the strict `authkeys`
field of state.json, absorption of accepted enrollments by the next signing command (in its diff),
and membership expiry (`admin approve --expires`, `admin renew NAME --expires`)."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from pathlib import Path

import pygit2
import pytest
from delegation_helpers import Key, branch_files, device, enroll, plant_branch
from mesh_builder import NOW, Mesh, make_mesh

from meshctl.coord import addressing, admin, changes, records
from meshctl.coord.admin_trust import AdminTrust
from meshctl.coord.records import RecordError
from meshctl.coord.signed_change import Change
from meshctl.errors import UsageError
from meshctl.keys import SigningKey

DAY = 86400


@dataclasses.dataclass
class Admin:
    mesh: Mesh
    trust: AdminTrust
    origin: Path

    def run(self, build, now: int = NOW, **kw: object) -> admin.Plan:  # type: ignore[no-untyped-def]
        result, _ = admin.run_change(self.mesh.path, self.mesh.admin_keys, now, build, trust=self.trust,
                                     **kw)  # type: ignore[arg-type]
        return result

    def create_key(self, tags: tuple[str, ...] = ("tag:server",), reusable: bool = False, pool: str | None = None,
                   expires_in: int = 30 * DAY) -> Key:
        secret = SigningKey.generate()
        self.run(lambda s: changes.authkey_create(s.baseline, secret.public(), s.now, tags, reusable, expires_in,
                                                  pool))
        return Key(secret, self.mesh.checkout.state.authkeys[secret.public().key_id()])

    def publish(self, key: Key, name: str, v4: str, **kw: object) -> None:
        keys = device()
        state = self.mesh.checkout.state
        v6 = str(addressing.mesh_ipv6_for(state.ipv6_prefix, ipaddress.IPv4Address(v4)))
        c = enroll(key, keys, name, v4, network=state.network_id, v6=v6, **kw)  # type: ignore[arg-type]
        plant_branch(str(self.origin), f"endpoints/{name}", branch_files(c, keys, self.mesh.checkout.root.network_id))


@pytest.fixture
def adm(tmp_path: Path) -> Admin:
    """A mesh whose checkout has an origin (a bare repository the devices' branches go to)."""
    mesh = make_mesh(tmp_path / "coord")
    mesh.request("laptop")
    a = Admin(mesh, AdminTrust(tmp_path / "trust"), tmp_path / "origin.git")
    pygit2.init_repository(str(a.origin), bare=True)
    pygit2.Repository(str(mesh.path)).remotes.create("origin", str(a.origin))
    a.run(lambda s: changes.approve(s.baseline, "laptop", s.now))
    return a


def test_create_signs_the_scope_and_shows_it(adm: Admin) -> None:
    secret = SigningKey.generate()
    result = adm.run(lambda s: changes.authkey_create(s.baseline, secret.public(), s.now, ["tag:server"], False,
                                                      7 * DAY, "100.64.1.0/24"))
    key_id = secret.public().key_id()
    line = (f"authkey {key_id}: tags tag:server, pool 100.64.1.0/24, expires {records.format_time(NOW + 7 * DAY)}, "
            "single use")
    assert result.diff[1:] == (f"+ {line}",)
    assert result.state.authkeys[key_id].public_key == secret.public()
    assert b"authkeys" in (adm.mesh.path / "state.json").read_bytes()
    assert secret.private_bytes_for_device().hex().encode() not in (adm.mesh.path / "state.json").read_bytes()


@pytest.mark.parametrize(("tags", "pool", "why"), [
    (["server"], None, "--tag 'server': tags look like tag:server"),
    ([], "10.0.0.0/8", "--pool 10.0.0.0/8: not inside the mesh prefix"),
    ([], "100.64.1.1/24", "--pool '100.64.1.1/24': not an IPv4 CIDR"),
])
def test_create_refuses_a_scope_it_cannot_sign(adm: Admin, tags: list[str], pool: str | None, why: str) -> None:
    with pytest.raises(UsageError, match=why.replace("(", r"\(")):
        adm.run(lambda s: changes.authkey_create(s.baseline, SigningKey.generate().public(), s.now, tags,
                                                 pool=pool))


def test_the_next_signing_command_absorbs_an_accepted_enrollment(adm: Admin) -> None:
    key = adm.create_key(pool="100.64.1.0/24")
    adm.publish(key, "web-1", "100.64.1.7")
    result = adm.run(lambda s: changes.renew(s.baseline))
    web = result.state.peers["web-1"]
    assert [str(a) for a in web.addresses][0] == "100.64.1.7" and web.tags == ("tag:server",)
    assert web.expires is None and web.owner == ""
    assert key.id not in result.state.authkeys  # single use: used up
    assert any(line.startswith("+ member web-1: 100.64.1.7") and "tags tag:server" in line for line in result.diff)
    assert any(line.startswith(f"- authkey {key.id}") for line in result.diff)
    assert any(line.startswith("absorbed web-1: 100.64.1.7") for line in result.change.summary)
    assert "absorb enrolled web-1" in result.commit_message
    assert (adm.mesh.path / "peers" / "web-1.json").exists()
    assert "web-1" in adm.mesh.verify().records  # a node verifies it as an ordinary member now


def test_a_dry_run_absorbs_nothing_on_disk(adm: Admin) -> None:
    key = adm.create_key()
    adm.publish(key, "web-1", "100.64.0.77")
    before = (adm.mesh.path / "state.json").read_bytes()
    result = adm.run(lambda s: changes.renew(s.baseline), write=False)
    assert "web-1" in result.state.peers
    assert (adm.mesh.path / "state.json").read_bytes() == before
    assert not (adm.mesh.path / "peers" / "web-1.json").exists()


def test_a_refused_enrollment_is_told_and_not_absorbed(adm: Admin) -> None:
    key = adm.create_key(pool="100.64.1.0/24")
    adm.publish(key, "web-1", "100.64.2.7")  # outside the pool
    result = adm.run(lambda s: changes.renew(s.baseline))
    assert "web-1" not in result.state.peers
    assert any("endpoints/web-1: enrollment refused: address 100.64.2.7 is outside" in w for w in result.warnings)


def test_revoking_a_key_drops_its_devices_instead_of_absorbing_them(adm: Admin) -> None:
    leaked = adm.create_key(reusable=True)
    kept = adm.create_key(reusable=True)
    adm.publish(leaked, "evil", "100.64.0.50")
    adm.publish(kept, "web-1", "100.64.0.51")

    def build(s: admin.Session) -> Change:
        pending = s.absorbed.skipped if s.absorbed else ()
        return changes.authkey_revoke(s.baseline, leaked.id, pending)

    result, _ = admin.run_change(adm.mesh.path, adm.mesh.admin_keys, NOW, build, trust=adm.trust,
                                 skip_keys={leaked.id})
    assert "evil" not in result.state.peers and leaked.id not in result.state.authkeys
    assert "web-1" in result.state.peers and kept.id in result.state.authkeys  # reusable: stays listed
    dropped = "dropped: evil, enrolled with it and never absorbed (nodes drop it on their next sync)"
    assert dropped in result.change.summary


def test_revoking_an_unknown_key_is_a_usage_error(adm: Admin) -> None:
    with pytest.raises(UsageError, match="no auth key 'ffffffffffffffff'"):
        adm.run(lambda s: changes.authkey_revoke(s.baseline, "ffffffffffffffff"))


def test_a_device_absorbed_and_revoked_in_one_command(adm: Admin) -> None:
    key = adm.create_key()
    adm.publish(key, "web-1", "100.64.0.77")
    result = adm.run(lambda s: changes.revoke(s.baseline, "web-1", s.now))
    assert "web-1" not in result.state.peers
    assert [r.name for r in result.state.revoked] == ["web-1"]
    assert not (adm.mesh.path / "peers" / "web-1.json").exists()


# --- membership expiry ------------------------------------------------------------------------


def test_approve_expires_sets_the_membership_expiry_and_renew_moves_it(adm: Admin) -> None:
    adm.mesh.request("phone")
    result = adm.run(lambda s: changes.approve(s.baseline, "phone", s.now, expires_in=180 * DAY))
    assert result.state.peers["phone"].expires == NOW + 180 * DAY
    assert f"expires {records.format_time(NOW + 180 * DAY)}" in next(x for x in result.diff if "member phone" in x)
    assert f"membership expires {records.format_time(NOW + 180 * DAY)}" in result.change.summary
    result = adm.run(lambda s: changes.set_member_expiry(s.baseline, "phone", s.now, 365 * DAY))
    assert result.diff[1:] == (f"~ member phone: expires {records.format_time(NOW + 180 * DAY)} -> "
                               f"{records.format_time(NOW + 365 * DAY)}",)
    result = adm.run(lambda s: changes.set_member_expiry(s.baseline, "phone", s.now, None))
    assert result.state.peers["phone"].expires is None


def test_no_expiry_unless_asked_for(adm: Admin) -> None:
    adm.mesh.request("srv")
    result = adm.run(lambda s: changes.approve(s.baseline, "srv", s.now, tags=["tag:server"]))
    assert result.state.peers["srv"].expires is None
    peers = json.loads(adm.mesh.path.joinpath("state.json").read_bytes())["peers"]
    assert all("expires" not in entry for entry in peers.values())


# --- the state's authkeys field, strict -------------------------------------------------------


def _state_with(adm: Admin, edit) -> bytes:  # type: ignore[no-untyped-def]
    doc = json.loads((adm.mesh.path / "state.json").read_bytes())
    edit(doc)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("edit", "why"), [
    (lambda d, k: d["authkeys"][k].update(extra=1), "unknown field authkeys.{k}.extra"),
    (lambda d, k: d["authkeys"][k].pop("reusable"), "missing field authkeys.{k}.reusable"),
    (lambda d, k: d["authkeys"][k].update(reusable="yes"), "field authkeys.{k}.reusable: must be true or false"),
    (lambda d, k: d["authkeys"][k].update(pool="10.0.0.0/8"), "is not inside the mesh prefix"),
    (lambda d, k: d["authkeys"][k].update(pool="100.64.1.0/255.255.255.0"), "must be an IPv4 CIDR"),
    (lambda d, k: d["authkeys"][k].update(tags=["server"]), "field authkeys.{k}.tags: invalid item"),
    (lambda d, k: d["authkeys"].update({"0" * 16: d["authkeys"].pop(k)}), "its key id is {k}"),
    (lambda d, k: d["authkeys"].update({"X": 1}), "invalid key id 'X'"),
])
def test_the_authkeys_field_is_strict(adm: Admin, edit, why: str) -> None:  # type: ignore[no-untyped-def]
    key = adm.create_key()
    data = _state_with(adm, lambda d: edit(d, key.id))
    with pytest.raises(RecordError, match=why.format(k=key.id).replace("(", r"\(")):
        records.parse_state(data)


def test_a_state_with_authkeys_round_trips(adm: Admin) -> None:
    adm.create_key(("tag:a", "tag:b"), reusable=True, pool="100.64.9.0/24")
    data = (adm.mesh.path / "state.json").read_bytes()
    assert records.marshal_state(records.parse_state(data)) == data


def test_too_many_keys_are_refused(adm: Admin) -> None:
    key = adm.create_key()
    entry = json.loads((adm.mesh.path / "state.json").read_bytes())["authkeys"][key.id]
    many = {f"{i:016x}": entry for i in range(records.MAX_AUTHKEYS + 1)}
    with pytest.raises(RecordError, match="more than 256 keys"):
        records.parse_state(_state_with(adm, lambda d: d.update(authkeys=many)))
