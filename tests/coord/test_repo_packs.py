"""meshctl's own clone does not gather a pack file per fetch (found by the soak, bench/soak.py).

Every fetch that brings a commit stores a new pack; with no `git gc`, a node that saw a
thousand membership changes had a thousand packs, searched on every lookup and held open by
libgit2. `fetch` merges them into one past MAX_PACKS, keeping every object reachable from a ref.
"""

from __future__ import annotations

import contextlib
import gc
import os
from pathlib import Path

import pygit2

from meshctl.coord import repo as gitrepo

SIG = pygit2.Signature("t", "t@example.com")


def commit_file(src: pygit2.Repository, name: str, text: str) -> pygit2.Oid:
    parents = [] if src.head_is_unborn else [src.head.target]
    builder = src.TreeBuilder(src.head.peel(pygit2.Tree)) if parents else src.TreeBuilder()
    builder.insert(name, src.create_blob(text.encode()), pygit2.enums.FileMode.BLOB)
    return src.create_commit("refs/heads/main", SIG, SIG, f"add {name}", builder.write(), parents)


def packs(repo: pygit2.Repository) -> list[Path]:
    return sorted((Path(repo.path) / "objects" / "pack").glob("pack-*.pack"))


def test_fetches_do_not_pile_up_packs_and_keep_every_object(tmp_path: Path) -> None:
    src = pygit2.init_repository(str(tmp_path / "src.git"), bare=True, initial_head="main")
    clone = gitrepo.open_or_init(tmp_path / "clone.git", str(tmp_path / "src.git"))
    commits, counts = [], []
    for i in range(3 * gitrepo.MAX_PACKS):
        commits.append(commit_file(src, f"f{i}", f"file {i}\n"))
        tip = gitrepo.fetch(clone, "main")
        assert tip == str(commits[-1])
        if i == 0:
            gitrepo.set_trusted(clone, tip)  # a second ref, as the node keeps
        counts.append(len(packs(clone)))
    assert max(counts) <= gitrepo.MAX_PACKS, counts
    assert min(counts[gitrepo.MAX_PACKS:]) < gitrepo.MAX_PACKS  # they were merged, more than once
    fresh = pygit2.Repository(str(tmp_path / "clone.git"))  # what the next pass opens
    assert fresh.descendant_of(commits[-1], commits[0])
    snap = gitrepo.GitSnapshot(fresh, str(commits[-1]))
    assert sorted(snap.files()) == sorted(f"f{i}" for i in range(len(commits)))
    for i, c in enumerate(commits):  # every old state is still whole
        tree = fresh[c].peel(pygit2.Tree)
        assert fresh[tree[f"f{i}"].id].data == f"file {i}\n".encode()


def test_a_few_packs_are_left_alone(tmp_path: Path) -> None:
    src = pygit2.init_repository(str(tmp_path / "src.git"), bare=True, initial_head="main")
    clone = gitrepo.open_or_init(tmp_path / "clone.git", str(tmp_path / "src.git"))
    for i in range(3):
        commit_file(src, f"f{i}", "x")
        gitrepo.fetch(clone, "main")
    before = packs(clone)
    assert not gitrepo.compact_packs(clone)
    assert packs(clone) == before


def open_pack_files(repo_dir: Path) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/self/fd/{fd}").startswith(str(repo_dir / "objects" / "pack"))
    return n


def test_a_pass_closes_the_packs_it_read(tmp_path: Path) -> None:
    """Repositories dropped without `free()` wait for the cyclic GC, each holding its packs open."""
    src = pygit2.init_repository(str(tmp_path / "src.git"), bare=True, initial_head="main")
    clone_dir = tmp_path / "clone.git"
    gc.disable()  # as between two collections in a long-running agent
    try:
        for i in range(2 * gitrepo.MAX_PACKS):
            commit_file(src, f"f{i}", f"{i}")
            with gitrepo.opened(clone_dir, str(tmp_path / "src.git")) as repo:
                tip = gitrepo.fetch(repo, "main")
                assert len(gitrepo.GitSnapshot(repo, tip).files()) == i + 1
            assert open_pack_files(clone_dir) == 0
    finally:
        gc.enable()
