"""Per-subsystem read -> plan -> apply, in a fixed order (the imperative shell).

Order, and why:
1. WireGuard device exists and has its key before peers (the key is in the same update).
2. The packet filter (nft table netdev meshctl hooked to the interface, and the strong host
   model in table inet meshctl) before the link comes up, so the interface never accepts a
   connection the policy forbids; after the device exists, since the filter's chains are
   bound to it.
3. Addresses/routes: routes need the link, and the link is brought up here, after
   the peers are configured.
4. On a subnet router or exit node, IP forwarding: switched off (when no longer needed) before
   the filter loses its router chains, switched on after the filter has them, so forwarding is
   never on without the policy for routed traffic.
5. meshctl's routing table and rules last (routes through the mesh: they need the link up, and
   the peer that carries them must already hold them in its allowed IPs).
A failed subsystem does not hide the others' results: errors are collected.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from meshctl.errors import MeshctlError
from meshctl.fsutil import atomic_write
from meshctl.router.config import RouterPlan, RouterState, plan_router
from meshctl.router.forwarding import ForwardingState, SetForwarding, owned_after, plan_forwarding
from meshctl.router.policy_routing import (
    PolicyRoutingConfig,
    PolicyRoutingPlan,
    PolicyRoutingState,
    plan_policy_routing,
)
from meshctl.wg.config import DeviceState, DeviceUpdate, apply_update, plan_update

if TYPE_CHECKING:
    from meshctl.agent.desired import Desired
    from meshctl.firewall.nft import Json
    from meshctl.firewall.routed import RouterSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Plan:
    wg: DeviceUpdate
    router: RouterPlan
    firewall: tuple[str, ...] = ()  # what changes in meshctl's nft table, if anything
    forwarding: tuple[SetForwarding, ...] = ()
    policy_routing: PolicyRoutingPlan = PolicyRoutingPlan()

    def is_empty(self) -> bool:
        return (self.wg.is_empty() and self.router.is_empty() and not self.firewall and not self.forwarding
                and self.policy_routing.is_empty())

    def describe(self, ifname: str) -> list[str]:
        return ([f"wg: {line}" for line in self.wg.describe()]
                + [f"firewall: {line}" for line in self.firewall]
                + [f"forwarding: {op.describe()}" for op in self.forwarding]
                + [f"route: {line}" for line in self.router.describe(ifname)]
                + [f"route: {line}" for line in self.policy_routing.describe(ifname)])


EMPTY_PLAN: Final = Plan(DeviceUpdate(), RouterPlan())


@dataclass(frozen=True, slots=True)
class HostRouting:
    """What a pass reads of the host's routing beyond the interface: meshctl's table and rules,
    and IP forwarding (with what meshctl switched on itself)."""

    policy: PolicyRoutingState = PolicyRoutingConfig()
    forwarding: ForwardingState = ForwardingState()


NOTHING_READ: Final = HostRouting()


def router_settings(desired: Desired, forwarding: ForwardingState,
                    ops: tuple[SetForwarding, ...]) -> RouterSettings | None:
    """The nft settings of a router, knowing whether meshctl owns forwarding once `ops` ran."""
    from dataclasses import replace

    if desired.router_settings is None:
        return None
    owned = owned_after(forwarding, ops) & desired.forwarding
    return replace(desired.router_settings, forwarding_owned=bool(owned))


@dataclass
class ApplyResult:
    plan: Plan
    errors: list[MeshctlError] = field(default_factory=list)
    device: DeviceState | None = None  # the WireGuard device after a successful apply


def plan_against(desired: Desired, wg_state: DeviceState, router_state: RouterState,
                 firewall_current: bool, host: HostRouting | None = None) -> Plan:
    host = host or NOTHING_READ
    firewall: tuple[str, ...] = ()
    if desired.packet_filter is not None and not firewall_current:
        pf = desired.packet_filter
        routed = (f", {len(pf.forward.rules)} for routed traffic to {len(pf.forward.routes)} prefixes"
                  if desired.router_settings is not None and pf.forward.routes else "")
        firewall = (f"replace table meshctl: {len(pf.rules)} allow rules for {pf.node}{routed}, default deny",)
    return Plan(plan_update(wg_state, desired.wg), plan_router(router_state, desired.router), firewall,
                plan_forwarding(host.forwarding, desired.forwarding),
                plan_policy_routing(host.policy, desired.policy_routing))


@dataclass(frozen=True, slots=True)
class Observed:
    """Everything a dry run reads from the host."""

    wg: DeviceState
    router: RouterState
    table: list[dict[str, Json]] | None  # meshctl's nft tables as listed; None when absent
    table_error: MeshctlError | None = None  # nft could not list it (raised only if a filter is wanted)
    host: HostRouting = NOTHING_READ


def firewall_current(desired: Desired, ifname: str, settings: RouterSettings | None = None) -> bool:
    from meshctl.firewall.apply import is_current, read_table

    if desired.packet_filter is None:
        return True
    return is_current(desired.packet_filter, ifname, read_table(), router=settings)


class Reconciler:
    """Owns one interface: meshctl's WireGuard device and its addresses and routes."""

    def __init__(self, ifname: str, backend_choice: str, state_dir: Path) -> None:
        self.ifname = ifname
        self.backend_choice = backend_choice
        self.state_dir = state_dir
        self._backend: object | None = None
        self.backend_reason = ""

    @property
    def backend(self):  # type: ignore[no-untyped-def]
        from meshctl.wg.backend import open_backend

        if self._backend is None:
            self._backend, self.backend_reason = open_backend(self.ifname, self.backend_choice)
        return self._backend

    def read_actual(self) -> tuple[DeviceState, RouterState]:
        """What is on the host now; an absent interface reads as empty."""
        from meshctl.wg.kernel import link_present

        if not link_present(self.ifname):
            return DeviceState(), RouterState()
        from meshctl.router.linux import read_router

        return self.backend.read(), read_router(self.ifname)

    def read_host_routing(self) -> HostRouting:
        from meshctl.router.host import read_forwarding, read_policy_routing

        return HostRouting(read_policy_routing(self.ifname), read_forwarding(self.state_dir))

    def dry_run(self, desired: Desired) -> Plan:
        return self.plan_observed(desired, self.observe())

    def observe(self) -> Observed:
        from meshctl.firewall.apply import read_table

        wg_state, router_state = self.read_actual()
        host = self.read_host_routing()
        try:
            return Observed(wg_state, router_state, read_table(), host=host)
        except MeshctlError as exc:
            return Observed(wg_state, router_state, None, exc, host)

    def plan_observed(self, desired: Desired, observed: Observed) -> Plan:
        from meshctl.agent.desired import keep_working_endpoints
        from meshctl.firewall.apply import is_current

        desired = keep_working_endpoints(desired, observed.wg, int(time.time()))
        pf = desired.packet_filter
        if pf is not None and observed.table_error is not None:
            raise observed.table_error
        fwd = plan_forwarding(observed.host.forwarding, desired.forwarding)
        settings = router_settings(desired, observed.host.forwarding, fwd)
        current = pf is None or is_current(pf, self.ifname, observed.table, router=settings)
        return plan_against(desired, observed.wg, observed.router, current, observed.host)

    def apply(self, desired: Desired) -> ApplyResult:
        from meshctl.agent.desired import keep_working_endpoints
        from meshctl.router.linux import apply_router, read_router

        backend = self.backend
        backend.ensure_device()
        self._record_backend(desired.wg.listen_port)
        wg_state = backend.read()
        desired = keep_working_endpoints(desired, wg_state, int(time.time()))
        host = self.read_host_routing()
        settings = router_settings(desired, host.forwarding, plan_forwarding(host.forwarding, desired.forwarding))
        plan = plan_against(desired, wg_state, read_router(self.ifname),
                            firewall_current(desired, self.ifname, settings), host)
        result = ApplyResult(plan)
        try:
            backend.apply(plan.wg)
        except MeshctlError as exc:
            result.errors.append(exc)
        else:
            # What the device now holds, predicted instead of read back (a read costs O(peers));
            # a wrong prediction only costs one more full pass, which records what it reads.
            result.device = apply_update(wg_state, plan.wg)
        self._forwarding(host.forwarding, tuple(op for op in plan.forwarding if not op.on), result)
        firewall_ok = True
        if desired.policy_error:
            result.errors.append(MeshctlError(f"{desired.policy_error}; the last good packet filter is kept"))
            firewall_ok = False
        elif plan.firewall and desired.packet_filter is not None:
            from meshctl.firewall.apply import apply_filter

            try:
                apply_filter(desired.packet_filter, self.ifname, router=settings)
            except MeshctlError as exc:
                result.errors.append(exc)
                firewall_ok = False
        if firewall_ok:  # never forward without the policy for routed traffic in place
            self._forwarding(host.forwarding, tuple(op for op in plan.forwarding if op.on), result)
        try:
            if not plan.router.is_empty():  # an empty plan would only read the state again
                apply_router(self.ifname, plan.router)
        except MeshctlError as exc:
            result.errors.append(exc)
        else:
            backend.tune_sockets(desired.wg.listen_port)  # the link is up now: its sockets exist
        if not plan.policy_routing.is_empty():
            from meshctl.router.host import apply_policy_routing

            try:
                apply_policy_routing(self.ifname, plan.policy_routing)
            except MeshctlError as exc:
                result.errors.append(exc)
        for line in plan.describe(self.ifname):
            log.info("applied %s", line)
        return result

    def _forwarding(self, state: ForwardingState, ops: tuple[SetForwarding, ...], result: ApplyResult) -> None:
        if not ops:
            return
        from meshctl.router.host import apply_forwarding, read_forwarding

        try:
            apply_forwarding(self.state_dir, read_forwarding(self.state_dir), ops)
        except MeshctlError as exc:
            result.errors.append(exc)

    def remove(self) -> None:
        from meshctl.firewall.apply import remove_table
        from meshctl.router.host import apply_forwarding, apply_policy_routing, read_forwarding, read_policy_routing
        from meshctl.router.linux import remove_router
        from meshctl.wg.kernel import link_kind

        # Routes through the mesh go first: the rules would send traffic to a table whose routes
        # point at an interface about to vanish. Then forwarding meshctl switched on.
        apply_policy_routing(self.ifname, plan_policy_routing(read_policy_routing(self.ifname), PolicyRoutingConfig()))
        forwarding = read_forwarding(self.state_dir)
        apply_forwarding(self.state_dir, forwarding, plan_forwarding(forwarding, frozenset()))
        if link_kind(self.ifname) is not None:
            remove_router(self.ifname)
        self.backend.remove_device()
        remove_table()
        (self.state_dir / "device.json").unlink(missing_ok=True)

    def _record_backend(self, listen_port: int) -> None:
        doc = {"interface": self.ifname, "backend": self.backend.name, "reason": self.backend_reason,
               "listen_port": listen_port}
        path = self.state_dir / "device.json"
        data = (json.dumps(doc, indent=2) + "\n").encode()
        if not path.exists() or path.read_bytes() != data:
            atomic_write(path, data)
