"""Every refusal of DESIGN.md's trust rules, on a repository built in tmp_path."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from mesh_builder import NOW, Mesh, make_mesh, new_device

from meshctl.coord import admin, records, signing, verify
from meshctl.coord.fs_snapshot import FsSnapshot
from meshctl.errors import VerificationError
from meshctl.keys import SigningKey


def refused(mesh: Mesh, memory: verify.TrustMemory | None = None, now: int = NOW) -> str:
    with pytest.raises(VerificationError) as err:
        mesh.verify(memory, now)
    return err.value.message


def test_fresh_mesh_with_two_members_verifies(mesh: Mesh) -> None:
    mesh.add("laptop", tags=["tag:dev"], owner="alice@example.com")
    mesh.add("server", ip="100.64.0.10")
    v = mesh.verify()
    assert v.state.serial == 3
    nm = v.netmap
    assert [p.name for p in nm.peers] == ["laptop", "server"]
    laptop = nm.peer("laptop")
    assert laptop is not None and str(laptop.ipv4) == "100.64.0.1"
    assert laptop.ipv6 is not None and laptop.ipv6 in nm.network.ipv6_prefix
    assert laptop.tags == ("tag:dev",) and laptop.owner == "alice@example.com"
    assert laptop.wg_public_key == mesh.devices["laptop"].wireguard.public()
    assert str(nm.peer("server").ipv4) == "100.64.0.10"  # type: ignore[union-attr]
    assert nm.network.domain == "acme.mesh"


def test_forged_state_signature(mesh: Mesh) -> None:
    mesh.add("laptop")
    state = mesh.path / "state.json"
    state.write_bytes(state.read_bytes().replace(b"100.64.0.1", b"100.64.0.9"))
    assert refused(mesh) == "state.json.sig: no valid signature by an admin key of root version 1"


def test_missing_state_signature(mesh: Mesh) -> None:
    (mesh.path / "state.json.sig").unlink()
    assert refused(mesh) == "state.json.sig: signature file is missing"


def test_state_signed_by_a_non_admin(mesh: Mesh) -> None:
    mesh.add("laptop")
    co = mesh.checkout
    stranger = SigningKey.generate()
    data = (mesh.path / "state.json").read_bytes()
    sig = signing.sign(stranger, "state", co.root.network_id, data)
    (mesh.path / "state.json.sig").write_bytes(signing.marshal_signatures([sig]))
    assert refused(mesh) == "state.json.sig: no valid signature by an admin key of root version 1"


def test_signature_cannot_be_replayed_on_another_file_type_or_mesh(mesh: Mesh) -> None:
    key = mesh.admin_keys[0]
    data = b"{}"
    sig = signing.sign(key, "peer", "a" * 32, data)
    assert signing.valid_signers([sig], [key.public()], "peer", "a" * 32, data) == {key.public()}
    assert not signing.valid_signers([sig], [key.public()], "state", "a" * 32, data)
    assert not signing.valid_signers([sig], [key.public()], "peer", "b" * 32, data)


def test_peer_file_not_listed(mesh: Mesh) -> None:
    mesh.add("laptop")
    for suffix in ("", ".sig"):
        shutil.copy(mesh.path / f"peers/laptop.json{suffix}", mesh.path / f"peers/ghost.json{suffix}")
    assert refused(mesh) == "peers/ghost.json: not listed in state.json"


def test_peer_file_with_another_hash(mesh: Mesh) -> None:
    mesh.add("laptop")
    other = new_device()
    from meshctl.coord.join import make_request

    data, sig = make_request(other, mesh.checkout.root.network_id, "laptop", (), NOW)
    (mesh.path / "peers/laptop.json").write_bytes(data)
    (mesh.path / "peers/laptop.json.sig").write_bytes(sig)
    assert refused(mesh).startswith("peers/laptop.json: sha256 ")
    assert refused(mesh).endswith("differs from the hash listed in state.json")


def test_peer_record_not_self_signed(mesh: Mesh) -> None:
    mesh.add("laptop")
    mesh.add("desk")
    shutil.copy(mesh.path / "peers/desk.json.sig", mesh.path / "peers/laptop.json.sig")
    assert refused(mesh) == "peers/laptop.json.sig: not signed by the record's identity key"


def test_rollback_and_equivocation(mesh: Mesh) -> None:
    mesh.add("laptop")
    first = mesh.verify()
    old_state = (mesh.path / "state.json").read_bytes()
    old_sig = (mesh.path / "state.json.sig").read_bytes()
    admin.renew(mesh.checkout, mesh.admin_keys, NOW)
    second = mesh.verify(first.memory(None))
    assert second.state.serial == first.state.serial + 1
    # Roll back to the older signed state.
    renewed = [(mesh.path / "state.json").read_bytes(), (mesh.path / "state.json.sig").read_bytes()]
    (mesh.path / "state.json").write_bytes(old_state)
    (mesh.path / "state.json.sig").write_bytes(old_sig)
    assert refused(mesh, second.memory(None)) == (
        "state.json: serial 2 is lower than the accepted serial 3 (rollback refused)")
    # Same serial, other content: sign a different state with the same serial.
    (mesh.path / "state.json").write_bytes(renewed[0])
    (mesh.path / "state.json.sig").write_bytes(renewed[1])
    co = mesh.checkout
    admin.write_state(co, replace(co.state, stun=("stun.example.org:3478",)), mesh.admin_keys, NOW, bump=False)
    assert refused(mesh, second.memory(None)) == (
        "state.json: serial 3 was accepted before with other content (equivocation refused)")


def test_expired_state_says_when(mesh: Mesh) -> None:
    expires = mesh.checkout.state.expires
    message = refused(mesh, now=expires + 1)
    assert message == f"state.json: expired at {records.format_time(expires)}"


def test_root_rotation_needs_both_thresholds(mesh: Mesh) -> None:
    co = mesh.checkout
    new_key = SigningKey.generate()
    # Signed only by the new key: the old root's threshold is not met.
    admin.rotate_root(co, [], [new_key.public()], [new_key.public()], 1, 1, [new_key], NOW)
    assert refused(mesh) == "root/2.root.json: signed by 0 of version 1's root keys, threshold is 1"
    # Signed only by the old key: the new root's own threshold is not met.
    (mesh.path / "root/2.root.json").unlink()
    admin.rotate_root(co, mesh.admin_keys, [new_key.public()], [new_key.public()], 1, 1, [], NOW)
    assert refused(mesh) == "root/2.root.json: signed by 0 of its own root keys, threshold is 1"
    # Both: accepted once the state is re-signed by the new admin key.
    (mesh.path / "root/2.root.json").unlink()
    admin.rotate_root(co, mesh.admin_keys, [new_key.public()], [new_key.public()], 1, 1, [new_key], NOW)
    assert refused(mesh) == "state.json.sig: no valid signature by an admin key of root version 2"
    admin.renew(mesh.checkout, [new_key], NOW)
    assert mesh.verify().root.version == 2
    # The old admin key no longer signs states.
    with pytest.raises(Exception, match="not an admin key"):
        admin.renew(mesh.checkout, mesh.admin_keys, NOW)


def test_root_version_never_changes_once_accepted(mesh: Mesh) -> None:
    pinned = mesh.fingerprint
    co = mesh.checkout
    new_key = SigningKey.generate()
    admin.rotate_root(co, mesh.admin_keys, [new_key.public()], [new_key.public()], 1, 1, [new_key], NOW)
    admin.renew(mesh.checkout, [new_key], NOW)
    accepted = verify.verify_snapshot(FsSnapshot(mesh.path), pinned, NOW).memory(None)
    # Re-create root/2 with other content, validly signed by both: still refused.
    (mesh.path / "root/2.root.json").unlink()
    admin.rotate_root(co, mesh.admin_keys, [new_key.public()], [new_key.public()], 1, 1, [new_key], NOW + 1)
    with pytest.raises(VerificationError) as err:
        verify.verify_snapshot(FsSnapshot(mesh.path), pinned, NOW, accepted)
    assert err.value.message == "root/2.root.json: root version 2 changed after it was accepted"
    # Dropping root/2 altogether is a rollback.
    (mesh.path / "root/2.root.json").unlink()
    (mesh.path / "root/2.root.json.sig").unlink()
    with pytest.raises(VerificationError, match="root version 2 was accepted before"):
        verify.verify_snapshot(FsSnapshot(mesh.path), pinned, NOW, accepted)
    # Editing root/1 breaks the pinned fingerprint.
    root1 = mesh.path / "root/1.root.json"
    root1.write_text(root1.read_text().replace('"acme"', '"evil"'))
    with pytest.raises(VerificationError, match="^root/1.root.json: fingerprint sha256:"):
        verify.verify_snapshot(FsSnapshot(mesh.path), pinned, NOW)


def test_duplicate_keys_and_addresses(mesh: Mesh) -> None:
    keys = mesh.add("laptop")
    mesh.request("twin", keys)
    with pytest.raises(VerificationError, match="identity key is also used by laptop"):
        admin.approve(mesh.checkout, "twin", mesh.admin_keys, NOW)
    mesh.request("other")
    with pytest.raises(VerificationError, match="^state.json: peer other address 100.64.0.1 is also used by laptop$"):
        admin.approve(mesh.checkout, "other", mesh.admin_keys, NOW, ip="100.64.0.1")
    assert (mesh.path / "requests/other.json").exists()  # nothing moved


def test_duplicate_address_in_signed_state_is_refused(mesh: Mesh) -> None:
    mesh.add("laptop")
    mesh.add("desk")
    co = mesh.checkout
    peers = dict(co.state.peers)
    peers["desk"] = replace(peers["desk"], addresses=peers["laptop"].addresses)
    admin.write_state(co, replace(co.state, peers=peers), mesh.admin_keys, NOW)
    assert refused(mesh) == "state.json: peer laptop address 100.64.0.1 is also used by desk"


def test_address_outside_the_prefix(mesh: Mesh) -> None:
    mesh.add("laptop")
    co = mesh.checkout
    peers = dict(co.state.peers)
    import ipaddress

    peers["laptop"] = replace(peers["laptop"], addresses=(ipaddress.ip_address("10.1.2.3"),))
    admin.write_state(co, replace(co.state, peers=peers), mesh.admin_keys, NOW)
    assert refused(mesh) == "state.json: peer laptop address 10.1.2.3 is outside the mesh prefix"


def test_malformed_json_and_unknown_fields(mesh: Mesh) -> None:
    mesh.add("laptop")
    path = mesh.path / "peers/laptop.json"
    path.write_bytes(b'{"type": "meshctl-peer",')
    # The hash check comes first only when parsing succeeds; malformed files are named.
    assert refused(mesh).startswith("peers/laptop.json:1:")
    co = mesh.checkout
    data = (mesh.path / "state.json").read_bytes().replace(b'"serial"', b'"extra": 1, "serial"')
    (mesh.path / "state.json").write_bytes(data)
    (mesh.path / "state.json.sig").write_bytes(
        signing.marshal_signatures([signing.sign(mesh.admin_keys[0], "state", co.root.network_id, data)]))
    assert refused(mesh) == "state.json: unknown field extra"


def test_wrong_network_id(mesh: Mesh, tmp_path: Path) -> None:
    other = make_mesh(tmp_path / "other")
    keys = new_device()
    from meshctl.coord.join import make_request

    data, sig = make_request(keys, other.checkout.root.network_id, "laptop", (), NOW)
    (mesh.path / "requests/laptop.json").write_bytes(data)
    (mesh.path / "requests/laptop.json.sig").write_bytes(sig)
    with pytest.raises(VerificationError, match="requests/laptop.json: field network_id is not this mesh's"):
        admin.approve(mesh.checkout, "laptop", mesh.admin_keys, NOW)


def test_pinned_root_of_another_mesh(mesh: Mesh, tmp_path: Path) -> None:
    other = make_mesh(tmp_path / "other")
    with pytest.raises(VerificationError, match="does not match the pinned root"):
        verify.verify_snapshot(FsSnapshot(mesh.path), other.fingerprint, NOW)


def test_unknown_path_and_oversized_file(mesh: Mesh) -> None:
    (mesh.path / "evil.sh").write_text("#!/bin/sh\n")
    assert refused(mesh) == "evil.sh: unknown path in the coordination repository"
    (mesh.path / "evil.sh").unlink()
    (mesh.path / "README.md").write_bytes(b"x" * (verify.MAX_OTHER_BYTES + 1))
    limit = verify.MAX_OTHER_BYTES
    assert refused(mesh) == f"README.md: file is {limit + 1} bytes, more than the limit of {limit}"


def test_policy_edit_needs_a_new_signature(mesh: Mesh) -> None:
    (mesh.path / "policy.hujson").write_text('{"acls": []}\n')
    assert refused(mesh) == "policy.hujson: sha256 differs from policy_sha256 in state.json"
    # Only `admin sign` signs a policy edit: any other signing command refuses the unsigned file.
    with pytest.raises(VerificationError, match="^policy.hujson: sha256 differs from policy_sha256"):
        admin.renew(mesh.checkout, mesh.admin_keys, NOW)
    admin.sign(mesh.checkout, mesh.admin_keys, NOW)
    assert mesh.verify().policy_text == '{"acls": []}\n'


def test_two_of_three_admins(tmp_path: Path) -> None:
    mesh = make_mesh(tmp_path / "c", n_admins=3, threshold=2)
    assert mesh.verify().root.admin_threshold == 2
    mesh.request("laptop")
    admin.approve(mesh.checkout, "laptop", mesh.admin_keys[:1], NOW)
    assert refused(mesh) == "state.json.sig: signed by 1 admin keys, threshold is 2"
    assert admin.cosign(mesh.checkout, mesh.admin_keys[2:3]) == (2, 2)
    assert [p.name for p in mesh.verify().netmap.peers] == ["laptop"]
    # A repeated signature by the same admin does not count twice.
    admin.renew(mesh.checkout, mesh.admin_keys[:1], NOW)
    admin.cosign(mesh.checkout, mesh.admin_keys[:1])
    assert refused(mesh) == "state.json.sig: signed by 1 admin keys, threshold is 2"


def test_revoke_removes_the_member(mesh: Mesh) -> None:
    mesh.add("laptop")
    mesh.add("desk")
    admin.revoke(mesh.checkout, "laptop", mesh.admin_keys, NOW)
    assert [p.name for p in mesh.verify().netmap.peers] == ["desk"]
    assert not (mesh.path / "peers/laptop.json").exists()


def test_record_cache_skips_reverification_but_not_hash_checks(mesh: Mesh) -> None:
    mesh.add("laptop")
    mesh.commit()
    import pygit2

    from meshctl.coord.repo import GitSnapshot

    repo = pygit2.Repository(str(mesh.path))
    cache: dict[str, tuple[str, records.PeerRecord]] = {}
    snap = GitSnapshot(repo, str(repo.head.target))
    verify.verify_snapshot(snap, mesh.fingerprint, NOW, None, cache)
    assert len(cache) == 1
    # A poisoned cache entry with the wrong digest is still caught by the state hash.
    key = next(iter(cache))
    cache[key] = ("0" * 64, cache[key][1])
    with pytest.raises(VerificationError, match="differs from the hash listed"):
        verify.verify_snapshot(GitSnapshot(repo, str(repo.head.target)), mesh.fingerprint, NOW, None, cache)
