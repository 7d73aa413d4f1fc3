"""git through pygit2: clone, fetch, read trees, commit, push; every network operation bounded
in time and offered the right SSH credentials (coord/ssh_auth.py). The admin's checkout has a
few more operations of its own in coord/workdir.py, built on these.

meshctl keeps its own bare clone in the state directory. The fetched tip lands
in `refs/meshctl/fetched`; only after verification does it move
`refs/meshctl/trusted`. libgit2 happily moves a ref to a rewritten history, so
before accepting a new tip we check it descends from the trusted one.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import pygit2

from meshctl.coord import ssh_auth
from meshctl.coord.endpoint_verify import TreeEntry
from meshctl.coord.ssh_auth import SshCredential
from meshctl.errors import GitError, VerificationError

T = TypeVar("T")

FETCHED_REF: Final = "refs/meshctl/fetched"
TRUSTED_REF: Final = "refs/meshctl/trusted"
ENDPOINT_BRANCHES: Final = "endpoints/"  # refs/heads/endpoints/<name>: each device's own branch
ENDPOINTS_REFS: Final = "refs/meshctl/endpoints/"  # where a fetch puts them (never verified as main)
PUBLISH_REF: Final = "refs/meshctl/publish"  # this device's last published branch commit
_PUBLISH_ONLY_FILES: Final = frozenset({"endpoint.json", "endpoint.json.sig"})
MAX_TREE_ENTRIES: Final = 250_001
MAX_TREE_DEPTH: Final = 4
COMMITTER: Final = ("meshctl", "meshctl@localhost")
MAX_PACKS: Final = 8  # fetches each leave a pack; past this many they are merged into one


# What one fetch may download. A 10,000-peer repository's first clone is 5.5 MB; the bound
# only stops a hostile or broken host from filling the node's disk before verification.
MAX_FETCH_BYTES: Final = 256 * 1024**2
# An unreachable git host is given up on within about 20 s (join, sync, admin approve): the name
# lookup, then the connection (per address of the host), then silence from a connected host.
RESOLVE_TIMEOUT_S: Final = 5.0
CONNECT_TIMEOUT_MS: Final = 7000
IO_TIMEOUT_MS: Final = 10000


class _FetchTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        self.limit = limit


class Credentials(pygit2.RemoteCallbacks):
    """Callbacks for one command's git operations: SSH credentials offered one at a time (which,
    and in which order: coord/ssh_auth.py), refused ref updates collected, and a fetch bounded
    to MAX_FETCH_BYTES.

    Pass the same object to every operation of a command: the credentials are looked up
    once, and `accepted` is the one the git host took last (join records a key file).
    """

    def __init__(self, ssh_key: str | None = None) -> None:
        super().__init__()
        self.ssh_key = ssh_key
        self.url = ""
        self.accepted: SshCredential | None = None
        self.rejected: dict[str, str] = {}
        self._found: list[SshCredential] | None = None
        self._next = 0
        self._saved_sock: str | None = None

    def begin(self, url: str) -> None:
        """Before each operation: offer the credentials from the first again."""
        self.url, self._next, self.rejected, self.accepted = url, 0, {}, None
        self._saved_sock = os.environ.get("SSH_AUTH_SOCK")

    def end(self) -> None:
        """After each operation: the agent chosen for it does not stay in this process's environment."""
        if self._saved_sock is None:
            os.environ.pop("SSH_AUTH_SOCK", None)
        else:
            os.environ["SSH_AUTH_SOCK"] = self._saved_sock

    @property
    def offered(self) -> list[SshCredential]:
        return (self._found or [])[: self._next]

    def transfer_progress(self, stats: Any) -> None:
        """libgit2 calls this as the pack arrives (about once per object): a host that sends
        more than the bound is cut off before it fills the disk (raising aborts the fetch)."""
        if stats.received_bytes > MAX_FETCH_BYTES:
            raise _FetchTooLarge(MAX_FETCH_BYTES)

    def push_update_reference(self, refname: str, message: str | None) -> None:
        """The host's answer for each pushed ref: a message means refused (a hook, a protected branch).
        Without this callback libgit2 reports a refused push as a success."""
        if message:
            self.rejected[refname] = message

    def credentials(self, url: str, username_from_url: str | None, allowed_types: Any) -> Any:
        user = username_from_url or "git"
        if allowed_types & pygit2.enums.CredentialType.SSH_KEY:
            if self._found is None:
                self._found = ssh_auth.discover(self.ssh_key)
            if self._next >= len(self._found):  # each refusal asks again, forever
                raise self.auth_error()
            cred = self._found[self._next]
            self._next += 1
            self.accepted = cred
            if cred.kind == "agent":
                os.environ["SSH_AUTH_SOCK"] = cred.path  # where libssh2 looks for the agent
                return pygit2.KeypairFromAgent(user)
            pub = Path(cred.path + ".pub")
            return pygit2.Keypair(user, str(pub) if pub.exists() else None, cred.path, "")
        if allowed_types & pygit2.enums.CredentialType.USERNAME:
            return pygit2.Username(user)
        raise GitError(f"{url}: the server asks for credentials meshctl cannot provide",
                       "use an ssh:// URL with a key, or put a token in the https:// URL")

    def auth_error(self) -> GitError:
        tried = self.offered
        what = ", ".join(c.describe() for c in tried) if tried else "no SSH key or agent was found"
        return GitError(f"{self.url}: authentication failed (tried: {what})",
                        ssh_auth.hint(tried, ssh_auth.invoking_user(os.environ, os.geteuid())))


KEPT: Final = "nothing was changed; the last good configuration is kept"


def _git_error(url: str, exc: Exception, creds: Credentials | None = None, failure: str = "repository unreachable",
               hint: str | None = KEPT) -> GitError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if creds is not None and creds.offered and "authenticat" in text.lower():
        return creds.auth_error()
    return GitError(f"{url}: {failure}: {text}", hint)


def url_host(url: str) -> str | None:
    """The host a git URL connects to; None for a local path or file://."""
    m = re.match(r"^([a-z][a-z0-9+.-]*)://(?:[^@/]*@)?(\[[^\]/]*\]|[^:/]*)", url, re.IGNORECASE)
    if m:
        return None if m[1].lower() == "file" else (m[2].strip("[]") or None)
    m = re.match(r"^(?:[^@/:]+@)?(\[[^\]/]*\]|[^:/]+):", url)  # scp-like: user@host:path
    return m[1].strip("[]") if m else None


def _resolve_within(host: str, timeout: float) -> str | None:
    """None when `host` resolves in time, else why not. libgit2 cannot bound a name lookup (a
    DNS server that does not answer holds it 10 s for each server in resolv.conf), so the lookup
    is made first in a thread, which is left behind when it takes too long."""
    result: list[str | None] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            result.append(None)
        except (OSError, UnicodeError) as exc:
            result.append(f"cannot resolve {host}: {exc.args[-1] if exc.args else exc}")

    worker = threading.Thread(target=lookup, name=f"resolve {host}", daemon=True)
    worker.start()
    worker.join(timeout)
    return result[0] if result else f"{host} did not resolve within {timeout:g} s"


def remote_call(remote: Any, creds: Credentials | None, action: Callable[[Credentials], T], *,
                failure: str = "repository unreachable", hint: str | None = KEPT) -> T:
    """One network operation on `remote`, bounded in time (the name lookup RESOLVE_TIMEOUT_S, the
    connection CONNECT_TIMEOUT_MS per address, then IO_TIMEOUT_MS of silence), credentials
    offered, and every failure one GitError."""
    url = str(remote.url)
    pygit2.settings.server_connect_timeout = CONNECT_TIMEOUT_MS
    pygit2.settings.server_timeout = IO_TIMEOUT_MS
    host = url_host(url)
    problem = _resolve_within(host, RESOLVE_TIMEOUT_S) if host else None
    if problem:
        raise GitError(f"{url}: {failure}: {problem}", hint)
    creds = creds or Credentials()
    creds.begin(url)
    try:
        return action(creds)
    except GitError:
        raise
    except _FetchTooLarge as exc:
        raise GitError(f"{url}: the fetch passed {exc.limit} bytes, more than a coordination "
                       "repository needs; stopped", KEPT) from None
    except (pygit2.GitError, OSError, ValueError, KeyError) as exc:
        raise _git_error(url, exc, creds, failure, hint) from None
    finally:
        creds.end()


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


def remote_heads(repo: pygit2.Repository, creds: Credentials | None = None) -> dict[str, str]:
    """The remote's refs as {name: commit id}, with "HEAD" naming the default branch's ref."""
    remote = repo.remotes["origin"]
    heads = remote_call(remote, creds, lambda cb: remote.list_heads(callbacks=cb))
    out = {}
    for head in heads:
        if head.name == "HEAD" and head.symref_target:
            out["HEAD"] = str(head.symref_target)
        elif str(head.name).startswith("refs/heads/"):
            out[str(head.name)] = str(head.oid)
    return out


def default_branch(repo: pygit2.Repository, creds: Credentials | None = None,
                   heads: Mapping[str, str] | None = None) -> str:
    """The branch the remote's HEAD points to."""
    heads = remote_heads(repo, creds) if heads is None else heads
    if "HEAD" in heads:
        return heads["HEAD"].removeprefix("refs/heads/")
    for guess in ("main", "master"):
        if f"refs/heads/{guess}" in heads:
            return guess
    raise GitError(f"{repo.remotes['origin'].url}: the repository has no branches yet",
                   "push the coordination repository created by `meshctl init` first")


def fetch_refs(repo: pygit2.Repository, refspecs: list[str], creds: Credentials | None = None, *,
               prune: bool = False) -> None:
    """One fetch of `refspecs` from origin (bounded in size and time); with `prune`, local refs
    under the refspecs' destinations that the host no longer has are deleted."""
    remote = repo.remotes["origin"]
    mode = pygit2.enums.FetchPrune.PRUNE if prune else pygit2.enums.FetchPrune.UNSPECIFIED
    remote_call(remote, creds, lambda cb: remote.fetch(refspecs, callbacks=cb, prune=mode))


def fetch(repo: pygit2.Repository, branch: str, creds: Credentials | None = None, *,
          endpoints: bool = False) -> str:
    """Fetch `branch` into FETCHED_REF; return the tip commit id.

    With `endpoints`, the same request also brings every device's own branch
    (`refs/heads/endpoints/*` into ENDPOINTS_REFS, pruned: a deleted branch goes too), so
    the signalling costs the git host no request of its own.
    """
    refspecs = [f"+refs/heads/{branch}:{FETCHED_REF}"]
    if endpoints:
        refspecs.append(f"+refs/heads/{ENDPOINT_BRANCHES}*:{ENDPOINTS_REFS}*")
    fetch_refs(repo, refspecs, creds, prune=endpoints)
    try:
        tip = str(repo.references[FETCHED_REF].target)
    except KeyError:
        raise GitError(f"{repo.remotes['origin'].url}: branch {branch!r} not found") from None
    require_commit(repo, tip, f"{repo.remotes['origin'].url}: branch {branch!r}")
    compact_packs(repo)
    return tip


def require_commit(repo: pygit2.Repository, oid: str, what: str) -> None:
    """A branch tip must be a commit: a tag, tree or blob there is refused before anything trusts it
    (a tag's id kept as the trusted tip would make every later sync look like rewritten history)."""
    try:
        kind, _size = repo.odb.read_header(pygit2.Oid(hex=oid))
    except (KeyError, ValueError):
        raise _missing(what, oid) from None
    if kind != pygit2.enums.ObjectType.COMMIT:
        name = {pygit2.enums.ObjectType.TAG: "tag", pygit2.enums.ObjectType.TREE: "tree",
                pygit2.enums.ObjectType.BLOB: "blob"}.get(kind, "object")
        raise VerificationError(f"{what} points to a {name} ({oid[:12]}), not a commit",
                                "the git host serves a branch meshctl cannot use; nothing was changed")


def remote_branches(heads: Mapping[str, str], prefix: str) -> dict[str, str]:
    """Of the remote's heads (`remote_heads`), the branches whose name starts with `prefix`
    (e.g. "join/"): name -> advertised tip."""
    return {ref.removeprefix("refs/heads/"): oid for ref, oid in heads.items()
            if ref.startswith("refs/heads/" + prefix)}


def fetch_branches(repo: pygit2.Repository, branches: Collection[str], into: str,
                   creds: Credentials | None = None) -> dict[str, str]:
    """Fetch these branches of `origin` into refs `<into>/<branch>`; branch -> tip commit (branches whose
    tip is not a commit are left out)."""
    if not branches:
        return {}
    fetch_refs(repo, [f"+refs/heads/{b}:{into}/{b}" for b in branches], creds)
    out = {}
    for branch in branches:
        ref = repo.references.get(f"{into}/{branch}")
        if ref is None:
            continue
        try:
            require_commit(repo, str(ref.target), f"branch {branch!r}")
        except VerificationError:
            continue
        out[branch] = str(ref.target)
    return out


def read_file_at(repo: pygit2.Repository, commit: str, path: str, limit: int) -> bytes | None:
    """One plain file of a commit, looked up by path (not by walking the tree), at most `limit` bytes;
    None when it is absent, not a plain file, or larger."""
    try:
        node: Any = repo[pygit2.Oid(hex=commit)].peel(pygit2.Tree)
        for part in path.split("/"):
            if not isinstance(node, pygit2.Tree) or part not in node:
                return None
            node = node[part]
        if node.filemode != pygit2.enums.FileMode.BLOB:
            return None
        kind, size = repo.odb.read_header(node.id)
        if kind != pygit2.enums.ObjectType.BLOB or size > limit:
            return None
        return bytes(repo.odb.read(node.id)[1])
    except (pygit2.GitError, KeyError, ValueError):
        return None


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
    set_ref(repo, TRUSTED_REF, commit)


def set_ref(repo: pygit2.Repository, ref: str, commit: str) -> None:
    repo.references.create(ref, pygit2.Oid(hex=commit), force=True)


def delete_ref(repo: pygit2.Repository, ref: str) -> None:
    if ref in repo.references:
        repo.references.delete(ref)


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
                elif entry.filemode == pygit2.enums.FileMode.BLOB_EXECUTABLE:
                    # Nothing here is a program: an executable bit is a change no signature covers.
                    raise VerificationError(f"{path}: executable files are not allowed")
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
    extra_parents: Sequence[str] = (),
) -> str:
    """A new commit = parent's tree with `changes` (path -> bytes, or None to delete); `extra_parents`
    join it to other histories (a branch it must fast-forward)."""
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
    parents += [pygit2.Oid(hex=p) for p in extra_parents]
    oid = repo.create_commit(ref, sig, sig, message, tree, parents)
    return str(oid)


class PushRefused(GitError):
    """The git host refused a ref update (a protected branch, a hook, not a fast-forward)."""


def push(repo: pygit2.Repository, refspecs: str | list[str], creds: Credentials | None = None) -> None:
    """Push to origin; every ref the host refuses is a PushRefused naming it and the host's reason."""
    remote = repo.remotes["origin"]
    specs = [refspecs] if isinstance(refspecs, str) else refspecs
    creds = creds or Credentials()
    remote_call(remote, creds, lambda cb: remote.push(specs, callbacks=cb), failure="push failed", hint=None)
    if creds.rejected:
        refused = "; ".join(f"{ref.removeprefix('refs/heads/')}: {why}" for ref, why in sorted(creds.rejected.items()))
        raise PushRefused(f"{remote.url}: push refused: {refused}")


def publish_checkout(workdir: Path, url: str) -> None:
    """`git remote add origin URL && git push -u origin main` for a new checkout."""
    repo = pygit2.Repository(str(workdir))
    repo.remotes.create("origin", url)
    branch = repo.head.shorthand
    push(repo, f"refs/heads/{branch}:refs/heads/{branch}")
    set_ref(repo, f"refs/remotes/origin/{branch}", str(repo.head.target))
    repo.config[f"branch.{branch}.remote"] = "origin"
    repo.config[f"branch.{branch}.merge"] = f"refs/heads/{branch}"


# libgit2's words for a host that did not answer at all (a push worth trying again soon); any
# other failure of a push right after a fetch worked is the host saying no (no write access).
_UNREACHABLE_WORDS: Final = ("failed to connect", "resolve", "connection refused", "timed out", "timeout",
                             "network is unreachable", "no route to host", "connection reset",
                             "early eof", "unexpected eof", "broken pipe")


def refused_by_host(exc: GitError) -> bool:
    """A failed push the host answered (a refused ref, no write access), not an unreachable host."""
    return isinstance(exc, PushRefused) or not any(w in exc.message.lower() for w in _UNREACHABLE_WORDS)


def publish_branch(repo: pygit2.Repository, branch: str, files: Mapping[str, bytes], message: str,
                   creds: Credentials | None = None) -> str:
    """Force-push ONE parentless commit holding exactly `files` to `refs/heads/<branch>`.

    Every publish replaces the branch, so it stays one commit forever, whatever the number of
    publishes. The loose objects of the previous publish are deleted once this one is pushed
    (only this device writes them; a fetch brings everything else in packs).
    """
    index = pygit2.Index()
    for path, data in sorted(files.items()):
        index.add(pygit2.IndexEntry(path, repo.create_blob(data), pygit2.enums.FileMode.BLOB))
    tree = index.write_tree(repo)
    sig = pygit2.Signature(*COMMITTER)
    previous = repo.references.get(PUBLISH_REF)
    old = _commit_objects(repo, pygit2.Oid(hex=str(previous.target))) if previous is not None else set()
    commit = repo.create_commit(None, sig, sig, message, tree, [])
    repo.references.create(PUBLISH_REF, commit, force=True)
    push(repo, f"+{PUBLISH_REF}:refs/heads/{branch}", creds)
    if branch.startswith(ENDPOINT_BRANCHES):
        # The host holds this commit now. The clone's ref to the branch (from the last fetch) may
        # still name the previous publish, whose objects go next: a ref to a missing object
        # would fail every later fetch.
        fetched = ENDPOINTS_REFS + branch.removeprefix(ENDPOINT_BRANCHES)
        if fetched in repo.references:
            repo.references.create(fetched, commit, force=True)
    _drop_loose(repo, old - _commit_objects(repo, commit))
    return str(commit)


def _commit_objects(repo: pygit2.Repository, commit_id: pygit2.Oid) -> set[str]:
    """The objects only a publish can hold: its commit, its (flat) tree, and the blobs of its
    endpoint record and signature (unique to it: the counter). Other files on the branch (a
    peer record, issue 20) may be byte for byte a file of main, which must never lose one."""
    try:
        commit = repo[commit_id].peel(pygit2.Commit)
    except (KeyError, ValueError, pygit2.GitError):
        return set()
    own = {str(e.id) for e in commit.tree if e.name in _PUBLISH_ONLY_FILES}
    return {str(commit.id), str(commit.tree_id), *own}


def _drop_loose(repo: pygit2.Repository, oids: set[str]) -> None:
    objects = Path(repo.path) / "objects"
    for oid in oids:
        (objects / oid[:2] / oid[2:]).unlink(missing_ok=True)


def endpoint_tips(repo: pygit2.Repository) -> dict[str, str]:
    """Device name -> tip commit of its branch, as the last fetch brought them."""
    out = {}
    for name in repo.references:
        if name.startswith(ENDPOINTS_REFS):
            out[name[len(ENDPOINTS_REFS):]] = str(repo.references[name].target)
    return out


def branch_files(repo: pygit2.Repository, commit: str,
                 max_entries: int) -> tuple[list[TreeEntry], dict[str, str]] | None:
    """The entries of a device branch's (flat) tree, from git's listing and object headers only,
    with each blob's id; None when the tree is absent or holds more than `max_entries`."""
    try:
        tree = repo[pygit2.Oid(hex=commit)].peel(pygit2.Tree)
    except (KeyError, ValueError, pygit2.GitError):
        return None
    if len(tree) > max_entries:
        return None
    entries, ids = [], {}
    for e in tree:
        size = 0
        if e.type_str == "blob":
            try:
                size = int(repo.odb.read_header(e.id)[1])
            except KeyError:
                return None
        path = str(e.name)
        entries.append(TreeEntry(path, e.type_str, int(e.filemode), size))
        ids[path] = str(e.id)
    return entries, ids


def read_blob(repo: pygit2.Repository, oid: str) -> bytes:
    kind, data = repo.odb.read(oid)
    if kind != pygit2.enums.ObjectType.BLOB:
        raise KeyError(oid)
    return bytes(data)


def origin_url(workdir: Path) -> str | None:
    """The `origin` URL of a checkout, if it is one."""
    try:
        repo = pygit2.Repository(str(workdir))
        return str(repo.remotes["origin"].url)
    except (pygit2.GitError, KeyError):
        return None


def checkout_repo(workdir: Path) -> pygit2.Repository | None:
    """The git repository whose work tree is exactly `workdir` (not one found further up), if any."""
    try:
        repo = pygit2.Repository(str(workdir))
    except pygit2.GitError:
        return None
    if repo.workdir is None or Path(repo.workdir).resolve() != workdir.resolve():
        return None
    return repo


def init_checkout(workdir: Path) -> None:
    """A new git repository in `workdir`, on branch main."""
    pygit2.init_repository(str(workdir), initial_head="main")


def head_snapshot(workdir: Path) -> GitSnapshot | None:
    """The files of the commit a checkout's HEAD names (None: not a git checkout, or no commit yet)."""
    repo = checkout_repo(workdir)
    if repo is None or repo.head_is_unborn:
        return None
    return GitSnapshot(repo, str(repo.head.peel(pygit2.Commit).id))


def uncommitted(workdir: Path) -> list[str]:
    """Paths whose working-tree file differs from HEAD (changed, deleted, or new and not ignored)."""
    repo = checkout_repo(workdir)
    if repo is None:
        return []
    try:
        status = repo.status()
    except pygit2.GitError:
        return []
    return sorted(path for path, flags in status.items() if flags != pygit2.enums.FileStatus.IGNORED)


def commit_files(workdir: Path, files: Mapping[str, bytes], keep_under: str, drop: Collection[str],
                 message: str) -> str | None:
    """Commit on HEAD a tree of exactly `files` (mode 100644) plus HEAD's entries under `keep_under`
    other than `drop`; the index follows the new commit. None when `workdir` is not a git checkout,
    or when the tree is HEAD's already.

    An admin's change commits what was verified (the checkout as files, with the change), not
    whatever else HEAD or the index hold: a gitlink, a symlink or an unverified edit in HEAD does
    not ride along. Only `keep_under` (pending join requests, which no signature covers and no node
    reads) is carried over from HEAD as it is.
    """
    repo = checkout_repo(workdir)
    if repo is None:
        return None
    index = pygit2.Index()
    in_head: set[pygit2.Oid] = set()
    if not repo.head_is_unborn:
        tree = repo.head.peel(pygit2.Tree)
        head_index = pygit2.Index()
        head_index.read_tree(tree)
        in_head = {entry.id for entry in head_index}
        if keep_under in tree and isinstance(sub := tree[keep_under], pygit2.Tree):
            for entry in sub:
                path = f"{keep_under}/{entry.name}"
                if path not in drop and path not in files and entry.filemode == pygit2.enums.FileMode.BLOB:
                    index.add(pygit2.IndexEntry(path, entry.id, pygit2.enums.FileMode.BLOB))
    for path, data in files.items():
        oid = pygit2.hash(data)  # a file HEAD has already is not written again (10,000s of members)
        if oid not in in_head:
            oid = repo.create_blob(data)
        index.add(pygit2.IndexEntry(path, oid, pygit2.enums.FileMode.BLOB))
    new_tree = index.write_tree(repo)
    if not repo.head_is_unborn and repo.head.peel(pygit2.Tree).id == new_tree:
        return None  # nothing changed (a signature added twice)
    try:
        author = repo.default_signature
    except (KeyError, pygit2.GitError):
        author = pygit2.Signature(*COMMITTER)
    parents = [] if repo.head_is_unborn else [repo.head.target]
    commit = repo.create_commit("HEAD", author, author, message, new_tree, parents)
    repo.index.read_tree(repo[new_tree])
    repo.index.write()
    return str(commit)


def commit_workdir(workdir: Path, changed: list[str], removed: list[str], message: str,
                   merge: str | None = None) -> str | None:
    """Stage exactly these paths in a checkout and commit; None when `workdir` is not a git repo.
    With `merge`, that commit becomes a second parent (a branch whose content this commit takes in)."""
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
    if merge is not None:
        parents.append(pygit2.Oid(hex=merge))
    return str(repo.create_commit("HEAD", author, author, message, tree, parents))


def read_revision(workdir: Path, rev: str) -> tuple[pygit2.Repository, str]:
    """Resolve a revision in a checkout (for `repo verify --base REV`)."""
    try:
        repo = pygit2.Repository(str(workdir))
        commit = repo.revparse_single(rev).peel(pygit2.Commit)
    except (pygit2.GitError, KeyError, ValueError):
        raise GitError(f"{workdir}: cannot resolve revision {rev!r}") from None
    return repo, str(commit.id)
