"""UDP socket helpers (shell): large buffers, batched receive and send, another process's sockets.

Used by the relay, its client and loopback proxy, and by the WireGuard userspace backend.
"""
