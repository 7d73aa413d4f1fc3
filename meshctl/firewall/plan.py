"""meshctl's nft table: what it holds, what it should hold, and the transaction between (pure).

    state = read_filter(interface)            (firewall/apply.py: `nft -j list`)
    plan = plan_filter(state, pf, interface)  (here: data, compared by tests, printed by --dry-run)
    apply_filter_plan(plan)                   (firewall/apply.py: one `nft -j -f -` transaction)

The plan is empty when the table already enforces the filter in the layout due; otherwise it
carries the one document that makes it so (nft.replace_document, which keeps the reply sets
when only the rules change).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshctl.firewall import nft

if TYPE_CHECKING:
    from meshctl.firewall.routed import RouterSettings
    from meshctl.policy.compile import PacketFilter


@dataclass(frozen=True, slots=True)
class FilterState:
    """meshctl's tables as nft lists them (None: there are none) and the layout this host can use."""

    table: list[dict[str, nft.Json]] | None
    layout: nft.Layout


@dataclass(frozen=True, slots=True)
class FilterPlan:
    """The transaction to load (None: the table is as wanted) and what it does, in one line."""

    document: dict[str, nft.Json] | None = None
    summary: str = ""

    def is_empty(self) -> bool:
        return self.document is None

    def describe(self) -> list[str]:
        return [self.summary] if self.document is not None else []


def enforces(state: FilterState, pf: PacketFilter, interface: str, router: RouterSettings | None = None) -> bool:
    """Whether the table already enforces `pf` on `interface` (a device-bound table the kernel
    took counts whatever layout was probed: it is proof the device layout works here); with
    `router`, the rules of a subnet router or exit node too (firewall/routed.py)."""
    if state.table is None:
        return False
    if state.table == nft.table_objects(pf, interface, nft.Layout.DEVICE, router):
        return True
    return (state.layout is nft.Layout.HOOKS
            and state.table == nft.table_objects(pf, interface, nft.Layout.HOOKS, router))


def plan_filter(state: FilterState, pf: PacketFilter | None, interface: str,
                router: RouterSettings | None = None) -> FilterPlan:
    """The transaction that makes meshctl's table enforce `pf`; `pf` None (the policy did not
    compile) plans nothing: the last good filter stays."""
    if pf is None or enforces(state, pf, interface, router):
        return FilterPlan()
    layout = state.layout
    document = nft.replace_document(pf, interface, state.table, layout, router)
    routed = (f", {len(pf.forward.rules)} for routed traffic to {len(pf.forward.routes)} prefixes"
              if router is not None and pf.forward.routes else "")
    return FilterPlan(document, f"replace table {layout.family} {nft.TABLE}: {len(pf.rules)} allow rules "
                                f"for {pf.node}{routed}, default deny")
