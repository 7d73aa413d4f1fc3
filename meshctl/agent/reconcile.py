"""Read every subsystem, plan, apply (the imperative shell around agent/plan.py).

Every pass reads all four subsystems back from the host, so a crash, a manual `wg set`, a
route or an nft rule deleted by hand is healed by the next pass; the reads are cheap (one
parser per format), which is what keeps a pass that changes nothing fast.

Apply order, and why:
1. WireGuard: the device exists and has its key before peers (the key is in the same update).
2. The packet filter (nft table netdev meshctl hooked to the interface, and the strong host
   model in table inet meshctl) before the link comes up, so the interface never accepts a
   connection the policy forbids; after the device exists, since the filter's chains are
   bound to it.
   On a subnet router or exit node, IP forwarding is switched off (when no longer needed)
   before the filter loses its router chains, and on after the filter has them, so forwarding
   is never on without the policy for routed traffic.
3. Addresses and routes: routes need the link, and the link is brought up here, after the
   peers are configured.
4. meshctl's routing table and rules (routes through the mesh, issue 19): they need the link
   up, and the peer that carries them must already hold them in its allowed IPs.
5. DNS last: the system resolver is pointed at MagicDNS once the mesh addresses it listens
   on are there.
A failed subsystem does not hide the others' results: errors are collected.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from meshctl.agent.plan import Observed, Plan, plan, plan_endpoints
from meshctl.dns.os_config import OsDnsConfig
from meshctl.errors import MeshctlError
from meshctl.fsutil import atomic_write
from meshctl.router.config import RouterState
from meshctl.router.forwarding import SetForwarding, plan_forwarding
from meshctl.router.policy_routing import PolicyRoutingConfig, plan_policy_routing
from meshctl.wg.config import DeviceState, DeviceUpdate

if TYPE_CHECKING:
    from meshctl.agent.desired import Desired
    from meshctl.dns.resolvconf import Endpoint
    from meshctl.keys import NodePublic
    from meshctl.wg.backend import WireGuardBackend

log = logging.getLogger(__name__)

DEVICE_FILE = "device.json"


@dataclass
class ApplyResult:
    plan: Plan
    errors: list[MeshctlError] = field(default_factory=list)
    dns_upstreams: tuple[Endpoint, ...] | None = None  # where MagicDNS forwards other names, once known


class Reconciler:
    """Owns one interface: meshctl's WireGuard device, its filter, addresses, routes and the
    system resolver's settings for it."""

    def __init__(self, ifname: str, backend_choice: str, state_dir: Path) -> None:
        self.ifname = ifname
        self.backend_choice = backend_choice
        self.state_dir = state_dir
        self._backend: WireGuardBackend | None = None
        self.backend_reason = ""
        self.dns = OsDnsConfig(state_dir, ifname)

    @property
    def backend(self) -> WireGuardBackend:
        from meshctl.wg.backend import open_backend

        if self._backend is None:
            self._backend, self.backend_reason = open_backend(self.ifname, self.backend_choice)
        return self._backend

    # --- read ---------------------------------------------------------------------------

    def observe(self) -> Observed:
        """What the host holds now; an absent interface reads as empty."""
        from meshctl.firewall.apply import read_filter
        from meshctl.wg.kernel import link_present

        if link_present(self.ifname):
            from meshctl.router.linux import read_router

            wg, router = self.backend.read(), read_router(self.ifname)
        else:
            wg, router = DeviceState(), RouterState()
        from meshctl.router.host import read_forwarding, read_policy_routing

        policy, forwarding = read_policy_routing(self.ifname), read_forwarding(self.state_dir)
        try:
            return Observed(wg, router, read_filter(self.ifname), self.dns.read(), None, policy, forwarding)
        except MeshctlError as exc:
            return Observed(wg, router, None, self.dns.read(), exc, policy, forwarding)

    def dry_run(self, desired: Desired, now: int) -> Plan:
        """The plan a pass would apply now (reads only)."""
        observed = self.observe()
        if desired.packet_filter is not None and observed.filter_error is not None:
            raise observed.filter_error
        return plan(observed, desired, self.ifname, now)

    # --- apply --------------------------------------------------------------------------

    def apply(self, desired: Desired, now: int) -> ApplyResult:
        from meshctl.firewall.apply import apply_filter_plan
        from meshctl.router.linux import apply_router

        backend = self.backend
        backend.ensure_device()
        self._record_device(desired.wg.listen_port)
        observed = self.observe()
        result = ApplyResult(plan(observed, desired, self.ifname, now))
        steps = result.plan
        try:
            backend.apply(steps.wg)
        except MeshctlError as exc:
            result.errors.append(exc)
        self._forwarding(tuple(op for op in steps.forwarding if not op.on), result)
        filter_ok = True
        if desired.policy_error:
            result.errors.append(MeshctlError(f"{desired.policy_error}; the last good packet filter is kept"))
            filter_ok = False
        elif observed.filter_error is not None:
            result.errors.append(observed.filter_error)
            filter_ok = False
        try:
            apply_filter_plan(steps.filter)
        except MeshctlError as exc:
            result.errors.append(exc)
            filter_ok = False
        if filter_ok:  # never forward without the policy for routed traffic in place
            self._forwarding(tuple(op for op in steps.forwarding if op.on), result)
        try:
            if not steps.router.is_empty():
                apply_router(self.ifname, steps.router)
        except MeshctlError as exc:
            result.errors.append(exc)
        else:
            backend.tune_sockets(desired.wg.listen_port)  # the link is up now: its sockets exist
        if not steps.policy_routing.is_empty():
            from meshctl.router.host import apply_policy_routing

            try:
                apply_policy_routing(self.ifname, steps.policy_routing)
            except MeshctlError as exc:
                result.errors.append(exc)
        result.dns_upstreams = observed.dns.upstreams if observed.dns.pointed_at_us else None
        try:
            setup = self.dns.apply(steps.dns)
        except MeshctlError as exc:
            result.errors.append(exc)
        else:
            if setup is not None:
                result.dns_upstreams = setup.upstreams
        for line in steps.describe(self.ifname):
            log.info("applied %s", line)
        return result

    def _forwarding(self, ops: tuple[SetForwarding, ...], result: ApplyResult) -> None:
        if not ops:
            return
        from meshctl.router.host import apply_forwarding, read_forwarding

        try:
            apply_forwarding(self.state_dir, read_forwarding(self.state_dir), ops)
        except MeshctlError as exc:
            result.errors.append(exc)

    def apply_endpoints(self, endpoints: dict[bytes, tuple[str, int]]) -> DeviceUpdate:
        """A WireGuard-only update: the endpoints (and keepalives) the path engine chose between
        passes, planned against the device like any plan (WireGuard may have roamed there by
        itself, or back); a peer the device does not have yet is left to the pass that adds it."""
        from meshctl.wg.kernel import link_present

        if not link_present(self.ifname):
            return DeviceUpdate()
        update = plan_endpoints(self.backend.read(), endpoints)
        self.backend.apply(update)
        for line in update.describe():
            log.info("applied wg: %s", line)
        return update

    def device_endpoint(self, key: NodePublic) -> str | None:
        """The endpoint WireGuard uses for `key` now (None: none, or no device)."""
        from meshctl.wg.kernel import link_present

        if not link_present(self.ifname):
            return None
        try:
            peer = next((p for p in self.backend.read().peers if p.public_key == key), None)
        except MeshctlError:
            return None
        return peer.endpoint if peer is not None else None

    def remove(self) -> None:
        """`meshctl down`: the interface with everything on it, the filter, and the resolver
        settings; only this namespace's wireguard-go, the one meshctl started."""
        from meshctl.firewall.apply import remove_table
        from meshctl.router.host import apply_forwarding, apply_policy_routing, read_forwarding, read_policy_routing
        from meshctl.router.linux import remove_router
        from meshctl.wg.kernel import link_kind

        self.dns.restore()
        # Routes through the mesh go first: the rules would send traffic to a table whose routes
        # point at an interface about to vanish. Then forwarding meshctl switched on.
        apply_policy_routing(self.ifname, plan_policy_routing(read_policy_routing(self.ifname), PolicyRoutingConfig()))
        forwarding = read_forwarding(self.state_dir)
        apply_forwarding(self.state_dir, forwarding, plan_forwarding(forwarding, frozenset()))
        if link_kind(self.ifname) is not None:
            remove_router(self.ifname)
        self.backend.remove_device(self._recorded_pid())
        remove_table()
        (self.state_dir / DEVICE_FILE).unlink(missing_ok=True)

    # --- device.json: which backend, why, and the wireguard-go meshctl started ----------

    def _record_device(self, listen_port: int) -> None:
        backend = self.backend
        doc = {"interface": self.ifname, "backend": backend.name, "reason": self.backend_reason,
               "listen_port": listen_port, "wireguard_go_pid": backend.pid()}
        path = self.state_dir / DEVICE_FILE
        data = (json.dumps(doc, indent=2) + "\n").encode()
        if not path.exists() or path.read_bytes() != data:
            atomic_write(path, data)

    def _recorded_pid(self) -> int | None:
        try:
            pid = json.loads((self.state_dir / DEVICE_FILE).read_text()).get("wireguard_go_pid")
        except (OSError, ValueError, AttributeError):
            return None
        return pid if isinstance(pid, int) else None
