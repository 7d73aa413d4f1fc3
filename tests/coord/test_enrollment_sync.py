"""Enrollment through a real git host (`git daemon` on loopback): `join --auth-key` publishes the
device's record and enrollment on its own branch, and the next fetch of any node or relay accepts
it with no admin step; what the host can do to those branches (withhold, swap, replay) changes
nothing a node accepted, and a key the admins remove drops the devices it added.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pygit2
import pytest
from delegation_helpers import plant_branch
from enroll_host import Host, Node, served_mesh

from meshctl.coord import changes, enrollment
from meshctl.errors import UsageError
from meshctl.keys import SigningKey
from meshctl.relay.sync import sync_once

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git (Debian package git)")


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    with served_mesh(tmp_path) as served:
        yield served


def test_an_enrolled_server_is_a_member_on_the_next_fetch_of_nodes_and_relays(host: Host, tmp_path: Path) -> None:
    key = host.new_key(("tag:server", "tag:web"))
    laptop = Node(tmp_path / "laptop", host.url, "laptop")
    _view, before = laptop.fetch(host.mesh)
    assert before.peer("web-1") is None
    host.enroll("web-1", key)
    view, netmap = laptop.fetch(host.mesh)
    web = netmap.peer("web-1")
    assert web is not None and web.tags == ("tag:server", "tag:web") and web.enrolled_with == key.public().key_id()
    assert view.records["web-1"].wg_public_key == web.wg_public_key  # its endpoint record is used too
    relay = sync_once(tmp_path / "relay", host.url, host.mesh.fingerprint, int(time.time()))
    assert relay.peer("web-1") == web
    _own, own_map = Node(host.tmp / "dev-web-1", host.url, "web-1").fetch(host.mesh)
    assert own_map.self_peer is not None and own_map.self_peer.addresses == web.addresses


def test_join_refuses_made_up_expired_and_revoked_keys_and_publishes_nothing(host: Host) -> None:
    with pytest.raises(UsageError, match="is not in the mesh's signed state: made up"):
        host.enroll("made-up", SigningKey.generate())
    short = SigningKey.generate()
    host.sign(lambda s: changes.authkey_create(s.baseline, short.public(), s.now, expires_in=1))
    time.sleep(1.1)
    with pytest.raises(UsageError, match="expired at"):
        host.enroll("late", short)
    revoked = host.new_key()
    host.sign(lambda s: changes.authkey_revoke(s.baseline, revoked.public().key_id()))
    with pytest.raises(UsageError, match="made up, revoked"):
        host.enroll("gone", revoked)
    with pytest.raises(UsageError, match="--tag tag:db: outside auth key"):
        host.enroll("db", host.new_key(), tags=("tag:db",))
    refs = list(pygit2.Repository(str(host.bare)).references)
    assert not [r for r in refs if r.startswith("refs/heads/endpoints/")], refs


def test_a_withheld_branch_drops_nobody_and_a_swapped_one_swaps_nobody(host: Host, tmp_path: Path) -> None:
    key = host.new_key(reusable=True)
    host.enroll("web-1", key)
    laptop = Node(tmp_path / "laptop", host.url, "laptop")
    _, first = laptop.fetch(host.mesh)
    original = first.peer("web-1")
    assert original is not None
    mine = host.branch("web-1")
    host.set_branch("web-1", None)  # withheld
    _, netmap = laptop.fetch(host.mesh)
    assert netmap.peer("web-1") == original
    host.enroll("intruder", key)  # a valid enrollment of another device...
    host.set_branch("web-1", host.branch("intruder"))  # ...served as web-1's
    host.set_branch("intruder", None)
    view, netmap = laptop.fetch(host.mesh)
    assert netmap.peer("web-1") == original and netmap.peer("intruder") is None
    assert "names 'intruder', but it is on endpoints/web-1" in view.enroll_refused["web-1"]
    host.set_branch("web-1", mine)
    assert laptop.fetch(host.mesh)[1].peer("web-1") == original


def test_a_forged_enrollment_is_refused(host: Host, tmp_path: Path) -> None:
    key = host.new_key()
    host.enroll("web-1", key)
    repo = pygit2.Repository(str(host.bare))
    tip = repo[pygit2.Oid(hex=host.branch("web-1"))].peel(pygit2.Commit)
    files = {e.name: repo[e.id].data for e in tip.tree}
    doc = json.loads(files[enrollment.ENROLLMENT_FILE])
    doc["tags"] = ["tag:server"]  # within the key's scope even: any byte changed is refused
    files[enrollment.ENROLLMENT_FILE] = json.dumps(doc).encode()
    plant_branch(str(host.bare), "endpoints/web-1", files)
    view, netmap = Node(tmp_path / "laptop", host.url, "laptop").fetch(host.mesh)
    assert netmap.peer("web-1") is None
    assert "not signed by auth key" in view.enroll_refused["web-1"]


def test_revoking_the_key_drops_the_devices_it_added(host: Host, tmp_path: Path) -> None:
    key = host.new_key(reusable=True)
    host.enroll("web-1", key)
    laptop = Node(tmp_path / "laptop", host.url, "laptop")
    assert laptop.fetch(host.mesh)[1].peer("web-1") is not None
    host.sign(lambda s: changes.authkey_revoke(s.baseline, key.public().key_id()))  # no origin here: nothing absorbed
    view, netmap = laptop.fetch(host.mesh)
    assert netmap.peer("web-1") is None
    assert "is not in the signed state (made up, or revoked)" in view.enroll_refused["web-1"]


def test_join_never_races_a_single_use_key_already_used(host: Host) -> None:
    key = host.new_key()
    host.enroll("web-1", key)
    with pytest.raises(UsageError, match="single-use auth key .* was used by web-1 already"):
        host.enroll("web-2", key)
    assert "refs/heads/endpoints/web-2" not in list(pygit2.Repository(str(host.bare)).references)


def test_a_rerun_publishes_the_same_enrollment_again(host: Host) -> None:
    key = host.new_key()
    state = host.enroll("web-1", key)
    first = host.branch("web-1")
    repo = pygit2.Repository(str(host.bare))
    before = repo.revparse_single("endpoints/web-1").peel(pygit2.Tree)["enrollment.json"].id
    assert host.enroll("web-1", key) == state  # e.g. cloud-init running runcmd again after a reboot
    after = repo.revparse_single("endpoints/web-1").peel(pygit2.Tree)["enrollment.json"].id
    assert after == before and host.branch("web-1") != first  # one more publish, the same enrollment


def test_once_absorbed_the_device_stops_publishing_its_enrollment(host: Host) -> None:
    from meshctl.coord.node_state import NodeState
    from meshctl.coord.update import fetch_and_verify

    web = host.enroll("web-1", host.new_key())
    pygit2.Repository(str(host.mesh.path)).remotes.create("origin", str(host.bare))
    host.sign(lambda s: changes.renew(s.baseline))  # the next signing command absorbs it
    assert "web-1" in host.mesh.checkout.state.peers
    assert NodeState(web).load_own_enrollment("web-1") is not None
    result = fetch_and_verify(web, web / "repo.git", int(time.time()), endpoints=True)
    assert result.netmap is not None and result.netmap.self_peer is not None  # a member of the signed state
    assert NodeState(web).load_own_enrollment("web-1") is None
