"""The policy's `autoApprovers`: which advertised routes an admin's plain approval covers (pure).

`auto_approved(policy, device, advertised_routes, exit_node)` is for the approval step (`meshctl
admin approve`): it says which of a device's advertised routes, and whether its exit-node use,
the policy approves without the admin naming them. A route is approved when it lies wholly
inside a `routes` entry that names the device (its user, one of its groups, one of its tags,
`autogroup:member` or `autogroup:tagged`, with Tailscale's meaning: a tagged device is its
tags, not its owner). The default routes 0.0.0.0/0 and ::/0 are exit-node routes: only
`exitNode` approves them, never a `routes` entry.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from meshctl.policy import addrset
from meshctl.policy.addrset import Prefix
from meshctl.policy.compile import Identity, identity_match, peer_identities
from meshctl.policy.model import Alias, Policy


@dataclass(frozen=True, slots=True)
class AutoApproval:
    routes: tuple[Prefix, ...]  # the advertised routes the policy approves, in the order given
    exit_node: bool  # the device advertises exit-node use and the policy approves it


def is_default_route(route: Prefix) -> bool:
    return route.prefixlen == 0


def auto_approved(
    policy: Policy, device: Identity, advertised_routes: Sequence[Prefix | str], exit_node: bool
) -> AutoApproval:
    """The advertised routes (and exit-node use) `policy.auto_approvers` approves for `device`.

    `advertised_routes` may hold 0.0.0.0/0 and ::/0 (Tailscale advertises an exit node that
    way): they count as exit-node use. A route given as text must be a CIDR (ValueError if not).
    """
    identities = peer_identities(policy, device)
    routes = [r if not isinstance(r, str) else ipaddress.ip_network(r, strict=False) for r in advertised_routes]
    wants_exit = exit_node or any(is_default_route(r) for r in routes)

    def names(approvers: Sequence[Alias]) -> bool:
        return any(identity_match(a, identities) for a in approvers)

    covering = [entry.spans for entry in policy.auto_approvers.routes if names(entry.approvers)]
    approved = tuple(
        r for r in routes
        if not is_default_route(r) and any(addrset.contains(spans, addrset.span_of(r)) for spans in covering)
    )
    return AutoApproval(approved, wants_exit and names(policy.auto_approvers.exit_node))
