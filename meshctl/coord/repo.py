"""The only module that runs git (via pygit2): clone, fetch, read trees, commit, push.

meshctl keeps its own bare clone in the state directory. The fetched tip lands
in `refs/meshctl/fetched`; only after verification does it move
`refs/meshctl/trusted`. libgit2 happily moves a ref to a rewritten history, so
before accepting a new tip we check it descends from the trusted one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import pygit2

from meshctl.errors import GitError, VerificationError

FETCHED_REF: Final = "refs/meshctl/fetched"
TRUSTED_REF: Final = "refs/meshctl/trusted"
MAX_CREDENTIAL_TRIES: Final = 3  # libgit2 asks again forever when credentials fail
MAX_TREE_ENTRIES: Final = 250_001
MAX_TREE_DEPTH: Final = 4
COMMITTER: Final = ("meshctl", "meshctl@localhost")
MAX_PACKS: Final = 8  # fetches each leave a pack; past this many they are merged into one


# What one fetch may download. A 10,000-peer repository's first clone is 5.5 MB; the bound
# only stops a hostile or broken host from filling the node's disk before verification.
MAX_FETCH_BYTES: Final = 256 * 1024**2


class _FetchTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        self.limit = limit


class Credentials(pygit2.RemoteCallbacks):
    """SSH key file (MESHCTL_SSH_KEY or ~/.ssh/id_ed25519|id_rsa) or agent; bounded retries;
    a fetch bounded to MAX_FETCH_BYTES."""

    def __init__(self) -> None:
        super().__init__()
        self.tries = 0

    def transfer_progress(self, stats: Any) -> None:
        """libgit2 calls this as the pack arrives (about once per object): a host that sends
        more than the bound is cut off before it fills the disk (raising aborts the fetch)."""
        if stats.received_bytes > MAX_FETCH_BYTES:
            raise _FetchTooLarge(MAX_FETCH_BYTES)

    def credentials(self, url: str, username_from_url: str | None, allowed_types: Any) -> Any:
        self.tries += 1
        if self.tries > MAX_CREDENTIAL_TRIES:
            raise GitError(f"{url}: authentication failed after {MAX_CREDENTIAL_TRIES} attempts",
                           "check the SSH key (MESHCTL_SSH_KEY) or the token in the URL")
        user = username_from_url or "git"
        if allowed_types & pygit2.enums.CredentialType.SSH_KEY:
            key = _ssh_key_path()
            if key is not None and self.tries == 1:
                pub = key.with_name(key.name + ".pub")
                return pygit2.Keypair(user, str(pub) if pub.exists() else None, str(key), "")
            return pygit2.KeypairFromAgent(user)
        if allowed_types & pygit2.enums.CredentialType.USERNAME:
            return pygit2.Username(user)
        raise GitError(f"{url}: the server asks for credentials meshctl cannot provide",
                       "use an ssh:// URL with a key, or put a token in the https:// URL")


def _ssh_key_path() -> Path | None:
    env = os.environ.get("MESHCTL_SSH_KEY")
    if env:
        return Path(env)
    for name in ("id_ed25519", "id_ecdsa", "id_rsa"):
        candidate = Path.home() / ".ssh" / name
        if candidate.exists():
            return candidate
    return None


def _git_error(url: str, exc: Exception) -> GitError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return GitError(f"{url}: repository unreachable: {text}",
                    "nothing was changed; the last good configuration is kept")


def _trust_ca_file() -> None:
    """MESHCTL_CA_FILE: a CA bundle for an https git host with a private certificate authority."""
    ca = os.environ.get("MESHCTL_CA_FILE")
    if ca:
        pygit2.settings.set_ssl_cert_locations(ca, None)


def open_or_init(repo_dir: Path, url: str) -> pygit2.Repository:
    """meshctl's own bare repository with `origin` pointing at `url`."""
    _trust_ca_file()
    if (repo_dir / "HEAD").exists():
        repo = pygit2.Repository(str(repo_dir))
        if repo.remotes["origin"].url != url:
            repo.remotes.set_url("origin", url)
        return repo
    repo_dir.parent.mkdir(parents=True, exist_ok=True)
    repo = pygit2.init_repository(str(repo_dir), bare=True)
    repo.remotes.create("origin", url, "+refs/heads/*:refs/remotes/origin/*")
    return repo


@contextlib.contextmanager
def opened(repo_dir: Path, url: str) -> Iterator[pygit2.Repository]:
    """`open_or_init` for one pass, closed at the end of the block.

    pygit2 repositories sit in reference cycles, so dropping one frees nothing until the
    cyclic garbage collector runs; meanwhile it keeps every pack file it read open. A
    long-running agent or relay opens one per pass: close it when the pass is done.
    """
    repo = open_or_init(repo_dir, url)
    try:
        yield repo
    finally:
        repo.free()


def default_branch(repo: pygit2.Repository) -> str:
    """The branch the remote's HEAD points to."""
    remote = repo.remotes["origin"]
    try:
        heads = remote.list_heads(callbacks=Credentials())
    except GitError:
        raise
    except (pygit2.GitError, OSError, ValueError) as exc:
        raise _git_error(str(remote.url), exc) from None
    for head in heads:
        if head.name == "HEAD" and head.symref_target:
            return str(head.symref_target).removeprefix("refs/heads/")
    names = {h.name for h in heads}
    for guess in ("main", "master"):
        if f"refs/heads/{guess}" in names:
            return guess
    raise GitError(f"{remote.url}: the repository has no branches yet",
                   "push the coordination repository created by `meshctl init` first")


def fetch(repo: pygit2.Repository, branch: str) -> str:
    """Fetch `branch` into FETCHED_REF; return the tip commit id."""
    remote = repo.remotes["origin"]
    try:
        remote.fetch([f"+refs/heads/{branch}:{FETCHED_REF}"], callbacks=Credentials())
    except GitError:
        raise
    except _FetchTooLarge as exc:
        raise GitError(f"{remote.url}: the fetch passed {exc.limit} bytes, more than a coordination "
                       "repository needs; stopped",
                       "nothing was changed; the last good configuration is kept") from None
    except (pygit2.GitError, OSError, ValueError, KeyError) as exc:
        raise _git_error(str(remote.url), exc) from None
    try:
        tip = str(repo.references[FETCHED_REF].target)
    except KeyError:
        raise GitError(f"{remote.url}: branch {branch!r} not found") from None
    compact_packs(repo)
    return tip


def compact_packs(repo: pygit2.Repository, max_packs: int = MAX_PACKS) -> bool:
    """Merge the packs of meshctl's own clone into one once fetches have left more than `max_packs`.

    Every fetch that brings a commit stores it as a new pack file and nothing ever merges them
    (there is no `git gc` here), so a node would gather one pack per membership change: disk,
    lookups that search every pack, and a file descriptor per pack that libgit2 keeps open.
    Like `git repack -a -d`: every commit reachable from a ref, with its trees and files, goes
    into one new pack; then the old ones are deleted. Best effort: on any error nothing is
    deleted and the next fetch tries again.
    """
    pack_dir = Path(repo.path) / "objects" / "pack"
    before = set(pack_dir.glob("pack-*.pack"))
    if len(before) <= max_packs:
        return False
    try:
        builder = pygit2.PackBuilder(repo)
        tips = {ref.peel(pygit2.Commit).id for ref in repo.references.objects}
        for commit in _reachable_commits(repo, tips):
            builder.add_recur(commit)
        builder.write(str(pack_dir))
    except (pygit2.GitError, OSError, KeyError, ValueError):
        return False
    new = set(pack_dir.glob("pack-*.pack")) - before
    if not new:
        return False
    for old in before:
        for suffix in (".pack", ".idx", ".rev"):
            old.with_suffix(suffix).unlink(missing_ok=True)
    return True


def _reachable_commits(repo: pygit2.Repository, tips: set[pygit2.Oid]) -> set[pygit2.Oid]:
    return {commit.id for tip in tips for commit in repo.walk(tip)}


def trusted_tip(repo: pygit2.Repository) -> str | None:
    ref = repo.references.get(TRUSTED_REF)
    return str(ref.target) if ref is not None else None


def check_descends(repo: pygit2.Repository, new: str, trusted: str | None) -> None:
    """Refuse a tip that does not contain the trusted commit (rewritten history)."""
    if trusted is None or new == trusted:
        return
    try:
        ok = repo.descendant_of(pygit2.Oid(hex=new), pygit2.Oid(hex=trusted))
    except (pygit2.GitError, KeyError, ValueError):
        ok = False
    if not ok:
        raise VerificationError(
            f"repository history was rewritten: {new[:12]} does not descend from the accepted "
            f"{trusted[:12]}",
            "a force-push replaced history; ask an admin, then re-run `meshctl join` to re-pin",
        )


def set_trusted(repo: pygit2.Repository, commit: str) -> None:
    repo.references.create(TRUSTED_REF, pygit2.Oid(hex=commit), force=True)


class GitSnapshot:
    """The files of one commit, read lazily from the object database."""

    def __init__(self, repo: pygit2.Repository, commit: str) -> None:
        self.repo = repo
        self.commit = commit
        self._files: dict[str, str | None] | None = None
        self._sizes: dict[str, int] = {}  # verify asks each file's size twice: bound, then read

    def files(self) -> dict[str, str | None]:
        if self._files is None:
            self._files = self._walk()
        return self._files

    def _walk(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        root = self.repo[pygit2.Oid(hex=self.commit)].peel(pygit2.Tree)
        stack: list[tuple[str, pygit2.Oid, int]] = [("", root.id, 0)]  # ids, not trees: small while waiting
        # Directories count too: trees can share subtrees, so a few small objects can
        # describe a billion empty directories that hold no file at all.
        entries = 0
        while stack:
            prefix, tree_id, depth = stack.pop()
            tree = self._object(tree_id, prefix.rstrip("/") or "/")
            if not isinstance(tree, pygit2.Tree):
                raise VerificationError(f"{prefix.rstrip('/')}: a directory entry that is not a directory")
            entries += len(tree)
            if entries > MAX_TREE_ENTRIES:
                raise VerificationError(f"repository has more than {MAX_TREE_ENTRIES - 1} files and directories",
                                        "a coordination repository holds a few files per member")
            for entry in tree:
                path = f"{prefix}{entry.name}"
                if entry.type_str == "tree":
                    if depth + 1 >= MAX_TREE_DEPTH:
                        raise VerificationError(f"{path}: directories nest too deeply")
                    stack.append((path + "/", entry.id, depth + 1))
                elif entry.filemode == pygit2.enums.FileMode.LINK:
                    raise VerificationError(f"{path}: symbolic links are not allowed")
                elif entry.type_str == "blob":
                    out[path] = str(entry.id)
                else:
                    raise VerificationError(f"{path}: submodules are not allowed")
        return out

    def _object(self, oid: pygit2.Oid, path: str) -> Any:
        try:
            return self.repo[oid]
        except KeyError:
            raise _missing(path, str(oid)) from None

    def size(self, path: str) -> int:
        if path in self._sizes:
            return self._sizes[path]
        oid = self.files()[path]
        assert oid is not None
        try:
            kind, size = self.repo.odb.read_header(pygit2.Oid(hex=oid))
        except KeyError:
            raise _missing(path, oid) from None
        if kind != pygit2.enums.ObjectType.BLOB:
            raise VerificationError(f"{path}: a file entry that is not a file")
        self._sizes[path] = int(size)
        return int(size)

    def read(self, path: str) -> bytes:
        oid = self.files()[path]
        assert oid is not None
        try:
            kind, data = self.repo.odb.read(oid)  # the raw object: no Blob built (10,000s per sync)
        except KeyError:
            raise _missing(path, oid) from None
        if kind != pygit2.enums.ObjectType.BLOB:
            raise VerificationError(f"{path}: a file entry that is not a file")
        return bytes(data)


def _missing(path: str, oid: str) -> VerificationError:
    return VerificationError(f"{path}: object {oid[:12]} is missing from the repository")


def commit_tree_changes(
    repo: pygit2.Repository,
    parent: str | None,
    changes: Mapping[str, bytes | None],
    message: str,
    ref: str | None = None,
) -> str:
    """A new commit = parent's tree with `changes` (path -> bytes, or None to delete); `ref`, if
    given, is set to it whatever it pointed to before (a request branch is replaced, not extended)."""
    base = repo[pygit2.Oid(hex=parent)].peel(pygit2.Tree) if parent else None
    index = pygit2.Index()
    if base is not None:
        index.read_tree(base)
    for path, data in changes.items():
        if data is None:
            index.remove(path)
        else:
            oid = repo.create_blob(data)
            index.add(pygit2.IndexEntry(path, oid, pygit2.enums.FileMode.BLOB))
    tree = index.write_tree(repo)
    sig = pygit2.Signature(*COMMITTER)
    parents = [pygit2.Oid(hex=parent)] if parent else []
    oid = repo.create_commit(None, sig, sig, message, tree, parents)
    if ref is not None:
        repo.references.create(ref, oid, force=True)
    return str(oid)


def push(repo: pygit2.Repository, refspec: str) -> None:
    remote = repo.remotes["origin"]
    try:
        remote.push([refspec], callbacks=Credentials())
    except GitError:
        raise
    except (pygit2.GitError, OSError, ValueError) as exc:
        raise GitError(f"{remote.url}: push refused: {str(exc).strip() or type(exc).__name__}") from None


def origin_url(workdir: Path) -> str | None:
    """The `origin` URL of a checkout, if it is one."""
    try:
        repo = pygit2.Repository(str(workdir))
        return str(repo.remotes["origin"].url)
    except (pygit2.GitError, KeyError):
        return None


def commit_workdir(workdir: Path, changed: list[str], removed: list[str], message: str) -> str | None:
    """Stage exactly these paths in a checkout and commit; None when `workdir` is not a git repo."""
    try:
        repo = pygit2.Repository(str(workdir))
    except pygit2.GitError:
        return None
    index = repo.index
    for path in removed:
        if index.__contains__(path):
            index.remove(path)
    for path in changed:
        index.add(path)
    index.write()
    tree = index.write_tree()
    try:
        author = repo.default_signature
    except (KeyError, pygit2.GitError):
        author = pygit2.Signature(*COMMITTER)
    parents = [] if repo.head_is_unborn else [repo.head.target]
    return str(repo.create_commit("HEAD", author, author, message, tree, parents))


def read_revision(workdir: Path, rev: str) -> tuple[pygit2.Repository, str]:
    """Resolve a revision in a checkout (for `repo verify --base REV`)."""
    try:
        repo = pygit2.Repository(str(workdir))
        commit = repo.revparse_single(rev).peel(pygit2.Commit)
    except (pygit2.GitError, KeyError, ValueError):
        raise GitError(f"{workdir}: cannot resolve revision {rev!r}") from None
    return repo, str(commit.id)
