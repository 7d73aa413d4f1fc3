"""The whole verifier on hostile snapshots: a Verified state or a VerificationError, nothing else.

A real two-member mesh is read into memory once; each example changes it the way a
hostile git host could (mutate, replace, drop or add a file) and runs verify_snapshot,
the check every node and relay makes before using a revision. Any change to the bytes
of a signed or hashed file must be refused.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mesh_builder import NOW, make_mesh

from meshctl.coord import verify
from meshctl.coord.fs_snapshot import FsSnapshot
from meshctl.coord.verify import MemorySnapshot
from meshctl.errors import VerificationError

PER_EXAMPLE_S = 1.0
SIGNED_OR_HASHED = ("root/1.root.json", "state.json", "peers/alpha.json", "peers/beta.json", "policy.hujson")


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, bytes], str]:
    mesh = make_mesh(tmp_path_factory.mktemp("fuzzmesh") / "coord")
    mesh.add("alpha")
    mesh.add("beta", tags=("tag:server",))
    snap = FsSnapshot(mesh.path)
    files = {p: snap.read(p) for p in snap.files()}
    verify.verify_snapshot(MemorySnapshot(files), mesh.fingerprint, NOW)  # the starting point verifies
    return files, mesh.fingerprint


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@st.composite
def byte_edit(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, max(0, len(out) - 1)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if op == "flip" and out:
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and out:
            del out[pos : pos + draw(st.integers(1, 8))]
        else:
            del out[pos:]
    return bytes(out)


@st.composite
def field_edit(draw: st.DrawFn, data: bytes) -> bytes:
    """One top-level field of a JSON document replaced, dropped or added; still valid JSON."""
    doc = json.loads(data)
    key = draw(st.sampled_from(sorted(doc) + ["extra"]))
    if draw(st.booleans()) and key in doc:
        del doc[key]
    else:
        doc[key] = draw(json_values)
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def _verify_bounded(files: dict[str, bytes], pinned: str) -> bool:
    """True when the snapshot verified; the time bound and error class are asserted here."""
    began = time.perf_counter()
    try:
        verify.verify_snapshot(MemorySnapshot(files), pinned, NOW)
        ok = True
    except VerificationError:
        ok = False
    assert time.perf_counter() - began < PER_EXAMPLE_S
    return ok


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.data())
def test_one_file_mutated(good: tuple[dict[str, bytes], str], data: st.DataObject) -> None:
    files, pinned = good
    path = data.draw(st.sampled_from(sorted(files)))
    original = files[path]
    json_file = path.endswith((".json", ".sig"))
    edit = st.one_of(byte_edit(original), field_edit(original)) if json_file else byte_edit(original)
    changed = data.draw(edit)
    ok = _verify_bounded({**files, path: changed}, pinned)
    if path in SIGNED_OR_HASHED and changed != original:
        assert not ok, f"{path} changed and still verified"


@FUZZ
@given(data=st.data())
def test_files_dropped_added_or_swapped(good: tuple[dict[str, bytes], str], data: st.DataObject) -> None:
    files, pinned = good
    hostile = dict(files)
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["drop", "add", "swap"]))
        path = data.draw(st.sampled_from(sorted(hostile) or ["state.json"]))
        if op == "drop":
            hostile.pop(path, None)
        elif op == "add":
            name = data.draw(st.sampled_from(["peers/gamma.json", "root/2.root.json", "root/2.root.json.sig",
                                              "requests/x.json", "evil/x", "state.json.sig"]))
            hostile[name] = data.draw(st.one_of(st.binary(max_size=300), json_values.map(
                lambda v: json.dumps(v).encode())))
        elif path in hostile:
            other = data.draw(st.sampled_from(sorted(files)))
            hostile[path] = files[other]  # mix and match: another file's (validly signed) bytes
    ok = _verify_bounded(hostile, pinned)
    if any(hostile.get(p) != files[p] for p in SIGNED_OR_HASHED):
        assert not ok


def test_state_and_root_field_edits_are_refused(good: tuple[dict[str, bytes], str]) -> None:
    # Deterministic companion: every top-level field of the signed documents, one at a time.
    files, pinned = good
    for path in ("state.json", "root/1.root.json", "peers/alpha.json"):
        doc = json.loads(files[path])
        for key in doc:
            edited = {**doc, key: None}
            data = (json.dumps(edited, indent=2, sort_keys=True) + "\n").encode()
            assert not _verify_bounded({**files, path: data}, pinned), (path, key)


def test_starting_point_round_trips_through_disk(tmp_path: Path, good: tuple[dict[str, bytes], str]) -> None:
    files, pinned = good
    for path, data in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(data)
    assert verify.verify_snapshot(FsSnapshot(tmp_path), pinned, NOW).state.peers.keys() == {"alpha", "beta"}
