"""The WireGuard backend interface and the choice between kernel and userspace.

Both backends are told what to become through the same calls:

    backend, why = open_backend("mesh0", settings.wg_backend)
    backend.ensure_device()
    update = plan_update(backend.read(), desired)
    if not update.is_empty():
        backend.apply(update)

`auto` detects the kernel module the reliable way, by creating the link (as the issue asks):
modules load on demand, and /proc/modules may not even exist in a container. An interface that
already exists decides by its kind: `wireguard` is the kernel's, `tun` is wireguard-go's.
"""

from __future__ import annotations

import logging
from typing import Protocol

from meshctl.errors import UsageError
from meshctl.wg.config import DeviceState, DeviceUpdate

log = logging.getLogger(__name__)

BACKEND_CHOICES = ("auto", "kernel", "userspace")


class WireGuardBackend(Protocol):
    """One WireGuard interface, kernel or userspace; both behave the same."""

    name: str

    def ensure_device(self) -> None:
        """Create the interface if it is missing (idempotent)."""

    def read(self) -> DeviceState:
        """The device as it is now (raises MeshctlError if it does not exist)."""
        ...

    def apply(self, update: DeviceUpdate) -> None:
        """Write `update`; an empty update makes no WireGuard call."""

    def remove_device(self, owned_pid: int | None = None) -> None:
        """Delete the interface (and stop the wireguard-go meshctl started, `owned_pid`, in
        this namespace only); no error if already gone."""

    def pid(self) -> int | None:
        """The wireguard-go process serving the interface here (None for the kernel)."""

    def exists(self) -> bool:
        """Whether the interface exists and answers."""
        ...

    def tune_sockets(self, listen_port: int) -> None:
        """After a pass brought the link up: adjust the device's UDP sockets where needed."""


def open_backend(ifname: str, choice: str) -> tuple[WireGuardBackend, str]:
    """Pick the backend for `ifname`; returns it and the reason, for `meshctl status`."""
    from meshctl.wg.kernel import KernelBackend, link_kind, try_create_kernel_link
    from meshctl.wg.userspace import UserspaceBackend

    if choice == "userspace":
        return UserspaceBackend(ifname), "userspace: forced by --wg-backend"
    if choice == "kernel":
        return KernelBackend(ifname), "kernel: forced by --wg-backend"
    if choice != "auto":
        raise UsageError(
            f"unknown WireGuard backend `{choice}`", hint="use auto, kernel or userspace"
        )
    kind = link_kind(ifname)
    if kind == "wireguard":
        return KernelBackend(ifname), "kernel: module loaded"
    userspace = UserspaceBackend(ifname)
    if kind is not None:
        if userspace.exists():
            return userspace, "userspace: wireguard-go already running"
        return userspace, f"userspace: interface exists with kind {kind}"
    error = try_create_kernel_link(ifname)
    if error is None:
        return KernelBackend(ifname), "kernel: module loaded"
    log.info("kernel WireGuard unavailable: %s", error)
    return userspace, f"userspace: kernel has no WireGuard module (creating link failed: {error})"
