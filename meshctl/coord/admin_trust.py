"""An admin's own trust memory, kept outside the repository next to the admin key (shell).

Like a node's trust.json (coord/node_state.py): per mesh (network id) the root versions accepted,
and the last serial and state hash this admin verified or signed, which only move forward. Beside
it, copies of that state and its policy: what an unsigned state.json is compared with, to name the
fields it changed, and where a co-signature's diff starts.

    <directory of the first --admin-key>/trust/<network_id>/trust.json, state.json, policy.hujson

(the default admin key is ~/.config/meshctl/admin.key, so ~/.config/meshctl/trust/...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meshctl.coord import verify
from meshctl.coord.node_state import NodeState
from meshctl.coord.trust import TrustMemory
from meshctl.fsutil import atomic_write, ensure_private_dir

TRUST_DIR_NAME = "trust"


@dataclass(frozen=True, slots=True)
class Remembered:
    memory: TrustMemory
    state: bytes | None
    policy: bytes | None


class AdminTrust:
    def __init__(self, base: Path) -> None:
        self.base = base

    @classmethod
    def beside(cls, admin_key: Path) -> AdminTrust:
        return cls(admin_key.absolute().parent / TRUST_DIR_NAME)  # absolute: not wherever the command runs

    def dir(self, network_id: str) -> Path:
        return self.base / network_id

    def load(self, network_id: str) -> Remembered | None:
        directory = self.dir(network_id)
        memory = NodeState(directory).load_memory()
        if memory is None:
            return None
        return Remembered(memory, _read(directory / "state.json"), _read(directory / "policy.hujson"))

    def save(self, network_id: str, memory: TrustMemory, state: bytes, policy: bytes | None, policy_sha256: str,
             now: int) -> None:
        """Remember an accepted or signed state (and its policy, if `policy` is the one it signs);
        a lower serial never replaces a higher one."""
        old = self.load(network_id)
        if old is not None and old.memory.serial > memory.serial:
            return
        directory = self.dir(network_id)
        ensure_private_dir(self.base)
        ensure_private_dir(directory)
        atomic_write(directory / "state.json", state)
        if policy is not None and verify.sha256_hex(policy) == policy_sha256:
            atomic_write(directory / "policy.hujson", policy)
        NodeState(directory).save_memory(memory, now)  # last: it is what says this state was accepted


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None

