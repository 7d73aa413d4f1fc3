"""last-sync.json: a pass that did not fetch keeps the last fetch's verdict on the git host."""

from __future__ import annotations

import json
from pathlib import Path

from meshctl.agent.sync_pass import record_pass
from meshctl.errors import GitError


def _doc(state: Path) -> dict[str, object]:
    return dict(json.loads((state / "last-sync.json").read_text()))


def test_a_pass_without_fetch_keeps_the_unreachable_host_reported(tmp_path: Path) -> None:
    record_pass(tmp_path, 100, 4, None, [])
    record_pass(tmp_path, 160, 4, GitError("git://host/mesh: repository unreachable"), [])
    record_pass(tmp_path, 163, 4, None, [], fetched=False)  # a path change re-applied the map
    doc = _doc(tmp_path)
    assert doc["coordination_ok"] is False
    assert doc["coordination_error"] == "git://host/mesh: repository unreachable"
    assert doc["last_fetch_ok_at"] == 100
    assert doc["at"] == 163
    record_pass(tmp_path, 220, 5, None, [])  # the host is back
    doc = _doc(tmp_path)
    assert doc["coordination_ok"] is True and doc["coordination_error"] is None
    assert doc["last_fetch_ok_at"] == 220
