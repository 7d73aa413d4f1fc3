"""`meshctl rotate-keys` against a real git host (`git daemon` on loopback): the new keys are
announced in the device's signed endpoint record before they are used, nodes and relays take
them on their next fetch with no admin step, a failed push changes nothing in force, and what
the host may do with the record (roll it back, swap keys in) does not move a node."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pygit2
import pytest
from delegation_helpers import plant_branch
from enroll_host import Host, Node, served_mesh

from meshctl.coord import changes
from meshctl.coord.node_state import NodeConfig, NodeState
from meshctl.coord.rotate import rotate_keys
from meshctl.errors import MeshctlError, UsageError
from meshctl.identity import NEXT_SUFFIX, WIREGUARD_FILE, load_device_keys, write_private_key
from meshctl.keys import DiscoPrivate, NodePrivate, SigningKey
from meshctl.relay.sync import sync_once

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git (Debian package git)")


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    with served_mesh(tmp_path) as served:
        yield served


def device_of(host: Host, name: str, tmp_path: Path) -> Path:
    """A member's state directory as `join` leaves it: node.json and its key files."""
    state = tmp_path / f"dev-{name}"
    keys = host.mesh.devices[name]
    for file, key in (("identity.key", keys.identity), (WIREGUARD_FILE, keys.wireguard), ("disco.key", keys.disco)):
        write_private_key(state / "keys" / file, key)
    node = NodeState(state)
    node.save_config(NodeConfig(name, host.url, "main", host.mesh.fingerprint, host.mesh.checkout.root.network_id))
    node.save_netmap(host.mesh.verify().netmap.with_self(name))
    return state


def rotate(state: Path) -> object:
    return rotate_keys(state, state / "repo.git", state / "keys", int(time.time()))


def test_peers_and_relays_take_the_new_keys_on_their_next_fetch(host: Host, tmp_path: Path) -> None:
    host.mesh.add("desk")
    host.mesh.commit("desk")
    subprocess.run(["git", "-C", str(host.mesh.path), "push", "-q", "-f", str(host.bare), "HEAD:main"], check=True)
    laptop = device_of(host, "laptop", tmp_path)
    old = load_device_keys(laptop / "keys")
    desk = Node(tmp_path / "desk", host.url, "desk")
    assert desk.fetch(host.mesh)[1].peer("laptop").wg_public_key == old.wireguard.public()  # type: ignore[union-attr]
    done = rotate(laptop)
    new = load_device_keys(laptop / "keys")
    assert new.wireguard.public() != old.wireguard.public() and new.identity == old.identity
    assert done.new_wireguard == new.wireguard.public()  # type: ignore[attr-defined]
    assert not list((laptop / "keys").glob("*" + NEXT_SUFFIX))
    assert ((laptop / "keys" / WIREGUARD_FILE).stat().st_mode & 0o777) == 0o600
    _view, netmap = desk.fetch(host.mesh)
    peer = netmap.peer("laptop")
    assert peer is not None and peer.wg_public_key == new.wireguard.public() and peer.disco_key == new.disco.public()
    assert peer.addresses == host.mesh.verify().netmap.peer("laptop").addresses  # type: ignore[union-attr]
    relay = sync_once(tmp_path / "relay", host.url, host.mesh.fingerprint, int(time.time()))
    assert relay.peer("laptop").wg_public_key == new.wireguard.public()  # type: ignore[union-attr]
    assert not (host.mesh.path / "peers" / "laptop.json").read_bytes().count(new.wireguard.public().b64().encode())


def test_a_failed_push_changes_nothing_and_a_retry_announces_the_same_keys(host: Host, tmp_path: Path) -> None:
    laptop = device_of(host, "laptop", tmp_path)
    old = load_device_keys(laptop / "keys")
    node = NodeState(laptop)
    cfg = node.load_config()
    node.save_config(NodeConfig(cfg.name, "git://127.0.0.1:1/coord.git", cfg.branch, cfg.root_fingerprint,
                                cfg.network_id))
    with pytest.raises(MeshctlError, match="keys not rotated: endpoints/laptop not published"):
        rotate(laptop)
    assert load_device_keys(laptop / "keys").wireguard == old.wireguard  # still in force
    pending = (laptop / "keys" / (WIREGUARD_FILE + NEXT_SUFFIX)).read_bytes()
    node.save_config(cfg)
    rotate(laptop)
    assert (laptop / "keys" / WIREGUARD_FILE).read_bytes() == pending  # the keys the first try may have announced


def test_a_device_that_is_no_member_has_nothing_to_rotate(host: Host, tmp_path: Path) -> None:
    laptop = device_of(host, "laptop", tmp_path)
    NodeState(laptop).save_netmap(host.mesh.verify().netmap.replace(peers=()))
    with pytest.raises(UsageError, match="is not a member of the mesh"):
        rotate(laptop)


def test_an_enrolled_device_rotates_too_and_keeps_its_enrollment_on_the_branch(host: Host, tmp_path: Path) -> None:
    secret = SigningKey.generate()
    host.sign(lambda s: changes.authkey_create(s.baseline, secret.public(), s.now, ("tag:server",), True))
    web = host.enroll("web", secret)
    old = load_device_keys(web / "keys")
    rotate(web)
    repo = pygit2.Repository(str(host.bare))
    tree = repo.revparse_single("endpoints/web").peel(pygit2.Tree)
    assert {e.name for e in tree} >= {"enrollment.json", "peer.json", "endpoint.json"}
    _view, netmap = Node(tmp_path / "desk", host.url, "laptop").fetch(host.mesh)
    peer = netmap.peer("web")
    assert peer is not None and peer.wg_public_key != old.wireguard.public()
    assert peer.wg_public_key == load_device_keys(web / "keys").wireguard.public()


def test_a_rolled_back_or_forged_record_does_not_move_the_keys_back(host: Host, tmp_path: Path) -> None:
    laptop = device_of(host, "laptop", tmp_path)
    desk = Node(tmp_path / "desk", host.url, "desk")
    rotate(laptop)
    first = host.branch("laptop")
    rotate(laptop)
    now_keys = load_device_keys(laptop / "keys")
    assert desk.fetch(host.mesh)[1].peer("laptop").wg_public_key == now_keys.wireguard.public()  # type: ignore[union-attr]
    host.set_branch("laptop", first)  # the host serves the first rotation's record again
    view, netmap = desk.fetch(host.mesh)
    assert netmap.peer("laptop").wg_public_key == now_keys.wireguard.public()  # type: ignore[union-attr]
    assert "rolled back" in view.refused["laptop"]
    repo = pygit2.Repository(str(host.bare))
    files = {e.name: repo[e.id].data for e in repo.revparse_single("endpoints/laptop").peel(pygit2.Tree)}
    doc = json.loads(files["endpoint.json"])
    doc["wg_public_key"] = NodePrivate.generate().public().b64()  # the host's own key, unsigned
    doc["disco_key"] = DiscoPrivate.generate().public().b64()
    doc["counter"] += 10
    plant_branch(str(host.bare), "endpoints/laptop", {**files, "endpoint.json": json.dumps(doc).encode()})
    view, netmap = desk.fetch(host.mesh)
    assert netmap.peer("laptop").wg_public_key == now_keys.wireguard.public()  # type: ignore[union-attr]
    assert "not signed by laptop's identity key" in view.refused["laptop"]
