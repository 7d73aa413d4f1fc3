"""`meshctl netcheck [--json] [--stun HOST:PORT ...]`: UDP, mapped endpoints, NAT type, latency."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from meshctl.cli.common import command

if TYPE_CHECKING:
    from meshctl.nat.netcheck import NetcheckReport


def render_report(report: NetcheckReport) -> str:
    """The human form, in the spirit of `tailscale netcheck`."""
    varies = report.mapping_varies_by_dest
    lines = [
        "Report:",
        f"\t* UDP: {'true' if report.udp else 'false'}",
        f"\t* Preferred endpoint: {report.preferred_endpoint or '(none)'}",
        "\t* Mapping varies by destination: "
        + ("unknown (fewer than two replies)" if varies is None
           else "true (symmetric NAT)" if varies else "false"),
        "\t* STUN servers:",
    ]
    for s in report.servers:
        if s.mapped is not None and s.latency_s is not None:
            lines.append(f"\t\t- {s.server}: {s.mapped} in {s.latency_s * 1000:.1f}ms")
        else:
            lines.append(f"\t\t- {s.server}: {s.error or 'no reply'}")
    return "\n".join(lines)


@command
def netcheck(
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    stun_servers: Annotated[
        list[str] | None,
        typer.Option("--stun", metavar="HOST:PORT", help="A STUN server to ask (repeatable)."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for replies.", min=0.1)] = 3.0,
) -> None:
    """Report UDP reachability, the mapped endpoint per STUN server and the NAT's behaviour."""
    from meshctl.nat.netcheck import DEFAULT_STUN_SERVERS, standalone

    # TODO(lead): default to the verified state's stun servers once the agent exposes them.
    servers = list(stun_servers) if stun_servers else list(DEFAULT_STUN_SERVERS)
    report = standalone(servers, timeout)
    if json_output:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        typer.echo(render_report(report))
