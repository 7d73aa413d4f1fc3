"""IP forwarding for a subnet router or exit node: the plan (pure; read and applied by router/host.py).

Forwarding is a host-wide switch that meshctl does not own. It turns it on for a family when this
node carries routes of that family, and remembers that it did (forwarding.json in the state
directory); when the routes go (un-approved, revoked, `meshctl down`) it turns off again only what
it turned on. While meshctl's switch is on, the nft forward chain drops forwarding between the
host's other interfaces (firewall/routed.py), so the host routes for the mesh and nothing else.
A host that already forwarded is left as it was, and its own routing untouched.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ForwardingState:
    """Forwarding per family now, and which of it meshctl turned on."""

    on: frozenset[int] = frozenset()  # IP versions forwarding now
    owned: frozenset[int] = frozenset()  # of those, the ones meshctl switched on


@dataclass(frozen=True, slots=True)
class SetForwarding:
    version: int
    on: bool

    def describe(self) -> str:
        key = "net.ipv4.ip_forward" if self.version == 4 else "net.ipv6.conf.all.forwarding"
        return f"sysctl {key}={int(self.on)}" + (" (for the routes this node carries)" if self.on else
                                                  " (meshctl had turned it on; no routes left)")


def plan_forwarding(state: ForwardingState, wanted: frozenset[int]) -> tuple[SetForwarding, ...]:
    """Turn on what is wanted and off; turn off only what meshctl turned on and no longer needs."""
    ops = [SetForwarding(v, True) for v in sorted(wanted - state.on)]
    ops += [SetForwarding(v, False) for v in sorted(state.owned - wanted) if v in state.on]
    return tuple(ops)


def owned_after(state: ForwardingState, ops: tuple[SetForwarding, ...]) -> frozenset[int]:
    owned = set(state.owned)
    for op in ops:
        (owned.add if op.on else owned.discard)(op.version)
    return frozenset(owned)
