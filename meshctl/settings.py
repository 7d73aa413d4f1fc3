"""Global options shared by every command (each has an environment variable)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

DEFAULT_STATE_DIR: Final = Path("/var/lib/meshctl")
DEFAULT_INTERFACE: Final = "mesh0"
WG_BACKENDS: Final = ("auto", "kernel", "userspace")
DEFAULT_LISTEN_PORT: Final = 51820
# Set (SO_MARK) on meshctl's own sockets to peers' underlay addresses (disco, STUN): an ip rule sends
# them by the main table, around the routes an exit node or subnet router adds (router/policy_routing.py).
SOCKET_MARK: Final = 0x6D0000
SOCKET_MARK_MASK: Final = 0xFF0000


@dataclass(frozen=True, slots=True)
class Settings:
    state_dir: Path = DEFAULT_STATE_DIR
    interface: str = DEFAULT_INTERFACE
    wg_backend: str = "auto"
    listen_port: int = DEFAULT_LISTEN_PORT

    @property
    def keys_dir(self) -> Path:
        return self.state_dir / "keys"

    @property
    def repo_dir(self) -> Path:
        """meshctl's own bare clone of the coordination repository."""
        return self.state_dir / "repo.git"

    @property
    def control_socket(self) -> Path:
        return self.state_dir / "agent.sock"
