"""Admins verify before they sign: every signing command goes through one path (coord/baseline.py,
coord/signed_change.py) that refuses a checkout holding anything valid signatures do not cover,
names the file, writes nothing, and shows what the new signed state changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pygit2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mesh_builder import NOW, Mesh, make_mesh, new_device

from meshctl.coord import admin, changes, records, relays_admin, signing, verify
from meshctl.coord.admin_trust import AdminTrust
from meshctl.coord.fs_snapshot import FsSnapshot
from meshctl.coord.join import make_request
from meshctl.coord.signed_change import Change
from meshctl.errors import MeshctlError, UsageError, VerificationError
from meshctl.keys import SigningKey
from meshctl.policy.check import check_policy

RELAY_KEY = SigningKey.generate().public().text()


@dataclasses.dataclass
class Admin:
    mesh: Mesh
    trust: AdminTrust

    def run(self, build: Callable[[admin.Session], Change], now: int = NOW, **kw: object) -> admin.Plan:
        result, _ = admin.run_change(self.mesh.path, self.mesh.admin_keys, now, build, trust=self.trust,
                                     **kw)  # type: ignore[arg-type]
        return result

    def memory(self) -> verify.TrustMemory | None:
        rem = self.trust.load(self.network_id)
        return rem.memory if rem else None

    @property
    def network_id(self) -> str:
        return str(json.loads(next(self.trust.base.glob("*/state.json")).read_text())["network_id"])


@pytest.fixture
def adm(tmp_path: Path) -> Admin:
    """A mesh with members laptop and desk, a relay, a pending request from newbie, all committed;
    the admin's memory holds the signed state."""
    mesh = make_mesh(tmp_path / "coord")
    a = Admin(mesh, AdminTrust(tmp_path / "trust"))
    for name in ("laptop", "desk"):
        mesh.request(name)
        a.run(lambda s, n=name: changes.approve(s.baseline, n, s.now))  # type: ignore[misc]
    a.run(lambda s: relays_admin.add_change(s.baseline, relays_admin.parse_relay("home", "198.51.100.7:3340",
                                                                                   RELAY_KEY)))
    mesh.request("newbie")
    mesh.commit("members")
    return a


# Every signing command, as a build function (with what it needs beyond the baseline).
COMMANDS: dict[str, tuple[Callable[[admin.Session], Change], dict[str, object]]] = {
    "approve": (lambda s: changes.approve(s.baseline, "newbie", s.now), {}),
    "revoke": (lambda s: changes.revoke(s.baseline, "desk", s.now), {}),
    "renew": (lambda s: changes.renew(s.baseline), {}),
    "sign": (lambda s: changes.sign_policy(s.baseline), {"inputs": changes.sign_inputs(False)}),
    "sign --update-pins": (lambda s: changes.sign_policy(s.baseline, True),
                           {"inputs": changes.sign_inputs(True)}),
    "sign --cosign": (lambda s: changes.cosign(s.baseline, admin.remembered_view(s)), {"cosign": True}),
    "relay add": (lambda s: relays_admin.add_change(
        s.baseline, relays_admin.parse_relay("spare", "198.51.100.8:3340", RELAY_KEY)), {}),
    "relay remove": (lambda s: relays_admin.remove_change(s.baseline, "home"), {}),
}


def files_of(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(path).parts}


def _edit_state(path: Path, edit: Callable[[dict[str, object]], None]) -> None:
    doc = json.loads((path / "state.json").read_text())
    edit(doc)
    (path / "state.json").write_text(json.dumps(doc))


def tag_ops(path: Path) -> None:
    _edit_state(path, lambda d: d["peers"]["laptop"].__setitem__("tags", ["tag:ops"]))  # type: ignore[index]


def attacker_record(path: Path) -> None:
    """The host's own self-signed record for laptop, and its hash in state.json (unsigned)."""
    network_id = json.loads((path / "state.json").read_text())["network_id"]
    data, sig = make_request(new_device(), network_id, "laptop", (), NOW)
    (path / "peers/laptop.json").write_bytes(data)
    (path / "peers/laptop.json.sig").write_bytes(sig)
    _edit_state(path, lambda d: d["peers"]["laptop"].__setitem__(  # type: ignore[index]
        "record_sha256", hashlib.sha256(data).hexdigest()))


def junk_entry(path: Path) -> None:
    """An extra entry in a member's signature file: a node still accepts the record (its own key's
    entry is valid), but nothing signs the extra bytes."""
    sig = path / "peers/laptop.json.sig"
    doc = json.loads(sig.read_text())
    doc["signatures"].append({"keyid": "0" * 16, "sig": "A" * 86 + "=="})
    sig.write_text(json.dumps(doc))


def record_only(path: Path) -> None:
    network_id = json.loads((path / "state.json").read_text())["network_id"]
    data, sig = make_request(new_device(), network_id, "laptop", (), NOW)
    (path / "peers/laptop.json").write_bytes(data)
    (path / "peers/laptop.json.sig").write_bytes(sig)


TAMPERING: dict[str, tuple[Callable[[Path], None], str]] = {
    "unsigned tag in state.json": (tag_ops, "state.json.sig: no valid signature"),
    "replaced peer record with updated record_sha256": (attacker_record, "state.json.sig: no valid signature"),
    "replaced peer record": (record_only, "peers/laptop.json: sha256 "),
    "junk signature entry": (junk_entry, "peers/laptop.json.sig: entry '0000000000000000' is not a valid"),
    "policy edit": (lambda p: (p / "policy.hujson").write_text('{"acls": []}\n'), "policy.hujson: sha256 differs"),
    "README edit": (lambda p: (p / "README.md").write_text("evil\n"), "README.md: sha256 differs"),
    "workflow edit": (lambda p: (p / ".github/workflows/meshctl-verify.yml").write_text("on: push\n"),
                      ".github/workflows/meshctl-verify.yml: sha256 differs"),
    "new workflow": (lambda p: (p / ".github/workflows/x.yml").write_text("on: push\n"),
                     ".github/workflows/x.yml: not pinned in state.json"),
    "unknown file": (lambda p: (p / "evil.sh").write_text("x"), "evil.sh: unknown path"),
    "unlisted peer": (lambda p: shutil.copy(p / "peers/desk.json", p / "peers/ghost.json"),
                      "peers/ghost.json: not listed"),
    "deleted peer": (lambda p: (p / "peers/desk.json").unlink(), "peers/desk.json: listed in state.json but missing"),
    "state signature removed": (lambda p: (p / "state.json.sig").unlink(), "state.json.sig: signature file is missing"),
    "root edited": (lambda p: (p / "root/1.root.json").write_text((p / "root/1.root.json").read_text()
                                                                   .replace('"acme"', '"evil"')),
                    "root/1.root.json: fingerprint"),
}


def _own_change(command: str, tamper: str) -> bool:
    """`admin sign` signs the policy on disk, with --update-pins also the README and CI files: those
    edits are its own change (shown, and checked after signing), not tampering."""
    return (command in ("sign", "sign --update-pins") and tamper == "policy edit"
            or command == "sign --update-pins" and tamper in ("README edit", "workflow edit", "new workflow"))


@pytest.mark.parametrize(("command", "tamper"), [(c, t) for c in COMMANDS for t in TAMPERING
                                                  if not _own_change(c, t)])
def test_no_signing_command_signs_a_tampered_checkout(adm: Admin, command: str, tamper: str) -> None:
    change, expected = TAMPERING[tamper]
    change(adm.mesh.path)
    before, memory = files_of(adm.mesh.path), adm.memory()
    build, kw = COMMANDS[command]
    with pytest.raises(VerificationError) as err:
        adm.run(build, **kw)
    assert expected in err.value.message, err.value.message
    assert files_of(adm.mesh.path) == before  # nothing written
    assert adm.memory() == memory


def test_the_refusal_names_the_unsigned_fields(adm: Admin) -> None:
    tag_ops(adm.mesh.path)
    with pytest.raises(VerificationError) as err:
        adm.run(COMMANDS["renew"][0])
    assert err.value.message == ("state.json.sig: no valid signature by an admin key of root version 1; "
                                 "unsigned change to peers.laptop.tags")
    attacker_record(adm.mesh.path)
    with pytest.raises(VerificationError, match="unsigned change to peers.laptop.record_sha256, peers.laptop.tags$"):
        adm.run(COMMANDS["revoke"][0])


def test_every_problem_is_named_on_its_own_line(adm: Admin) -> None:
    record_only(adm.mesh.path)
    (adm.mesh.path / "README.md").write_text("evil\n")
    (adm.mesh.path / "policy.hujson").write_text("{}\n")
    with pytest.raises(VerificationError) as err:
        adm.run(COMMANDS["renew"][0])
    lines = err.value.message.splitlines()
    assert [line.split(":")[0] for line in lines] == ["peers/laptop.json", "policy.hujson", "README.md"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_byte_changed_in_a_covered_file_is_refused(adm: Admin, data: st.DataObject) -> None:
    """The general rule, not a list: flip any byte of any file a signature or pin covers."""
    path = adm.mesh.path
    covered = sorted(p for p in files_of(path) if not p.startswith("requests/"))
    rel = data.draw(st.sampled_from(covered))
    original = (path / rel).read_bytes()
    at = data.draw(st.integers(0, len(original) - 1))
    flipped = bytearray(original)
    flipped[at] ^= data.draw(st.integers(1, 255))
    (path / rel).write_bytes(bytes(flipped))
    try:
        before = files_of(path)
        command = data.draw(st.sampled_from(["renew", "revoke", "relay add", "approve"]))
        build, kw = COMMANDS[command]
        with pytest.raises(MeshctlError):  # VerificationError, or a parse error naming the file
            adm.run(build, **kw)
        assert files_of(path) == before
    finally:
        (path / rel).write_bytes(original)


def test_rollback_and_equivocation_from_the_admins_memory(adm: Admin) -> None:
    path = adm.mesh.path
    old = {f: (path / f).read_bytes() for f in ("state.json", "state.json.sig")}
    adm.run(COMMANDS["renew"][0])  # serial 5, remembered
    for f, data in old.items():
        (path / f).write_bytes(data)  # the host serves the older signed state again
    with pytest.raises(VerificationError, match=r"^state.json: serial 4 is lower than the accepted serial 5 "
                                                r"\(rollback refused\)$"):
        adm.run(COMMANDS["renew"][0])
    # Without this admin's memory, the same checkout would have been signed on.
    admin.run_change(path, adm.mesh.admin_keys, NOW, COMMANDS["renew"][0])


def test_the_root_is_pinned_by_the_admins_memory(adm: Admin, tmp_path: Path) -> None:
    other = make_mesh(tmp_path / "other")
    for f in ("root/1.root.json", "root/1.root.json.sig"):
        shutil.copy(other.path / f, adm.mesh.path / f)
    with pytest.raises(MeshctlError):
        adm.run(COMMANDS["renew"][0])


def test_an_expired_root_is_refused_by_admins_and_nodes(tmp_path: Path) -> None:
    mesh = make_mesh(tmp_path / "coord")
    expires = mesh.checkout.root.expires
    with pytest.raises(VerificationError, match=r"^root/1.root.json: expired at "):
        admin.renew(mesh.checkout, mesh.admin_keys, expires + 1)
    with pytest.raises(VerificationError, match=r"^root/1.root.json: expired at "):
        mesh.verify(now=expires + 1)


def test_a_new_state_never_outlives_its_root(tmp_path: Path) -> None:
    mesh = make_mesh(tmp_path / "coord")
    expires = mesh.checkout.root.expires
    result, _ = admin.run_change(mesh.path, mesh.admin_keys, expires - 100, COMMANDS["renew"][0])
    assert result.state.expires == expires
    assert any("rotate the root" in w for w in result.warnings)


def test_dry_run_writes_nothing(adm: Admin) -> None:
    before, memory = files_of(adm.mesh.path), adm.memory()
    for command, (build, kw) in COMMANDS.items():
        result, commit = admin.run_change(adm.mesh.path, adm.mesh.admin_keys, NOW, build, trust=adm.trust,
                                          write=False, **kw)  # type: ignore[arg-type]
        assert commit is None and result.diff, command
    assert files_of(adm.mesh.path) == before
    assert adm.memory() == memory


def test_each_command_shows_what_the_new_state_changes(adm: Admin) -> None:
    serial = adm.mesh.checkout.state.serial
    result = adm.run(lambda s: changes.approve(s.baseline, "newbie", s.now, ip="100.64.0.9", tags=["tag:dev"],
                                               owner="bob@example.com"))
    fp = adm.mesh.devices["newbie"].identity.public().key_id()
    assert result.diff[1:] == (
        f"+ member newbie: 100.64.0.9 {result.state.peers['newbie'].addresses[1]}, key {fp}, tags tag:dev, "
        "owner bob@example.com",)
    assert result.diff[0].startswith(f"serial {serial} -> {serial + 1}, expires ")
    assert result.change.summary[1] == f"key fingerprint {fp} (requests/newbie.json)"
    result = adm.run(lambda s: changes.revoke(s.baseline, "newbie", s.now))
    assert result.diff[1:] == (
        f"- member newbie: 100.64.0.9 {result.baseline.state.peers['newbie'].addresses[1]}, key {fp}, tags tag:dev, "
        "owner bob@example.com",
        f"+ revoked keys of newbie (key {fp}, revoked {records.format_time(NOW)})")
    result = adm.run(lambda s: relays_admin.remove_change(s.baseline, "home"))
    assert result.diff[1:] == (f"- relay home: 198.51.100.7:3340, {RELAY_KEY}",)
    policy = (adm.mesh.path / "policy.hujson").read_text()
    at = policy.splitlines().index(next(line for line in policy.splitlines() if '"acls": [' in line)) + 1
    (adm.mesh.path / "policy.hujson").write_text(policy.replace('"acls": [', '"acls": [\n    // a new line', 1))
    build, kw = COMMANDS["sign"]
    result = adm.run(build, **kw)
    assert result.diff[1:] == ("~ policy.hujson:", f"    @@ -{at},0 +{at + 1} @@", "    +    // a new line")


def test_other_commands_keep_the_signed_policy_and_pins(adm: Admin) -> None:
    """The new state's hashes come from the verified state, never from the files on disk."""
    before = adm.mesh.checkout.state
    result = adm.run(COMMANDS["renew"][0])
    assert result.state.policy_sha256 == before.policy_sha256 and result.state.pinned == before.pinned
    assert result.diff[1:] == ()


def test_sign_refuses_a_policy_that_does_not_parse_or_fails_its_tests(adm: Admin) -> None:
    path = adm.mesh.path
    for text, expected in (('{"acls": [', "policy.hujson:"),
                           ('{"hosts": {"lan": "100.64.0.0/10"}, "acls": [], '
                            '"tests": [{"src": "100.64.0.1", "accept": ["lan:22"]}]}\n', "should be accepted")):
        (path / "policy.hujson").write_text(text)
        before, memory = files_of(path), adm.memory()
        with pytest.raises(UsageError) as err:
            adm.run(COMMANDS["sign"][0], inputs=changes.sign_inputs(False), policy_check=check_policy)
        assert expected in err.value.message
        assert files_of(path) == before and adm.memory() == memory


def test_a_revoked_key_does_not_come_back_unnoticed(adm: Admin) -> None:
    keys = adm.mesh.devices["desk"]
    adm.run(COMMANDS["revoke"][0])
    adm.mesh.request("desk2", keys)
    approve = changes.approve
    with pytest.raises(VerificationError, match=r"^requests/desk2.json: identity and WireGuard and disco key of desk, "
                                                r"revoked "):
        adm.run(lambda s: approve(s.baseline, "desk2", s.now))
    result = adm.run(lambda s: approve(s.baseline, "desk2", s.now, allow_revoked_key=True))
    assert not [r for r in result.state.revoked if r.name == "desk"]
    assert any(line.startswith("- no longer revoked: keys of desk") for line in result.diff)


def test_a_revoked_devices_addresses_rest_for_thirty_days(adm: Admin) -> None:
    desk = adm.mesh.checkout.state.peers["desk"].addresses
    adm.run(COMMANDS["revoke"][0])
    result = adm.run(lambda s: changes.approve(s.baseline, "newbie", s.now))
    assert result.state.peers["newbie"].addresses[0] != desk[0]
    adm.run(lambda s: changes.revoke(s.baseline, "newbie", s.now))
    adm.mesh.request("again")
    later = NOW + changes.QUARANTINE_S + 1
    result = adm.run(lambda s: changes.approve(s.baseline, "again", s.now), now=later)
    assert result.state.peers["again"].addresses[0] == desk[0]  # the quarantine is over


def test_a_quarantined_address_only_when_named(adm: Admin) -> None:
    desk = adm.mesh.checkout.state.peers["desk"].addresses[0]
    adm.run(COMMANDS["revoke"][0])
    result = adm.run(lambda s: changes.approve(s.baseline, "newbie", s.now, ip=str(desk)))
    assert result.state.peers["newbie"].addresses[0] == desk
    assert any("quarantined until" in w for w in result.warnings)


def test_expect_key_refuses_another_key(adm: Admin) -> None:
    fp = adm.mesh.devices["newbie"].identity.public().key_id()
    with pytest.raises(VerificationError, match=f"^requests/newbie.json: key fingerprint {fp} does not match "):
        adm.run(lambda s: changes.approve(s.baseline, "newbie", s.now, expect_key="0123-4567-89ab-cdef"))
    with pytest.raises(UsageError, match="expected the 16-digit key fingerprint"):
        adm.run(lambda s: changes.approve(s.baseline, "newbie", s.now, expect_key="nope"))
    spaced = ":".join(fp[i:i + 4].upper() for i in range(0, 16, 4))
    adm.run(lambda s: changes.approve(s.baseline, "newbie", s.now, expect_key=spaced))


def test_cosign_shows_the_change_since_the_last_state_this_admin_accepted(tmp_path: Path) -> None:
    mesh = make_mesh(tmp_path / "coord", n_admins=2, threshold=2)
    alice, bob = (Admin(Mesh(mesh.path, [k], mesh.devices), AdminTrust(tmp_path / f"trust-{i}"))
                  for i, k in enumerate(mesh.admin_keys))
    bob.run(*COMMANDS["sign --cosign"][:1], cosign=True)  # remembers the initial state
    mesh.request("laptop")
    alice.run(lambda s: changes.approve(s.baseline, "laptop", s.now, tags=["tag:dev"]))
    # bob cannot build on a state only alice signed: he co-signs it first, and sees what it changes.
    with pytest.raises(VerificationError, match="signed by 1 admin keys, threshold is 2"):
        bob.run(COMMANDS["renew"][0])
    result = bob.run(COMMANDS["sign --cosign"][0], cosign=True)
    assert (result.signatures, result.threshold) == (2, 2)
    assert [line for line in result.diff if line.startswith("+ member laptop:")]
    assert [p.name for p in mesh.verify().netmap.peers] == ["laptop"]


def test_cosign_needs_an_admins_signature_to_add_to(tmp_path: Path) -> None:
    mesh = make_mesh(tmp_path / "coord", n_admins=2, threshold=2)
    tag = json.loads((mesh.path / "state.json").read_text())
    tag["stun"] = ["evil.example:3478"]
    (mesh.path / "state.json").write_text(json.dumps(tag))
    with pytest.raises(VerificationError, match="^state.json.sig: no valid signature"):
        admin.cosign(mesh.checkout, mesh.admin_keys[1:], NOW)


def test_junk_signature_entries_are_not_signed_along(tmp_path: Path) -> None:
    mesh = make_mesh(tmp_path / "coord", n_admins=2, threshold=2)
    mesh.request("laptop")
    admin.approve(mesh.checkout, "laptop", mesh.admin_keys[:1], NOW)
    sig = mesh.path / "state.json.sig"
    clean = sig.read_bytes()
    doc = json.loads(clean)
    doc["signatures"].append({"keyid": "f" * 16, "sig": "A" * 86 + "=="})
    sig.write_text(json.dumps(doc))
    with pytest.raises(VerificationError, match="^state.json.sig: entry 'ffffffffffffffff' is not a valid signature"):
        admin.cosign(mesh.checkout, mesh.admin_keys[1:], NOW)
    sig.write_bytes(clean)
    admin.cosign(mesh.checkout, mesh.admin_keys[1:], NOW)
    assert {s.keyid for s in signing.parse_signatures(sig.read_bytes(), name="x")} == {
        k.public().key_id() for k in mesh.admin_keys}


def test_junk_entries_in_a_request_signature_stay_in_requests(adm: Admin) -> None:
    sig = adm.mesh.path / "requests/newbie.json.sig"
    doc = json.loads(sig.read_text())
    doc["signatures"].append({"keyid": "f" * 16, "sig": "A" * 86 + "=="})
    sig.write_text(json.dumps(doc))
    adm.run(COMMANDS["approve"][0])
    written = signing.parse_signatures((adm.mesh.path / "peers/newbie.json.sig").read_bytes(), name="x")
    assert [s.keyid for s in written] == [adm.mesh.devices["newbie"].identity.public().key_id()]


# --- the checkout's commit ----------------------------------------------------------------------


def _commit_tree(repo: pygit2.Repository, entries: dict[str, tuple[pygit2.Oid, int]]) -> None:
    index = pygit2.Index()
    index.read_tree(repo.head.peel(pygit2.Tree))
    for path, (oid, mode) in entries.items():
        index.add(pygit2.IndexEntry(path, oid, mode))
    tree = index.write_tree(repo)
    sig = pygit2.Signature("host", "h@example.com")
    repo.create_commit("HEAD", sig, sig, "host", tree, [repo.head.target])


@pytest.mark.parametrize(("mode", "expected"), [
    (pygit2.enums.FileMode.COMMIT, "requests/zz.json: submodules are not allowed"),
    (pygit2.enums.FileMode.LINK, "requests/zz.json: symbolic links are not allowed"),
    (pygit2.enums.FileMode.BLOB_EXECUTABLE, "requests/zz.json: executable files are not allowed"),
])
def test_a_head_commit_with_a_mode_nodes_refuse_is_not_signed_on(adm: Admin, mode: int, expected: str) -> None:
    """A gitlink shows as an empty directory on disk: the commit itself is checked, as nodes check it."""
    repo = pygit2.Repository(str(adm.mesh.path))
    oid = repo.head.target if mode == pygit2.enums.FileMode.COMMIT else repo.create_blob(b"{}")
    _commit_tree(repo, {"requests/zz.json": (oid, mode)})
    repo.checkout_head(strategy=pygit2.enums.CheckoutStrategy.FORCE)
    for command, (build, kw) in COMMANDS.items():
        with pytest.raises(VerificationError) as err:
            adm.run(build, **kw)
        assert err.value.message.startswith(expected + " (in commit "), command


def test_the_commit_holds_exactly_what_was_verified(adm: Admin) -> None:
    path = adm.mesh.path
    repo = pygit2.Repository(str(path))
    (path / "policy.hujson").write_text("{}\n")  # staged, unsigned: not committed by a renew...
    repo.index.add("policy.hujson")
    repo.index.write()
    (path / "policy.hujson").write_bytes(repo[repo.head.peel(pygit2.Tree)["policy.hujson"].id].data)
    build, kw = COMMANDS["renew"]
    result, commit = admin.run_change(path, adm.mesh.admin_keys, NOW, build, trust=adm.trust, commit=True)
    assert commit is not None
    tree = repo[pygit2.Oid(hex=commit)].peel(pygit2.Tree)
    assert tree["policy.hujson"].data == (path / "policy.hujson").read_bytes() != b"{}\n"
    assert tree["state.json"].data == result.after.state_bytes
    assert "requests" in tree and "newbie.json" in tree["requests"]  # pending requests carried over
    # and a node accepts the commit
    from meshctl.coord.repo import GitSnapshot

    verify.verify_snapshot(GitSnapshot(repo, commit), adm.mesh.fingerprint, NOW)


def test_library_helpers_still_build_meshes(tmp_path: Path) -> None:
    mesh = make_mesh(tmp_path / "coord")
    for name in ("a", "b", "c"):
        mesh.add(name)
    assert sorted(mesh.verify().state.peers) == ["a", "b", "c"]
    assert FsSnapshot(mesh.path).files()



def test_update_pins_signs_edited_and_removed_files_and_shows_them(adm: Admin) -> None:
    path = adm.mesh.path
    (path / "README.md").write_text("# our mesh\n")
    (path / ".gitlab-ci.yml").unlink()
    build, kw = COMMANDS["sign --update-pins"]
    result = adm.run(build, **kw)
    assert "- pinned .gitlab-ci.yml" in result.diff
    assert [line for line in result.diff if line.startswith("~ pinned README.md: sha256 ")]
    assert ".gitlab-ci.yml" not in result.state.pinned
    adm.run(COMMANDS["renew"][0])  # and what it pinned verifies for the next command
