"""Read meshctl's nft table and load plans into it (shell around firewall/plan.py).

    read_filter -> plan.plan_filter (pure) -> apply_filter_plan

`nft -j -f -` loads the plan's document atomically: the kernel swaps the old rules for the
new ones in a single commit, so there is no instant without rules. Every pass reads the
tables back (`nft -j list tables`, then each of ours) and plans against what is there
(level-triggered: a manual edit, a missing table or chains gone with a recreated interface
are repaired on the next pass). The listing also tells the document whether the reply sets
can stay, with the UDP flows they hold.

The layout (nft.py) is DEVICE where the interface exists and the kernel and nft can bind a
chain to its egress hook (asked once per process with `nft -c`), else HOOKS.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from meshctl.errors import MeshctlError
from meshctl.firewall import nft
from meshctl.firewall.plan import FilterPlan, FilterState, enforces, plan_filter

if TYPE_CHECKING:
    from meshctl.policy.compile import PacketFilter

log = logging.getLogger(__name__)

NFT_TIMEOUT_S: Final = 30.0  # a 1,000-peer ruleset loads in well under a second


class FirewallError(MeshctlError):
    """nft is missing or refused the ruleset."""


def _command(args: Sequence[str], netns: str | None) -> list[str]:
    binary = shutil.which("nft")
    if binary is None:
        raise FirewallError("nft not found", hint="install nftables (apt-get install nftables)")
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return [*prefix, binary, *args]


def _run(args: Sequence[str], netns: str | None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _command(args, netns),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=NFT_TIMEOUT_S,
        check=False,
    )


def _first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "no output")


def _listing(args: Sequence[str], netns: str | None) -> list[dict[str, nft.Json]]:
    result = _run(["-j", "list", *args], netns)
    if result.returncode != 0:
        raise FirewallError(f"nft list {' '.join(args)}: {_first_line(result.stderr)}")
    try:
        return nft.listed_objects(json.loads(result.stdout))
    except ValueError as exc:  # includes json.JSONDecodeError
        raise FirewallError(f"nft printed a listing meshctl cannot read: {exc}") from None


def read_table(netns: str | None = None) -> list[dict[str, nft.Json]] | None:
    """meshctl's tables as they are in the kernel (no handles), or None when there is none."""
    tables = set()
    for item in _listing(["tables"], netns):
        body = item.get("table")
        if isinstance(body, dict):
            tables.add((body.get("family"), body.get("name")))
    objects: list[dict[str, nft.Json]] = []
    for family in nft.FAMILIES:
        if (family, nft.TABLE) in tables:
            objects += _listing(["table", family, nft.TABLE], netns)
    return objects or None


def _interface_exists(interface: str, netns: str | None) -> bool:
    if netns is None:
        return os.path.exists(f"/sys/class/net/{interface}")
    probe = subprocess.run(["ip", "-n", netns, "link", "show", "dev", interface], capture_output=True,
                           timeout=NFT_TIMEOUT_S, check=False)
    return probe.returncode == 0


# (netns, interface) -> whether a chain can be bound to the interface's egress hook.
_DEVICE_HOOKS: dict[tuple[str | None, str], bool] = {}


def layout_for(interface: str, netns: str | None = None) -> nft.Layout:
    """DEVICE where the interface exists and its hooks can be used; HOOKS otherwise (by name)."""
    if not _interface_exists(interface, netns):
        return nft.Layout.HOOKS
    key = (netns, interface)
    if key not in _DEVICE_HOOKS:
        check = _run(["-c", "-j", "-f", "-"], netns, stdin=json.dumps(nft.probe_document(interface)))
        _DEVICE_HOOKS[key] = check.returncode == 0
        if check.returncode != 0:
            log.warning("nft cannot hook %s itself (%s; Linux 5.16 and nft 1.0.1 can): filtering with "
                        "prerouting/postrouting hooks, which every packet of the host passes",
                        interface, _first_line(check.stderr))
    return nft.Layout.DEVICE if _DEVICE_HOOKS[key] else nft.Layout.HOOKS


def read_filter(interface: str, netns: str | None = None) -> FilterState:
    """meshctl's tables and the layout due on `interface`. A table bound to the device proves
    the device layout works, so the steady state runs no probe."""
    table = read_table(netns)
    if (table is not None and any(_family(o) == nft.Layout.DEVICE.family for o in table)
            and _interface_exists(interface, netns)):
        return FilterState(table, nft.Layout.DEVICE)
    return FilterState(table, layout_for(interface, netns))


def _family(obj: dict[str, nft.Json]) -> object:
    body = next(iter(obj.values()))
    return body.get("family") if isinstance(body, dict) else None


def is_current(pf: PacketFilter, interface: str, current: list[dict[str, nft.Json]] | None,
               netns: str | None = None, router: nft.RouterSettings | None = None) -> bool:
    """Whether `current` (read_table) already enforces `pf` on `interface`, in the layout due
    (with `router`, also the rules of a subnet router or exit node: firewall/routed.py)."""
    if current is not None and current == nft.table_objects(pf, interface, nft.Layout.DEVICE, router):
        return True  # no probe needed: the kernel took the device layout
    return enforces(FilterState(current, layout_for(interface, netns)), pf, interface, router)


def _load(document: nft.Json, netns: str | None) -> None:
    result = _run(["-j", "-f", "-"], netns, stdin=json.dumps(document))
    if result.returncode != 0:
        raise FirewallError(f"nft refused the ruleset: {_first_line(result.stderr)}")


def apply_filter_plan(plan: FilterPlan, netns: str | None = None) -> None:
    """Load the plan's transaction (nothing for an empty plan)."""
    if plan.document is None:
        return
    _load(plan.document, netns)
    log.info("applied nft: %s", plan.summary)


def apply_filter(pf: PacketFilter, interface: str, netns: str | None = None,
                 router: nft.RouterSettings | None = None) -> bool:
    """Read, plan, apply: make meshctl's table enforce `pf` on `interface` (with `router`, a
    subnet router's or exit node's rules too); False when it already did."""
    plan = plan_filter(read_filter(interface, netns), pf, interface, router)
    apply_filter_plan(plan, netns)
    return not plan.is_empty()


def remove_table(netns: str | None = None) -> bool:
    """Delete meshctl's tables (`meshctl down`); False when there was none."""
    if read_table(netns) is None:
        return False
    _load(nft.delete_document(), netns)
    log.info("removed nft table %s", nft.TABLE)
    return True
