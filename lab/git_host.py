"""The git host's power over a repository it serves (pygit2 on the bare repository): what tests use
to plant, replace or read a branch the way a hostile host (or anyone with write access) could."""

from __future__ import annotations

from pathlib import Path

import pygit2

GIT_SIG = pygit2.Signature("host", "host@example.com")


def plant_branch(repo_dir: Path | str, branch: str, files: dict[str, bytes]) -> str:
    """A parentless commit holding exactly `files` (plain blobs) as `refs/heads/<branch>`; its id."""
    repo = pygit2.Repository(str(repo_dir))
    builder = repo.TreeBuilder()
    for path, data in sorted(files.items()):
        builder.insert(path, repo.create_blob(data), pygit2.enums.FileMode.BLOB)
    commit = repo.create_commit(None, GIT_SIG, GIT_SIG, "planted", builder.write(), [])
    repo.references.create(f"refs/heads/{branch}", commit, force=True)
    return str(commit)


def branch_files(repo_dir: Path | str, branch: str) -> dict[str, bytes]:
    """The files at the tip of `branch` (a flat tree)."""
    repo = pygit2.Repository(str(repo_dir))
    tree = repo.revparse_single(branch).peel(pygit2.Tree)
    out = {}
    for entry in tree:
        blob = repo[entry.id]
        assert isinstance(blob, pygit2.Blob), entry.name
        out[str(entry.name)] = blob.data
    return out
