"""Apply a PacketFilter with nft (shell): one transaction, read back, skip when equal.

`nft -j -f -` loads the document from nft.replace_document() atomically: the
kernel swaps the old rules for the new ones in a single commit, so there is no
instant without rules. Before applying, the table is read back with
`nft -j list table inet meshctl` and compared with what the document would create:
equal means nothing to do (level-triggered: a manual edit or a missing table is
repaired on the next pass). The listing also tells the document whether the reply
sets can stay, with the UDP flows they hold.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from meshctl.errors import MeshctlError
from meshctl.firewall import nft

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


def read_table(netns: str | None = None) -> list[dict[str, nft.Json]] | None:
    """The table as it is in the kernel (no handles), or None when it does not exist."""
    result = _run(["-j", "list", "table", nft.FAMILY, nft.TABLE], netns)
    if result.returncode != 0:
        if "No such file or directory" in result.stderr:
            return None
        raise FirewallError(f"nft list table {nft.FAMILY} {nft.TABLE}: {_first_line(result.stderr)}")
    try:
        return nft.listed_objects(json.loads(result.stdout))
    except ValueError as exc:  # includes json.JSONDecodeError
        raise FirewallError(f"nft printed a listing meshctl cannot read: {exc}") from None


def _load(document: nft.Json, netns: str | None) -> None:
    result = _run(["-j", "-f", "-"], netns, stdin=json.dumps(document))
    if result.returncode != 0:
        raise FirewallError(f"nft refused the ruleset: {_first_line(result.stderr)}")


def apply_filter(pf: PacketFilter, interface: str, netns: str | None = None) -> bool:
    """Make table inet meshctl enforce `pf` on `interface`; False when it already did."""
    current = read_table(netns)
    if current == nft.table_objects(pf, interface):
        log.debug("nft table %s already up to date", nft.TABLE)
        return False
    _load(nft.replace_document(pf, interface, current), netns)
    log.info("applied nft table %s: %d rules for %s", nft.TABLE, len(pf.rules), pf.node)
    return True


def remove_table(netns: str | None = None) -> bool:
    """Delete meshctl's table (`meshctl down`); False when there was none."""
    if read_table(netns) is None:
        return False
    _load(nft.delete_document(), netns)
    log.info("removed nft table %s", nft.TABLE)
    return True
