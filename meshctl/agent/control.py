"""The agent's control socket: one JSON request line, one JSON reply line.

The socket lives in the state directory with mode 0600, and the server also
checks the caller's uid (SO_PEERCRED): only root or the agent's own user may talk to it.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from pathlib import Path
from typing import Any, Final

MAX_REQUEST_BYTES: Final = 64 * 1024
MAX_REPLY_BYTES: Final = 16 * 1024 * 1024
QUERY_TIMEOUT_S: Final = 5.0


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def caller_allowed(uid: int) -> bool:
    return uid == 0 or uid == os.geteuid()


def query_agent(path: Path, request: dict[str, Any], timeout: float = QUERY_TIMEOUT_S) -> dict[str, Any] | None:
    """Ask the running agent; None when no agent answers."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        sock.sendall(json.dumps(request).encode() + b"\n")
        buf = bytearray()
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
            if len(buf) > MAX_REPLY_BYTES:
                return None
        reply = json.loads(buf.decode()) if buf else None
        return reply if isinstance(reply, dict) else None
    except (OSError, ValueError):
        return None
    finally:
        sock.close()
