"""`meshctl ping PEER`: a disco round trip on the peer's current path, like `tailscale ping`."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from meshctl.cli.common import command, settings_of
from meshctl.errors import MeshctlError

PING_QUERY_TIMEOUT_S = 10.0  # the agent tries a few pings of about a second each


@command
def ping(
    ctx: typer.Context,
    peer: Annotated[str, typer.Argument(help="Peer name or mesh IP.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the agent's reply as JSON.")] = False,
) -> None:
    """Ping a peer over its current path and say which path (direct IP:PORT or relay) and how fast."""
    from meshctl.agent.control import query_agent
    from meshctl.agent.paths.engine import describe_ping

    settings = settings_of(ctx)
    reply = query_agent(settings.control_socket, {"cmd": "ping", "peer": peer}, timeout=PING_QUERY_TIMEOUT_S)
    if reply is None:
        raise MeshctlError("the agent is not running", "start it with `meshctl up`")
    if as_json:
        typer.echo(json.dumps(reply, indent=2))
    if not reply.get("ok"):
        raise MeshctlError(str(reply.get("error") or "ping failed"), reply.get("hint"))
    if not as_json:
        typer.echo(describe_ping(reply))
