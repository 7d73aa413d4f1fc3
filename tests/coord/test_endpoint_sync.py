"""Endpoint records through a real git host (`git daemon` on loopback): one fetch for main and
every device branch, a publish as one force-pushed parentless commit, a refused push
remembered as "no push rights", and what a host with write access plants being ignored.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pygit2
import pytest
from git_servers import bare_copy, git_daemon
from mesh_builder import Mesh, make_mesh

from meshctl.coord import endpoint_publish, signing
from meshctl.coord import repo as gitrepo
from meshctl.coord.endpoint_publish import PublishRequest, build_record
from meshctl.coord.endpoint_sync import publish_if_due, read_endpoints
from meshctl.coord.endpoint_verify import EndpointView
from meshctl.coord.node_state import NodeState
from meshctl.errors import GitError
from meshctl.identity import DeviceKeys
from meshctl.keys import SigningKey

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git (Debian package git)")

SIG = pygit2.Signature("host", "host@example.com")
CANDIDATES = ("203.0.113.7:51820", "10.0.0.2:51820")


@dataclass
class Host:
    mesh: Mesh
    bare: Path
    url: str
    log: Path

    def requests(self) -> list[str]:
        """One line per request the daemon served (upload-pack = fetch, receive-pack = push)."""
        return [ln for ln in self.log.read_text().splitlines() if "Request " in ln]

    def plant(self, name: str, files: dict[str, bytes], mode: int = pygit2.enums.FileMode.BLOB) -> None:
        """What a git host with write access can do: put anything on a device's branch."""
        repo = pygit2.Repository(str(self.bare))
        builder = repo.TreeBuilder()
        for path, data in files.items():
            builder.insert(path, repo.create_blob(data), mode)
        commit = repo.create_commit(None, SIG, SIG, "planted", builder.write(), [])
        repo.references.create(f"refs/heads/endpoints/{name}", commit, force=True)

    def branch_commits(self, name: str) -> int:
        repo = pygit2.Repository(str(self.bare))
        return sum(1 for _ in repo.walk(repo.references[f"refs/heads/endpoints/{name}"].target))


@dataclass
class Node:
    """A node's state directory and its own bare clone."""

    dir: Path
    url: str
    name: str
    keys: DeviceKeys

    @property
    def state(self) -> NodeState:
        return NodeState(self.dir)

    @property
    def repo_dir(self) -> Path:
        return self.dir / "repo.git"

    def fetch_and_read(self, mesh: Mesh) -> EndpointView:
        verified = mesh.verify()
        with gitrepo.opened(self.repo_dir, self.url) as repo:
            gitrepo.fetch(repo, "main", endpoints=True)
            return read_endpoints(repo, self.state, verified.root.network_id, verified.state_sha256,
                                  lambda: verified.netmap, self.name, int(time.time()))

    def publish(self, mesh: Mesh, candidates: tuple[str, ...] = CANDIDATES, agent: bool = True,
                looking: bool = False, now: int | None = None) -> endpoint_publish.Published:
        network_id = mesh.verify().root.network_id
        return publish_if_due(self.repo_dir, self.url, self.state, lambda: self.keys, network_id, self.name,
                              PublishRequest(candidates, agent, looking), now or int(time.time()))


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    mesh = make_mesh(tmp_path / "coord")
    for name in ("laptop", "desk"):
        mesh.add(name)
    mesh.commit("members")
    srv = tmp_path / "srv"
    srv.mkdir()
    bare = bare_copy(mesh.path, srv / "coord.git")
    log = tmp_path / "daemon.log"
    with git_daemon(srv, log=log) as prefix:
        yield Host(mesh, bare, f"{prefix}/coord.git", log)


def node(host: Host, tmp_path: Path, name: str) -> Node:
    return Node(tmp_path / f"state-{name}", host.url, name, host.mesh.devices[name])


def test_one_fetch_brings_main_and_every_device_branch(host: Host, tmp_path: Path) -> None:
    laptop, desk = node(host, tmp_path, "laptop"), node(host, tmp_path, "desk")
    laptop.publish(host.mesh)
    before = len(host.requests())
    view = desk.fetch_and_read(host.mesh)
    assert len(host.requests()) == before + 1, host.requests()[before:]
    assert "upload-pack" in host.requests()[-1]
    assert view.records["laptop"].candidates == CANDIDATES
    assert not view.refused


def test_publish_is_one_parentless_commit_however_often(host: Host, tmp_path: Path) -> None:
    laptop = node(host, tmp_path, "laptop")
    counters = []
    for i in range(3):
        pub = laptop.publish(host.mesh, candidates=(f"203.0.113.7:{51820 + i}",))
        counters.append(pub.counter)
        assert host.branch_commits("laptop") == 1
    assert counters == sorted(set(counters))  # strictly increasing
    tree = pygit2.Repository(str(host.bare)).revparse_single("endpoints/laptop").peel(pygit2.Tree)
    assert sorted(e.name for e in tree) == ["endpoint.json", "endpoint.json.sig"]
    # the previous publishes' objects do not pile up in the device's own clone
    objects = [p for p in (laptop.repo_dir / "objects").glob("??/*")]
    published = pygit2.Repository(str(laptop.repo_dir))
    assert len(objects) <= 4 + 8, objects  # the last publish (commit, tree, 2 blobs) and little else
    assert published.references[gitrepo.PUBLISH_REF].target


def test_a_fetch_after_a_publish_still_works(host: Host, tmp_path: Path) -> None:
    """A fetch leaves the device's own branch in its clone (the last publish); the next publish
    drops that publish's loose objects, so the clone's ref to its branch must move with the push,
    or the following fetch finds a ref to a missing object (seen: every later sync failed)."""
    laptop = node(host, tmp_path, "laptop")
    laptop.publish(host.mesh)
    laptop.fetch_and_read(host.mesh)  # the clone's ref to endpoints/laptop: the first publish
    laptop.publish(host.mesh, candidates=("198.51.100.4:51820",))
    clone = pygit2.Repository(str(laptop.repo_dir))
    mine = clone.references[gitrepo.ENDPOINTS_REFS + "laptop"].target
    assert mine in clone, "the clone refers to a publish whose objects it dropped"
    view = laptop.fetch_and_read(host.mesh)
    assert not view.own_replaced


def test_an_idle_device_does_not_push_and_a_change_does(host: Host, tmp_path: Path) -> None:
    laptop = node(host, tmp_path, "laptop")
    first = laptop.publish(host.mesh)
    pushes = sum("receive-pack" in r for r in host.requests())
    now = int(time.time())
    for dt in (60, 600, 3600):  # the record ages, nobody is looking for this device
        assert laptop.publish(host.mesh, now=now + dt) == first
    assert sum("receive-pack" in r for r in host.requests()) == pushes
    laptop.publish(host.mesh, looking=True, now=now + endpoint_publish.REFRESH_S)  # a peer looks: refresh
    laptop.publish(host.mesh, candidates=("198.51.100.4:51820",), now=now + endpoint_publish.REFRESH_S + 1)
    assert sum("receive-pack" in r for r in host.requests()) == pushes + 2


def test_a_refused_push_is_no_push_rights_remembered(host: Host, tmp_path: Path) -> None:
    hook = host.bare / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'endpoints/* is protected' >&2\nexit 1\n")
    hook.chmod(0o755)
    laptop = node(host, tmp_path, "laptop")
    now = int(time.time())
    pub = laptop.publish(host.mesh, now=now)
    assert pub.refused is not None and "refused" in pub.refused and pub.at is None
    assert "no push rights" in endpoint_publish.describe(pub, now)
    pushes = sum("receive-pack" in r for r in host.requests())
    assert laptop.publish(host.mesh, candidates=("198.51.100.4:1",), now=now + 60).refused == pub.refused
    assert sum("receive-pack" in r for r in host.requests()) == pushes  # not hammered
    hook.unlink()  # an admin granted the right: found within the retry interval
    later = laptop.publish(host.mesh, now=now + endpoint_publish.NO_RIGHTS_RETRY_S)
    assert later.refused is None and later.at == now + endpoint_publish.NO_RIGHTS_RETRY_S


def test_a_read_only_host_is_no_push_rights(host: Host, tmp_path: Path) -> None:
    with git_daemon(host.bare.parent, receive_pack=False) as prefix:
        laptop = Node(tmp_path / "ro", f"{prefix}/coord.git", "laptop", host.mesh.devices["laptop"])
        pub = laptop.publish(host.mesh)
    assert pub.refused is not None


def test_an_unreachable_host_is_not_mistaken_for_no_rights(host: Host, tmp_path: Path) -> None:
    from git_servers import free_port

    laptop = Node(tmp_path / "down", f"git://127.0.0.1:{free_port()}/coord.git", "laptop",
                  host.mesh.devices["laptop"])
    pub = laptop.publish(host.mesh)
    assert pub.refused is None and pub.failed is not None and "push failed" in pub.failed
    with pytest.raises(GitError) as info:
        with gitrepo.opened(laptop.repo_dir, laptop.url) as repo:
            gitrepo.push(repo, f"+{gitrepo.PUBLISH_REF}:refs/heads/endpoints/laptop")
    assert not isinstance(info.value, gitrepo.PushRefused)


def test_a_branch_another_member_replaced_is_put_back(host: Host, tmp_path: Path) -> None:
    """Anyone with push rights can push any branch: desk overwrites laptop's (it cannot sign for
    laptop: refused by everyone), laptop sees it on its next fetch and publishes again."""
    laptop, desk = node(host, tmp_path, "laptop"), node(host, tmp_path, "desk")
    now = int(time.time())
    laptop.publish(host.mesh, now=now)
    host.plant("laptop", record_files(host, "laptop", signer=host.mesh.devices["desk"].identity))
    assert "not signed" in desk.fetch_and_read(host.mesh).refused["laptop"]
    view = laptop.fetch_and_read(host.mesh)
    assert view.own_replaced
    network_id = host.mesh.verify().root.network_id
    request = PublishRequest(CANDIDATES, True, False, replaced=view.own_replaced)
    publish_if_due(laptop.repo_dir, laptop.url, laptop.state, lambda: laptop.keys, network_id, "laptop", request,
                   now + 30)  # not at once: a host that keeps replacing it is not fought every fetch
    assert "not signed" in desk.fetch_and_read(host.mesh).refused["laptop"]
    publish_if_due(laptop.repo_dir, laptop.url, laptop.state, lambda: laptop.keys, network_id, "laptop", request,
                   now + 60)
    assert desk.fetch_and_read(host.mesh).records["laptop"].candidates == CANDIDATES
    assert not laptop.fetch_and_read(host.mesh).own_replaced


def test_a_site_mirror_serves_fetches_while_records_go_to_the_origin(host: Host, tmp_path: Path) -> None:
    """The README's recipe for a mesh that outgrows one git host: devices fetch from a read-only
    mirror near them (nothing in git is trusted) and push their records to the origin, set as
    the push URL of meshctl's own clone."""
    mirror = tmp_path / "mirror.git"
    subprocess.run(["git", "clone", "-q", "--mirror", str(host.bare), str(mirror)], check=True)
    laptop = Node(tmp_path / "site", str(mirror), "laptop", host.mesh.devices["laptop"])
    with gitrepo.opened(laptop.repo_dir, laptop.url) as repo:
        repo.remotes.set_push_url("origin", host.url)
    pub = laptop.publish(host.mesh)
    assert pub.at is not None and pub.refused is None
    assert host.branch_commits("laptop") == 1  # on the origin
    assert pygit2.Repository(str(mirror)).references.get("refs/heads/endpoints/laptop") is None
    subprocess.run(["git", "--git-dir", str(mirror), "fetch", "-q", "--prune", "origin"], check=True)
    desk = Node(tmp_path / "site-desk", str(mirror), "desk", host.mesh.devices["desk"])
    assert desk.fetch_and_read(host.mesh).records["laptop"].candidates == CANDIDATES  # via the mirror


def test_a_deleted_branch_goes_from_the_clone_too(host: Host, tmp_path: Path) -> None:
    laptop, desk = node(host, tmp_path, "laptop"), node(host, tmp_path, "desk")
    laptop.publish(host.mesh)
    desk.fetch_and_read(host.mesh)
    with gitrepo.opened(desk.repo_dir, desk.url) as repo:
        assert "laptop" in gitrepo.endpoint_tips(repo)
    pygit2.Repository(str(host.bare)).references.delete("refs/heads/endpoints/laptop")
    desk.fetch_and_read(host.mesh)
    with gitrepo.opened(desk.repo_dir, desk.url) as repo:
        assert "laptop" not in gitrepo.endpoint_tips(repo)
        assert gitrepo.FETCHED_REF in repo.references  # main stays


# --- what a lying host plants is ignored ---------------------------------------------------------


def signed(keys_identity: SigningKey, network_id: str, data: bytes) -> bytes:
    return signing.marshal_signatures([signing.sign(keys_identity, "endpoint", network_id, data)])


def record_files(host: Host, name: str, *, candidates: tuple[str, ...] = ("198.51.100.66:4444",),
                 at: int | None = None, counter: int | None = None,
                 signer: SigningKey | None = None) -> dict[str, bytes]:
    keys = host.mesh.devices[name]
    network_id = host.mesh.verify().root.network_id
    now = at or int(time.time())
    _rec, files = build_record(keys.identity, network_id, name, candidates, keys.disco.public(),
                               keys.wireguard.public(), True, now, counter or now * 1000, None)
    if signer is not None:
        files["endpoint.json.sig"] = signed(signer, network_id, files["endpoint.json"])
    return files


def test_a_forged_record_is_ignored(host: Host, tmp_path: Path) -> None:
    host.plant("laptop", record_files(host, "laptop", signer=SigningKey.generate()))
    view = node(host, tmp_path, "desk").fetch_and_read(host.mesh)
    assert "laptop" not in view.records
    assert "not signed by laptop's identity key" in view.refused["laptop"]


def test_a_non_members_branch_is_ignored_unread(host: Host, tmp_path: Path) -> None:
    host.plant("stranger", {"endpoint.json": b"\xff" * 100, "endpoint.json.sig": b"x"})
    view = node(host, tmp_path, "desk").fetch_and_read(host.mesh)
    assert view.refused == {"stranger": "not a member of the mesh"}


def test_extra_files_or_modes_make_a_branch_unusable(host: Host, tmp_path: Path) -> None:
    files = record_files(host, "laptop")
    host.plant("laptop", {**files, "state.json": b"{}"})
    desk = node(host, tmp_path, "desk")
    assert "unexpected file 'state.json'" in desk.fetch_and_read(host.mesh).refused["laptop"]
    host.plant("laptop", files, mode=pygit2.enums.FileMode.BLOB_EXECUTABLE)
    assert "not a plain file" in desk.fetch_and_read(host.mesh).refused["laptop"]


def test_a_rolled_back_record_is_ignored_and_the_newer_one_kept(host: Host, tmp_path: Path) -> None:
    laptop, desk = node(host, tmp_path, "laptop"), node(host, tmp_path, "desk")
    old = record_files(host, "laptop", counter=1000, candidates=("198.51.100.1:1",))
    host.plant("laptop", old)
    assert desk.fetch_and_read(host.mesh).records["laptop"].candidates == ("198.51.100.1:1",)
    laptop.publish(host.mesh)  # the newer record, counter = now in ms
    assert desk.fetch_and_read(host.mesh).records["laptop"].candidates == CANDIDATES
    host.plant("laptop", old)  # the host serves the old one again (replay)
    view = desk.fetch_and_read(host.mesh)
    assert "rolled back: counter 1000" in view.refused["laptop"]
    assert view.records["laptop"].candidates == CANDIDATES  # the newest accepted stays
    # the memory survives a restart (a new process reads endpoints.json)
    assert "rolled back" in desk.fetch_and_read(host.mesh).refused["laptop"]
    doc = json.loads((desk.dir / "endpoints.json").read_text())
    assert doc["seen"]["laptop"][0] > 1000


def test_an_equivocating_record_is_ignored(host: Host, tmp_path: Path) -> None:
    desk = node(host, tmp_path, "desk")
    host.plant("laptop", record_files(host, "laptop", counter=5000, candidates=("198.51.100.1:1",)))
    desk.fetch_and_read(host.mesh)
    host.plant("laptop", record_files(host, "laptop", counter=5000, candidates=("198.51.100.2:2",)))
    view = desk.fetch_and_read(host.mesh)
    assert "equivocation" in view.refused["laptop"]
    assert view.records["laptop"].candidates == ("198.51.100.1:1",)


def test_a_stale_record_is_accepted_but_gives_no_candidates(host: Host, tmp_path: Path) -> None:
    from meshctl.coord.endpoint_verify import usable_candidates

    host.plant("laptop", record_files(host, "laptop", at=int(time.time()) - 3600))
    rec = node(host, tmp_path, "desk").fetch_and_read(host.mesh).records["laptop"]
    keys = host.mesh.devices["laptop"]
    assert usable_candidates(rec, keys.wireguard.public(), keys.disco.public(), int(time.time())) == ()


def test_a_refusal_is_logged_once_per_branch_commit(host: Host, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    host.plant("laptop", record_files(host, "laptop", signer=SigningKey.generate()))
    desk = node(host, tmp_path, "desk")
    with caplog.at_level("WARNING"):
        for _ in range(3):
            desk.fetch_and_read(host.mesh)
    assert sum("endpoints/laptop: ignored" in r.message for r in caplog.records) == 1


def test_git_daemon_log_counts_requests(host: Host, tmp_path: Path) -> None:
    """The request counter the benchmarks use: a fetch is one upload-pack, a push one receive-pack."""
    subprocess.run(["git", "ls-remote", host.url], check=True, capture_output=True)
    assert "upload-pack" in host.requests()[-1]
