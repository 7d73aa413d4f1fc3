"""Text the lab hands to nft and coturn: NAT profiles, loss, UDP blocking, a STUN-only config.

Pure: every function returns the text; `lab.core` feeds it to the tools.

NAT profiles (DESIGN.md, "Testing against the real thing"), all on one nft table per router:

| profile            | mapping                     | inbound filtering                      |
| ------------------ | --------------------------- | -------------------------------------- |
| port-restricted    | masquerade, port-preserving | replies from the exact address + port  |
| address-restricted | masquerade + cone map       | any port of an address we sent to      |
| full-cone          | masquerade + cone map       | anyone, once the mapping exists        |
| symmetric          | masquerade fully-random     | replies from the exact address + port  |
| masquerade         | bare masquerade, no filter  | whatever conntrack lets through        |

Linux conntrack already gives port preservation (endpoint-independent mapping as long as no
two inside sockets want the same port) and address-and-port-dependent filtering. The cone
profiles add endpoint-independent filtering with a dynamic map from the mapped port to the
inside address, filled from the conntrack reply tuple after source NAT.
The "drop ct state new from the WAN" rules are what a home router does; leaving them out
("masquerade") lets an early inbound packet create a conntrack entry that poisons the mapping.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

PORT_RESTRICTED: Final = "port-restricted"
ADDRESS_RESTRICTED: Final = "address-restricted"
FULL_CONE: Final = "full-cone"
SYMMETRIC: Final = "symmetric"
MASQUERADE: Final = "masquerade"
PROFILES: Final = (PORT_RESTRICTED, ADDRESS_RESTRICTED, FULL_CONE, SYMMETRIC, MASQUERADE)

NAT_TABLE: Final = "labnat"
LOSS_TABLE: Final = "lab_loss"
BLOCK_TABLE: Final = "lab_block"
# Idle lifetime of a cone mapping; matches conntrack's UDP timeout so the map and the NAT
# forget a mapping together (DESIGN.md: mappings expire after 30 s idle).
CONE_TIMEOUT_S: Final = 30
STUN_PORT: Final = 3478


def _check_ifname(name: str) -> str:
    # Interface names land inside nft strings; refuse anything that could break the quoting.
    if not name or len(name) > 15 or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(f"bad interface name: {name!r}")
    return name


def nat_ruleset(profile: str, wan: str, lan: str) -> str:
    """The nft script that turns a router namespace into a NAT of the given profile."""
    if profile not in PROFILES:
        raise ValueError(f"unknown NAT profile {profile!r}; choose one of {', '.join(PROFILES)}")
    wan, lan = _check_ifname(wan), _check_ifname(lan)
    cone = profile in (ADDRESS_RESTRICTED, FULL_CONE)
    masq = {
        PORT_RESTRICTED: "masquerade persistent",
        ADDRESS_RESTRICTED: "masquerade persistent",
        FULL_CONE: "masquerade persistent",
        SYMMETRIC: "masquerade fully-random",
        MASQUERADE: "masquerade",
    }[profile]
    lines = [f"table ip {NAT_TABLE} {{"]
    if cone:
        lines += [
            "  map cone { type inet_service : ipv4_addr . inet_service;"
            f" flags dynamic, timeout; timeout {CONE_TIMEOUT_S}s; }}",
            "  set contacted { type inet_service . ipv4_addr;"
            f" flags dynamic, timeout; timeout {CONE_TIMEOUT_S}s; }}",
        ]
    lines += ["  chain prerouting {", "    type nat hook prerouting priority dstnat;"]
    if profile == FULL_CONE:
        lines.append(f'    iifname "{wan}" udp dport @cone dnat ip to udp dport map @cone')
    elif profile == ADDRESS_RESTRICTED:
        lines.append(
            f'    iifname "{wan}" udp dport . ip saddr @contacted'
            " dnat ip to udp dport map @cone"
        )
    lines += ["  }", "  chain postrouting {", "    type nat hook postrouting priority srcnat;"]
    lines += [f'    oifname "{wan}" {masq}', "  }"]
    if cone:
        # After srcnat the reply tuple holds the mapped port: remember who owns it and whom
        # it has talked to. `update` refreshes the timeout on every outbound packet.
        lines += [
            "  chain record {",
            "    type filter hook postrouting priority srcnat + 10;",
            f'    oifname "{wan}" meta l4proto udp ct direction original'
            " update @cone { ct reply proto-dst : ct original ip saddr . ct original proto-src }",
            f'    oifname "{wan}" meta l4proto udp ct direction original'
            " update @contacted { ct reply proto-dst . ip daddr }",
            "  }",
        ]
    if profile != MASQUERADE:
        lines += [
            "  chain input {",
            "    type filter hook input priority filter;",
            f'    iifname "{wan}" ct state new drop',
            "  }",
            "  chain forward {",
            "    type filter hook forward priority filter;",
            f'    iifname "{wan}" ct status dnat accept',
            f'    iifname "{wan}" ct state new drop',
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def loss_ruleset(iface: str, loss_pct: int) -> str:
    """Drop `loss_pct` percent of the packets leaving `iface`, uniformly at random.

    Stands in for `tc qdisc ... netem loss`: the sch_netem module is missing on some kernels
    (this machine's among them), while nft's numgen is built in.
    """
    if not 0 < loss_pct <= 100:
        raise ValueError(f"loss must be in 1..100 percent, got {loss_pct}")
    iface = _check_ifname(iface)
    return (
        f"table inet {LOSS_TABLE} {{\n"
        "  chain postrouting {\n"
        "    type filter hook postrouting priority filter;\n"
        f'    oifname "{iface}" numgen random mod 100 < {loss_pct} drop\n'
        "  }\n"
        "}\n"
    )


def block_udp_ruleset(port: int | None = None) -> str:
    """Drop all UDP (or UDP to and from one port) in, out of and through a namespace."""
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"bad port {port}")
    rules = ["meta l4proto udp drop"] if port is None else [
        f"udp sport {port} drop",
        f"udp dport {port} drop",
    ]
    chains = []
    for hook in ("input", "output", "forward"):
        body = "".join(f"    {rule}\n" for rule in rules)
        chains.append(
            f"  chain {hook} {{\n    type filter hook {hook} priority filter - 10;\n{body}  }}\n"
        )
    return f"table inet {BLOCK_TABLE} {{\n" + "".join(chains) + "}\n"


def coturn_config(listen_ips: Sequence[str], run_dir: str, port: int = STUN_PORT) -> str:
    """A STUN-only coturn config: no TURN, no auth, no TLS, no CLI, files in `run_dir`.

    Written from scratch because Debian's default file turns off features (RFC 5780 answers
    among them). With two listening addresses coturn answers with OTHER-ADDRESS pointing at
    the second one and port+1, which is what mapping-behaviour tests need.
    """
    if not listen_ips:
        raise ValueError("coturn needs at least one listening address")
    lines = [
        f"listening-port={port}",
        f"alt-listening-port={port + 1}",
        *(f"listening-ip={ip}" for ip in listen_ips),
        "stun-only",
        "no-auth",
        "no-tls",
        "no-dtls",
        "no-cli",
        f"pidfile={run_dir}/turnserver.pid",
        f"userdb={run_dir}/turndb",
        f"log-file={run_dir}/turnserver.log",
        "simple-log",
        "no-stdout-log",
    ]
    return "\n".join(lines) + "\n"
