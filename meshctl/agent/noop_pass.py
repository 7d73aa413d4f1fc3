"""The no-op pass: when nothing upstream changed and the device is as the last full pass left it,
skip building the map, the desired state and the plans (the shell around agent.applied).

Cost of a no-op pass: the fetch, trust.json, node.json, the key file, applied.json, one ioctl
(is the link here?) and one WireGuard read, digested as text for wireguard-go (not parsed).
No NetMap, no policy compile, no netlink library, no nft. Anything unexpected (no record,
another input, a device that differs or does not answer) simply means "do the full pass",
which re-reads and heals everything.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from meshctl.agent.applied import Applied, device_digest, inputs_digest, uapi_digest
from meshctl.coord.trust import TrustMemory
from meshctl.errors import MeshctlError
from meshctl.fsutil import atomic_write
from meshctl.identity import WIREGUARD_FILE
from meshctl.settings import Settings
from meshctl.wg.config import DeviceState

log = logging.getLogger(__name__)

APPLIED_FILE: Final = "applied.json"
REPORT_FILE: Final = "dry-run-report.json"


def pass_inputs(settings: Settings, self_name: str, memory: TrustMemory,
                endpoint_overrides: Mapping[str, str | None],
                extra_addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...],
                routes: str = "", branches: str = "") -> str | None:
    """The inputs digest of a pass; None when it cannot be known cheaply (then: full pass).
    `routes`: this node's route choices and HA primaries (sync_pass._routes_text).
    `branches`: what the devices' branches add to the map (EndpointView.digest: enrollments, keys).
    What the clock alone changes there (an expired membership or auth key) waits for the next full
    pass, at most FULL_PASS_INTERVAL_S later."""
    try:
        key_file = (settings.keys_dir / WIREGUARD_FILE).read_bytes()
    except OSError:
        return None
    return inputs_digest(state_sha256=memory.state_sha256 + (f":{branches}" if branches else ""), self_name=self_name,
                         interface=settings.interface, backend_choice=settings.wg_backend,
                         listen_port=settings.listen_port, wireguard_key_file=key_file,
                         endpoint_overrides=endpoint_overrides, extra_addresses=extra_addresses,
                         routes=routes)


def load_applied(state_dir: Path) -> Applied | None:
    try:
        doc = json.loads((state_dir / APPLIED_FILE).read_bytes())
        until = doc.get("valid_until")
        return Applied(str(doc["inputs"]), str(doc["device"]), str(doc["backend"]), int(doc["full_at"]),
                       bool(doc["resolves_names"]), int(until) if until is not None else None)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or damaged: the next pass is a full one


def save_applied(state_dir: Path, applied: Applied) -> None:
    doc = {"inputs": applied.inputs, "device": applied.device, "backend": applied.backend,
           "full_at": applied.full_at, "resolves_names": applied.resolves_names, "valid_until": applied.valid_until}
    atomic_write(state_dir / APPLIED_FILE, (json.dumps(doc) + "\n").encode())


def forget_applied(state_dir: Path) -> None:
    (state_dir / APPLIED_FILE).unlink(missing_ok=True)


def remember_full_pass(state_dir: Path, ifname: str, inputs: str | None, device: DeviceState | None,
                       backend: str, now: int, resolves_names: bool, valid_until: int | None = None) -> None:
    """After a full pass that applied cleanly (`device`: the state it left); anything less
    leaves no record, and the next pass is a full one."""
    if inputs is None or device is None:
        forget_applied(state_dir)
        return
    # wireguard-go's reply is digested as sent; the kernel's as the state the pass predicted.
    digest = applied_fingerprint(ifname, device, now) if backend == "userspace" else device_digest(device, now)
    if digest is None:
        forget_applied(state_dir)
        return
    save_applied(state_dir, Applied(inputs, digest, backend, now, resolves_names, valid_until))


def applied_fingerprint(ifname: str, applied: DeviceState, now: int) -> str | None:
    """wireguard-go's digest, if it still holds what the pass applied; else None (no record).

    The device can move on between the write and this read: WireGuard roams a peer's endpoint
    to wherever its packets come from (a relayed peer's may still arrive through the loopback
    proxy just after the pass moved it to a relay channel). Recording that state as "applied"
    made every later pass a no-op, and the roam was never undone.
    """
    from meshctl.wg.uapi import parse_get_reply

    raw = _device_read(ifname, "userspace")
    if not isinstance(raw, bytes):
        return None
    try:
        held = parse_get_reply(raw)
    except MeshctlError:
        return None
    if held.errno != 0 or device_digest(held.state, now) != device_digest(applied, now):
        return None
    return uapi_digest(raw, now)


def device_fingerprint(ifname: str, backend: str, now: int) -> str | None:
    """The device's digest from one read; None when it is not here or does not answer."""
    read = _device_read(ifname, backend)
    if read is None:
        return None
    return uapi_digest(read, now) if isinstance(read, bytes) else device_digest(read, now)


def _device_read(ifname: str, backend: str) -> bytes | DeviceState | None:
    """wireguard-go's raw `get=1` reply, or the kernel device's state; None when it is not
    here or does not answer."""
    from meshctl.wg.kernel import link_present

    # The UAPI socket directory is shared by every namespace: the link must be in ours.
    if not link_present(ifname):
        return None
    try:
        if backend == "userspace":
            from meshctl.wg.userspace import UserspaceBackend

            return UserspaceBackend(ifname).read_raw()
        from meshctl.wg.kernel import KernelBackend

        return KernelBackend(ifname).read()
    except (MeshctlError, OSError) as exc:
        log.debug("device read: %s", exc)
        return None


def nothing_to_do(state_dir: Path, ifname: str, inputs: str | None, now: int) -> bool:
    """True when a full pass now would plan nothing: same inputs, same device (one read)."""
    if inputs is None:
        return False
    applied = load_applied(state_dir)
    if applied is None or not applied.still_valid(inputs, now):
        return False
    return device_fingerprint(ifname, applied.backend, now) == applied.device


# --- the dry run's report, reused while everything it depends on is the same -----------------


def load_report(state_dir: Path, key: str) -> str | None:
    try:
        doc = json.loads((state_dir / REPORT_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("key") != key or not isinstance(doc.get("text"), str):
        return None
    return str(doc["text"])


def save_report(state_dir: Path, key: str, text: str) -> None:
    try:
        atomic_write(state_dir / REPORT_FILE, json.dumps({"key": key, "text": text}).encode())
    except OSError as exc:  # only a cache: a read-only state directory costs speed, not the report
        log.debug("dry run report not kept: %s", exc)
