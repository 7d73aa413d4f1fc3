"""Human renderings of result values (pure)."""

from __future__ import annotations

from meshctl.coord.netmap import NetMap
from meshctl.coord.records import format_time


def render_netmap(nm: NetMap) -> str:
    me = nm.self_peer
    lines = [
        f"mesh {nm.network.name} serial {nm.serial} (expires {format_time(nm.expires)}), "
        f"domain {nm.network.domain}",
    ]
    if me is not None:
        lines.append(f"self {me.name}: {' '.join(str(a) for a in me.addresses)} "
                     f"{me.wg_public_key.short()}")
    others = nm.others()
    lines.append(f"{len(others)} peers:")
    for p in others:
        extra = f" endpoints {','.join(p.endpoints)}" if p.endpoints else ""
        tags = f" {','.join(p.tags)}" if p.tags else ""
        lines.append(f"  peer {p.name}: {' '.join(str(a) for a in p.addresses)} "
                     f"{p.wg_public_key.short()}{tags}{extra}")
    return "\n".join(lines)
