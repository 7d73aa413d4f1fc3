"""`meshctl admin approve NAME --routes ...` and `meshctl admin routes`: which advertised routes an
admin approves, and the table of routes (pure).

`--routes` names the approved set exactly: `all` (every advertised route, and exit-node use if
advertised), `exit`, `none`, or a comma list of advertised CIDRs and the word `exit`. Without
`--routes`, an approval keeps what was approved and is still advertised, and adds what the policy's
`autoApprovers` approve (Tailscale: routes covered by autoApprovers need no admin click).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from meshctl.coord import routes
from meshctl.coord.records import Assignment, PeerRecord
from meshctl.coord.routes import EXIT_ROUTES, Prefix
from meshctl.errors import UsageError

ALL: Final = "all"
NONE: Final = "none"
EXIT: Final = "exit"


@dataclass(frozen=True, slots=True)
class RoutesChoice:
    """What `--routes` says: every advertised route, or exactly the listed ones."""

    every: bool = False
    routes: tuple[Prefix, ...] = ()
    exit_node: bool = False


def parse_routes_option(text: str) -> RoutesChoice:
    """`all`, `none`, `exit`, or CIDR[,CIDR...] with `exit` allowed among them."""
    words = [w.strip() for w in text.split(",")]
    if words == [ALL]:
        return RoutesChoice(every=True)
    if words == [NONE] or words == [""]:
        return RoutesChoice()
    chosen: list[Prefix] = []
    exit_node = False
    for word in words:
        if word == EXIT:
            exit_node = True
            continue
        if word in (ALL, NONE):
            raise UsageError(f"--routes {text[:80]!r}: {word!r} stands alone")
        try:
            route = routes.parse_route(word)
        except ValueError as exc:
            raise UsageError(f"--routes: {exc}", "give all, exit, none, or CIDR[,CIDR...]") from None
        if routes.is_exit_route(route):
            exit_node = True  # Tailscale's spelling of an exit node: 0.0.0.0/0,::/0
        else:
            chosen.append(route)
    return RoutesChoice(routes=routes.canonical(chosen), exit_node=exit_node)


def decide(record: PeerRecord, current: Sequence[Prefix], choice: RoutesChoice | None,
           auto_routes: Sequence[Prefix] = (), auto_exit: bool = False) -> tuple[Prefix, ...]:
    """The routes state.json approves for `record`'s device after this approval.

    `choice` None (a plain approve): the still-advertised part of `current`, plus what
    autoApprovers approve (`auto_routes`, `auto_exit`). A route the device does not advertise
    is never approved: UsageError names it and what is advertised.
    """
    advertised = set(record.advertise_routes)
    if choice is None:
        kept = [r for r in current if (record.advertise_exit_node if routes.is_exit_route(r) else r in advertised)]
        kept += [r for r in auto_routes if r in advertised]
        if auto_exit and record.advertise_exit_node:
            kept += EXIT_ROUTES
        return routes.canonical(kept)
    if choice.every:
        return routes.canonical([*record.advertise_routes, *(EXIT_ROUTES if record.advertise_exit_node else ())])
    missing = [r for r in choice.routes if r not in advertised]
    if missing:
        offered = ", ".join(str(r) for r in record.advertise_routes) or "none"
        raise UsageError(f"--routes {missing[0]}: {record.name} does not advertise it (advertised: {offered})",
                         "the device runs `meshctl set --advertise-routes ...` first, or approve only what it offers")
    if choice.exit_node and not record.advertise_exit_node:
        raise UsageError(f"--routes exit: {record.name} does not advertise an exit node",
                         "the device runs `meshctl set --advertise-exit-node` first")
    return routes.canonical([*choice.routes, *(EXIT_ROUTES if choice.exit_node else ())])


def describe_routes(items: Sequence[Prefix]) -> str:
    """`192.168.1.0/24, exit node`: the exit routes as words, the rest as CIDRs."""
    words = [str(r) for r in items if not routes.is_exit_route(r)]
    if any(routes.is_exit_route(r) for r in items):
        words.append("exit node")
    return ", ".join(words) or "none"


def approval_notes(name: str, before: Sequence[Prefix], after: Sequence[Prefix]) -> list[str]:
    """What an approval changed in NAME's routes, for the admin to read (empty: nothing)."""
    if tuple(before) == tuple(after):
        return []
    return [f"routes of {name}: {describe_routes(before)} -> {describe_routes(after)}"]


# --- `meshctl admin routes` ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteRow:
    """One route of one member, as `meshctl admin routes` lists it."""

    member: str
    route: str  # a CIDR, or "exit node"
    advertised: bool  # by the member's signed record
    approved: bool  # by state.json
    pending: bool  # advertised by an update request not approved yet (requests/NAME.json)
    ha_group: tuple[str, ...] = ()  # every member carrying the same prefix, when more than one

    @property
    def in_use(self) -> bool:
        return self.advertised and self.approved

    def as_json(self) -> dict[str, object]:
        return {"member": self.member, "route": self.route, "advertised": self.advertised,
                "approved": self.approved, "in_use": self.in_use, "pending_update": self.pending,
                "ha_group": list(self.ha_group)}


def route_rows(peers: Mapping[str, Assignment], recs: Mapping[str, PeerRecord],
               pending: Mapping[str, PeerRecord]) -> list[RouteRow]:
    """Every route any member advertises, approves or asks for in a pending update, by member."""
    carriers = {}
    for name, a in peers.items():
        if name in recs:
            carriers[name] = routes.effective_routes(recs[name].advertise_routes, recs[name].advertise_exit_node,
                                                     a.routes).routes
    groups = routes.ha_groups(carriers)
    rows: list[RouteRow] = []
    for name in sorted(set(peers) | set(pending)):
        rec, update = recs.get(name), pending.get(name)
        approved = peers[name].routes if name in peers else ()
        subnet = routes.canonical([*(rec.advertise_routes if rec else ()), *(update.advertise_routes if update else ()),
                                   *(r for r in approved if not routes.is_exit_route(r))])
        for r in subnet:
            rows.append(RouteRow(name, str(r), rec is not None and r in rec.advertise_routes, r in approved,
                                 update is not None and r in update.advertise_routes and r not in approved,
                                 groups.get(r, ())))
        exit_adv = rec is not None and rec.advertise_exit_node
        exit_ok = all(r in approved for r in EXIT_ROUTES)
        exit_pending = update is not None and update.advertise_exit_node and not exit_ok
        if exit_adv or exit_ok or exit_pending:
            rows.append(RouteRow(name, "exit node", exit_adv, exit_ok, exit_pending))
    return rows


def render_rows(rows: Sequence[RouteRow]) -> str:
    if not rows:
        return "no member advertises or has approved routes"
    lines = [f"{'MEMBER':<20} {'ROUTE':<44} STATE"]
    for row in rows:
        if row.in_use:
            state = "in use (advertised, approved)"
        elif row.approved:
            state = "approved, not advertised (unused)"
        elif row.pending:
            state = "pending update (admin approve to apply)"
        else:
            state = f"advertised, not approved (meshctl admin approve {row.member} --routes ...)"
        if row.ha_group:
            state += f"; HA group: {', '.join(row.ha_group)}"
        lines.append(f"{row.member:<20} {row.route:<44} {state}")
    return "\n".join(lines)
