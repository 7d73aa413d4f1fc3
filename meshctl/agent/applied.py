"""What the last full pass applied, as two digests, so that a no-op pass can skip the work (pure).

A full pass is a pure function of its inputs (the accepted state, this node's name and keys,
the interface, the port, the agent's endpoint choices) and of what it reads back from the host.
If neither changed since the last full pass that applied cleanly, its plan is empty and nothing
needs to be rebuilt. Two digests capture that:

- `inputs_digest`: everything `compute_desired` depends on besides the NetMap's content, which
  the state hash stands for (state.json lists the sha256 of every record and of the policy).
- `device_digest`: the WireGuard device as `plan_update` and `keep_working_endpoints` see it
  (keys, port, peers' endpoints, allowed IPs, keepalive, and which tunnels count as working),
  so a manual `wg set` or a dead wireguard-go changes it and the next pass heals it.

Routes, addresses and the nft table are not read on a no-op pass (reading them costs more than
the whole pass should); a full pass re-reads them at least every FULL_PASS_INTERVAL_S.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from meshctl.wg.config import HANDSHAKE_FRESH_S, DeviceState

# Bump when compute_desired or the plans change meaning: an upgrade must not trust old digests.
DIGEST_VERSION: Final = 3  # 2: route choices (issue 19); 3: the map in force (enrollments, keys, expiry)
# Routes, addresses and the packet filter drift-heal within this time even when nothing changes.
FULL_PASS_INTERVAL_S: Final = 300


@dataclass(frozen=True, slots=True)
class Applied:
    """The record of the last full pass that applied without an error."""

    inputs: str
    device: str
    backend: str  # "kernel" | "userspace": the backend that pass used
    full_at: int  # unix seconds
    resolves_names: bool  # static endpoints with host names: DNS may change what they mean
    valid_until: int | None = None  # the clock alone changes the map then (a membership or an auth key expires)

    def still_valid(self, inputs: str, now: int) -> bool:
        """Whether a pass with `inputs` at `now` may rely on this record (the device aside)."""
        return (inputs == self.inputs and not self.resolves_names
                and self.full_at <= now < self.full_at + FULL_PASS_INTERVAL_S
                and (self.valid_until is None or now < self.valid_until))


def _key_hash(secret: bytes) -> str:
    # A private key enters only through a hash: the digests are stored, the keys never are.
    return hashlib.sha256(b"meshctl applied key\0" + secret).hexdigest()


def _digest(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def inputs_digest(*, state_sha256: str, self_name: str, interface: str, backend_choice: str,
                  listen_port: int, wireguard_key_file: bytes,
                  endpoint_overrides: Mapping[str, str | None],
                  extra_addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...],
                  routes: str = "") -> str:
    """`routes`: this node's route choices and HA primaries, as text (sync_pass._routes_text)."""
    key_hash = _key_hash(wireguard_key_file)
    overrides = sorted((name, ep or "") for name, ep in endpoint_overrides.items())
    return _digest([f"v{DIGEST_VERSION}", state_sha256, self_name, interface, backend_choice,
                    str(listen_port), key_hash, repr(overrides), repr([str(a) for a in extra_addresses]), routes])


def device_digest(state: DeviceState, now: int) -> str:
    """Only what a plan looks at: counters and handshake times are left out, except whether a
    tunnel counts as working (keep_working_endpoints keeps its endpoint while it does)."""
    # The public key, as plan_update compares it: WireGuard stores the private key clamped.
    public = state.public_key
    parts = [f"v{DIGEST_VERSION}", public.b64() if public else "-", str(state.listen_port)]
    for p in state.peers:  # sorted by key (DeviceState)
        working = bool(p.endpoint and p.last_handshake and now - p.last_handshake < HANDSHAKE_FRESH_S)
        parts.append(f"{p.public_key.b64()} {p.endpoint or '-'} {p.persistent_keepalive} {int(working)} "
                     + ",".join(str(a) for a in p.allowed_ips))
    return _digest(parts)


def report_digest(inputs: str, version: str, device: DeviceState, router: object, table: object,
                  now: int) -> str:
    """Everything a dry run's report depends on: its inputs, what it read from the host, and
    the meshctl version that renders it (an upgrade may word the report differently)."""
    return _digest([f"v{DIGEST_VERSION}", version, inputs, device_digest(device, now), repr(router),
                    json.dumps(table, sort_keys=True)])


# The UAPI lines a plan depends on; counters, handshake times, fwmark and the protocol version
# are left out (the handshake time only says whether the tunnel works).
_UAPI_PEER_KEYS: Final = frozenset({"endpoint", "persistent_keepalive_interval"})


def uapi_digest(reply: bytes, now: int) -> str | None:
    """device_digest's counterpart for a raw wireguard-go `get=1` reply, without parsing it into
    objects (at 1,000 peers that parse is most of a no-op pass). None when it is no good reply.

    It digests the text as wireguard-go prints it, so it is compared only with digests of
    other replies, never with device_digest. Peers come in Go map order: they are sorted.
    """
    try:
        text = reply.decode("ascii")
    except UnicodeDecodeError:
        return None
    lines = text.rstrip("\n").split("\n")
    if not lines or lines[-1] != "errno=0":
        return None
    head: list[str] = [f"uapi v{DIGEST_VERSION}"]
    peers: list[list[str]] = []
    ips: list[str] = []
    handshake = 0
    endpoint = False

    def close_peer() -> None:
        if peers:
            working = endpoint and handshake and now - handshake < HANDSHAKE_FRESH_S
            peers[-1].extend([f"working={int(bool(working))}", *sorted(ips)])

    for line in lines[:-1]:
        key, _, value = line.partition("=")
        if key == "public_key":
            close_peer()
            peers.append([line])
            ips, handshake, endpoint = [], 0, False
        elif not peers:
            if key == "private_key":
                head.append(_key_hash(value.encode()))
            elif key == "listen_port":
                head.append(line)
        elif key == "allowed_ip":
            ips.append(value)
        elif key == "last_handshake_time_sec":
            handshake = int(value) if value.isdigit() else 0
        elif key in _UAPI_PEER_KEYS:
            endpoint = endpoint or key == "endpoint"
            peers[-1].append(line)
    close_peer()
    return _digest(head + sorted("\n".join(p) for p in peers))
