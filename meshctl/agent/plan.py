"""What a pass would change, per subsystem, as data (pure).

    plan(observed, desired, interface, now) -> Plan(wg, filter, router, dns, forwarding, policy_routing)

`observed` is what every subsystem's read returned (agent/reconcile.py); each part of the plan
is that subsystem's own pure planner: wg.config.plan_update, firewall.plan.plan_filter,
router.config.plan_router, dns.os_plan.plan_dns, router.forwarding.plan_forwarding,
router.policy_routing.plan_policy_routing. `sync --dry-run` prints `describe()`, tests
compare plans for equality, and an empty plan is a no-op pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Final

from meshctl.agent.desired import KEEPALIVE_S, Desired
from meshctl.dns.os_plan import DnsPlan, DnsState, plan_dns
from meshctl.errors import MeshctlError
from meshctl.firewall.plan import FilterPlan, FilterState, plan_filter
from meshctl.keys import NodePublic
from meshctl.router.config import RouterPlan, RouterState, plan_router
from meshctl.router.forwarding import ForwardingState, SetForwarding, owned_after, plan_forwarding
from meshctl.router.policy_routing import (
    PolicyRoutingConfig,
    PolicyRoutingPlan,
    PolicyRoutingState,
    plan_policy_routing,
)
from meshctl.wg.config import HANDSHAKE_FRESH_S, DeviceConfig, DeviceState, DeviceUpdate, PeerUpdate, plan_update

if TYPE_CHECKING:
    from meshctl.firewall.routed import RouterSettings


@dataclass(frozen=True, slots=True)
class Observed:
    """Everything a pass reads from the host, one value per subsystem."""

    wg: DeviceState
    router: RouterState
    filter: FilterState | None  # None: nft could not be read (filter_error says why)
    dns: DnsState
    filter_error: MeshctlError | None = field(default=None, compare=False)
    policy: PolicyRoutingState = PolicyRoutingConfig()  # meshctl's routing table and rules
    forwarding: ForwardingState = ForwardingState()  # IP forwarding, and what meshctl switched on


@dataclass(frozen=True, slots=True)
class Plan:
    wg: DeviceUpdate = DeviceUpdate()
    filter: FilterPlan = FilterPlan()
    router: RouterPlan = RouterPlan()
    dns: DnsPlan = DnsPlan()
    forwarding: tuple[SetForwarding, ...] = ()
    policy_routing: PolicyRoutingPlan = PolicyRoutingPlan()

    def is_empty(self) -> bool:
        return (self.wg.is_empty() and self.filter.is_empty() and self.router.is_empty() and self.dns.is_empty()
                and not self.forwarding and self.policy_routing.is_empty())

    def describe(self, ifname: str) -> list[str]:
        """One line per change, subsystem by subsystem in the order they are applied."""
        return ([f"wg: {line}" for line in self.wg.describe()]
                + [f"firewall: {line}" for line in self.filter.describe()]
                + [f"forwarding: {op.describe()}" for op in self.forwarding]
                + [f"route: {line}" for line in self.router.describe(ifname)]
                + [f"route: {line}" for line in self.policy_routing.describe(ifname)]
                + [f"dns: {line}" for line in self.dns.describe()])


EMPTY_PLAN: Final = Plan()


def keep_working_endpoints(wanted: DeviceConfig, state: DeviceState, now: int) -> DeviceConfig:
    """A peer whose tunnel works keeps the endpoint WireGuard uses, when nothing better is known.

    WireGuard may have roamed there, and after an agent restart the path engine knows no
    paths yet: overwriting a working tunnel would cost a write now and another one later.
    """
    working = {p.public_key.raw: p.endpoint for p in state.peers
               if p.endpoint and p.last_handshake and now - p.last_handshake < HANDSHAKE_FRESH_S}
    kept = {want.public_key.raw for want in wanted.peers if want.endpoint is None} & working.keys()
    if not kept:  # nothing to keep (a cron pass gives every peer its static endpoint): no new config
        return wanted
    peers = tuple(replace(want, endpoint=working[want.public_key.raw], persistent_keepalive=KEEPALIVE_S)
                  if want.public_key.raw in kept else want for want in wanted.peers)
    return replace(wanted, peers=peers)


def router_settings(desired: Desired, forwarding: ForwardingState,
                    ops: tuple[SetForwarding, ...]) -> RouterSettings | None:
    """The nft settings of a subnet router or exit node, knowing whether meshctl owns IP
    forwarding once `ops` ran (the filter then also guards what is forwarded)."""
    if desired.router_settings is None:
        return None
    owned = owned_after(forwarding, ops) & desired.forwarding
    return replace(desired.router_settings, forwarding_owned=bool(owned))


def plan(observed: Observed, desired: Desired, interface: str, now: int) -> Plan:
    """Every subsystem's plan from what it holds to what is desired. The filter keeps the last
    good table when the policy did not compile or nft could not be read (both are errors of
    the pass, reported by its caller)."""
    forwarding = plan_forwarding(observed.forwarding, desired.forwarding)
    settings = router_settings(desired, observed.forwarding, forwarding)
    return Plan(
        wg=plan_update(observed.wg, keep_working_endpoints(desired.wg, observed.wg, now)),
        filter=(plan_filter(observed.filter, desired.packet_filter, interface, settings) if observed.filter
                else FilterPlan()),
        router=plan_router(observed.router, desired.router),
        dns=plan_dns(observed.dns, desired.dns),
        forwarding=forwarding,
        policy_routing=plan_policy_routing(observed.policy, desired.policy_routing),
    )


def plan_endpoints(state: DeviceState, wanted: Mapping[bytes, tuple[str, int]]) -> DeviceUpdate:
    """A WireGuard-only update between passes: the endpoints (and keepalives) the path engine
    chose that the device does not hold yet. Peers it does not have are left to the next pass."""
    have = {p.public_key.raw: p for p in state.peers}
    changes = []
    for raw, (endpoint, keepalive) in sorted(wanted.items()):
        peer = have.get(raw)
        if peer is None or (peer.endpoint, peer.persistent_keepalive) == (endpoint, keepalive):
            continue
        changes.append(PeerUpdate(NodePublic(raw), update_only=True,
                                  endpoint=endpoint if peer.endpoint != endpoint else None,
                                  persistent_keepalive=keepalive if peer.persistent_keepalive != keepalive else None))
    return DeviceUpdate(peers=tuple(changes))
