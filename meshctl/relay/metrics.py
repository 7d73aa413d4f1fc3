"""The relay's Prometheus text (GET /metrics), built from its core's counters (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from meshctl.relay.server_core import RelayCore


@dataclass(frozen=True, slots=True)
class Gauges:
    """What the shell knows and the core does not."""

    udp_client_sockets: int
    tcp_connections: int
    serial: int  # of the accepted coordination state; 0 before the first


def metrics_text(core: RelayCore, gauges: Gauges) -> str:
    s = core.stats
    lines = [
        "# HELP meshctl_relay_clients Authenticated clients connected now.",
        "# TYPE meshctl_relay_clients gauge",
        f"meshctl_relay_clients {core.sessions}",
        "# HELP meshctl_relay_udp_client_sockets Per-client UDP sockets (one per logged-in UDP client).",
        "# TYPE meshctl_relay_udp_client_sockets gauge",
        f"meshctl_relay_udp_client_sockets {gauges.udp_client_sockets}",
        "# HELP meshctl_relay_tcp_connections TCP/TLS connections open now (logged in or not).",
        "# TYPE meshctl_relay_tcp_connections gauge",
        f"meshctl_relay_tcp_connections {gauges.tcp_connections}",
        "# HELP meshctl_relay_packets_total Relayed data packets.",
        "# TYPE meshctl_relay_packets_total counter",
        f'meshctl_relay_packets_total{{direction="in"}} {s.packets_in}',
        f'meshctl_relay_packets_total{{direction="out"}} {s.packets_out}',
        "# HELP meshctl_relay_bytes_total Relayed bytes, frames included.",
        "# TYPE meshctl_relay_bytes_total counter",
        f'meshctl_relay_bytes_total{{direction="in"}} {s.bytes_in}',
        f'meshctl_relay_bytes_total{{direction="out"}} {s.bytes_out}',
        "# HELP meshctl_relay_drops_total Frames dropped, by reason.",
        "# TYPE meshctl_relay_drops_total counter",
    ]
    lines += [f'meshctl_relay_drops_total{{reason="{r}"}} {n}' for r, n in sorted(s.drops.items())]
    lines += [
        "# HELP meshctl_relay_channels Channels open now (a port pair each).",
        "# TYPE meshctl_relay_channels gauge",
        f"meshctl_relay_channels {len(core.channels)}",
        "# HELP meshctl_relay_channel_packets_total Packets through channels.",
        "# TYPE meshctl_relay_channel_packets_total counter",
        f'meshctl_relay_channel_packets_total{{direction="in"}} {s.channel_packets_in}',
        f'meshctl_relay_channel_packets_total{{direction="out"}} {s.channel_packets_out}',
        "# HELP meshctl_relay_channel_bytes_total Bytes received on channels.",
        "# TYPE meshctl_relay_channel_bytes_total counter",
        f"meshctl_relay_channel_bytes_total {s.channel_bytes_in}",
        "# HELP meshctl_relay_channel_events_total Channels opened and closed, binds accepted, requests refused.",
        "# TYPE meshctl_relay_channel_events_total counter",
        f'meshctl_relay_channel_events_total{{event="opened"}} {core.channels.stats.opened}',
        f'meshctl_relay_channel_events_total{{event="closed"}} {core.channels.stats.closed}',
        f'meshctl_relay_channel_events_total{{event="bind"}} {core.channels.stats.binds}',
        *(f'meshctl_relay_channel_events_total{{event="refused_{r}"}} {n}'
          for r, n in sorted(core.channels.stats.refused.items())),
        "# HELP meshctl_relay_logins_total Login attempts, by result.",
        "# TYPE meshctl_relay_logins_total counter",
        f'meshctl_relay_logins_total{{result="ok"}} {s.auth_ok}',
        f'meshctl_relay_logins_total{{result="refused"}} {s.auth_failed}',
        "# HELP meshctl_relay_stun_total STUN binding requests answered.",
        "# TYPE meshctl_relay_stun_total counter",
        f"meshctl_relay_stun_total {s.stun}",
        "# HELP meshctl_relay_coordination_serial Serial of the accepted coordination state.",
        "# TYPE meshctl_relay_coordination_serial gauge",
        f"meshctl_relay_coordination_serial {gauges.serial}",
    ]
    return "\n".join(lines) + "\n"
