"""fetch_and_verify when the tip is the commit accepted last: nothing is rebuilt, yet every trust
rule that can still apply does (expiry, rewritten history), and a damaged cache is rebuilt."""

from __future__ import annotations

import json
from pathlib import Path

import pygit2
import pytest
from mesh_builder import NOW, Mesh

from meshctl.coord import admin
from meshctl.coord.node_state import NodeConfig, NodeState
from meshctl.coord.update import fetch_and_verify
from meshctl.errors import VerificationError


@pytest.fixture
def node(mesh: Mesh, tmp_path: Path) -> Path:
    mesh.add("laptop")
    mesh.commit("approve laptop")
    state_dir = tmp_path / "state"
    NodeState(state_dir).save_config(NodeConfig("laptop", str(mesh.path), "main", mesh.fingerprint,
                                                mesh.checkout.root.network_id))
    return state_dir


def sync(state_dir: Path, now: int = NOW, force: bool = False):  # type: ignore[no-untyped-def]
    return fetch_and_verify(state_dir, state_dir / "repo.git", now, force=force)


def test_second_fetch_of_the_same_tip_rebuilds_nothing(node: Path) -> None:
    first = sync(node)
    assert first.changed and first.netmap is not None
    assert first.memory.expires == first.netmap.expires
    second = sync(node, NOW + 60)
    assert not second.changed and second.netmap is None
    assert second.memory == first.memory
    assert NodeState(node).fetched_at() == NOW + 60  # freshness still recorded


def test_expired_state_is_reported_on_a_no_op(node: Path) -> None:
    expires = sync(node).memory.expires
    assert expires is not None
    with pytest.raises(VerificationError, match="state.json: expired at"):
        sync(node, expires)


def test_rewritten_history_is_refused_on_an_unchanged_tree(mesh: Mesh, node: Path) -> None:
    sync(node)
    repo = pygit2.Repository(str(mesh.path))
    head = repo[repo.head.target]
    sig = pygit2.Signature("t", "t@example.com")
    # Same tree, other history: a force-push that changes no file is still refused.
    rewritten = repo.create_commit(None, sig, sig, "rewritten", head.tree.id, [])
    repo.references.create("refs/heads/main", rewritten, force=True)
    with pytest.raises(VerificationError, match="history was rewritten"):
        sync(node)


def test_new_state_after_a_no_op_is_verified(mesh: Mesh, node: Path) -> None:
    sync(node)
    sync(node)
    mesh.add("phone")
    mesh.commit("approve phone")
    third = sync(node)
    assert third.changed and third.netmap is not None
    assert {p.name for p in third.netmap.peers} == {"laptop", "phone"}


def test_trust_file_without_expiry_is_verified_once_more(node: Path) -> None:
    sync(node)
    trust = NodeState(node).trust_path
    doc = json.loads(trust.read_text())
    del doc["expires"]  # as written by an older meshctl
    trust.write_text(json.dumps(doc))
    again = sync(node)
    assert again.netmap is not None and not again.changed
    assert sync(node).netmap is None  # and from then on, the no-op path


def test_force_re_verifies_the_accepted_tip(mesh: Mesh, node: Path) -> None:
    sync(node)
    co = mesh.checkout
    admin.write_state(co, co.state, mesh.admin_keys, NOW)  # same serial, other bytes: not committed
    forced = sync(node, force=True)
    assert forced.netmap is not None and not forced.changed
