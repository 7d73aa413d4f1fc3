"""Batched self-signature checks: the forked half and the local half agree with one-by-one checks."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable

import pytest
from mesh_builder import Mesh

from meshctl.coord import sigbatch
from meshctl.coord.sigbatch import SignatureCheck
from meshctl.errors import VerificationError
from meshctl.keys import SigningKey

BAD = {3, 299, 301, 599}  # both halves, and both ends


def make_checks(n: int = 600) -> list[SignatureCheck]:
    checks = []
    for i in range(n):
        key = SigningKey.generate()
        message = f"record {i}".encode()
        signed = message + b"!" if i in BAD else message
        checks.append(SignatureCheck(key.public(), (b"\x00" * 64, key.sign(signed)), message))
    return checks


def counting_fork(monkeypatch: pytest.MonkeyPatch, in_child: Callable[[], None] | None = None) -> list[int]:
    calls: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid == 0 and in_child is not None:
            in_child()
        calls.append(pid)
        return pid

    monkeypatch.setattr(sigbatch.os, "fork", fork)
    return calls


def test_forked_checks_agree_with_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    checks = make_checks()
    forks = counting_fork(monkeypatch)
    assert sigbatch.run_checks(checks) == [c.passes() for c in checks]
    assert {i for i, ok in enumerate(sigbatch.run_checks(checks)) if not ok} == BAD
    assert len(forks) == 2  # the second half really ran in a child, once per call


def test_a_child_that_dies_is_replaced_by_checks_here(monkeypatch: pytest.MonkeyPatch) -> None:
    checks = make_checks()
    forks = counting_fork(monkeypatch, in_child=lambda: os._exit(3))
    assert {i for i, ok in enumerate(sigbatch.run_checks(checks)) if not ok} == BAD
    assert len(forks) == 1


def test_no_fork_while_another_thread_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    checks = make_checks()
    forks = counting_fork(monkeypatch)
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        assert not sigbatch.can_fork()
        assert {i for i, ok in enumerate(sigbatch.run_checks(checks)) if not ok} == BAD
    finally:
        release.set()
        other.join()
    assert forks == []


def test_small_batches_stay_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    checks = make_checks(10)
    forks = counting_fork(monkeypatch)
    assert sigbatch.run_checks(checks) == [i not in BAD for i in range(10)]
    assert forks == []


@pytest.mark.parametrize(("broken", "expected"), [
    ("signature-first", "peers/bob.json.sig: not signed by the record's identity key"),
    ("parse-first", "peers/alice.json:1:"),
])
def test_first_problem_in_name_order_is_told(mesh: Mesh, monkeypatch: pytest.MonkeyPatch,
                                             broken: str, expected: str) -> None:
    """Signatures are checked after all parsing, yet the error is the one a walk by name meets first."""
    monkeypatch.setattr(sigbatch, "MIN_FORKED_CHECKS", 2)
    for name in ("alice", "bob", "carol", "dave"):
        mesh.add(name)
    if broken == "signature-first":
        shutil.copy(mesh.path / "peers/dave.json.sig", mesh.path / "peers/bob.json.sig")
        (mesh.path / "peers/carol.json").write_bytes(b'{"type": ')
    else:
        (mesh.path / "peers/alice.json").write_bytes(b'{"type": ')
        shutil.copy(mesh.path / "peers/dave.json.sig", mesh.path / "peers/bob.json.sig")
    with pytest.raises(VerificationError) as err:
        mesh.verify()
    assert err.value.message.startswith(expected)
