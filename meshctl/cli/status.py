"""`meshctl status [--json]` and `meshctl whois IP`."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from meshctl.cli.common import command, settings_of
from meshctl.errors import UsageError


def _read_json(path: Any) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, ValueError):
        return {}


@command
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the stable JSON document instead.")] = False,
) -> None:
    """This node, the coordination state and every peer's path, handshake and traffic."""
    from meshctl.agent.control import query_agent
    from meshctl.agent.status import build_status, render_status
    from meshctl.coord.effective import apply_view
    from meshctl.coord.node_state import NodeState
    from meshctl.identity import load_public_keys

    settings = settings_of(ctx)
    node = NodeState(settings.state_dir)
    netmap = node.load_netmap()
    if netmap is None:
        node.load_config()  # says "not joined" when that is the reason
        raise UsageError("no accepted coordination state yet", "run `meshctl sync` or `meshctl up`")
    device = None
    device_info = _read_json(settings.state_dir / "device.json")
    if device_info:
        from meshctl.wg.backend import open_backend
        from meshctl.wg.kernel import link_kind

        if link_kind(settings.interface) is not None:
            backend, _ = open_backend(settings.interface, device_info.get("backend", "auto"))
            device = backend.read()
    from dataclasses import asdict

    from meshctl.agent.prefs import load_prefs
    from meshctl.agent.status import ROUTES_FILE

    agent = query_agent(settings.control_socket, {"cmd": "status"})
    now = int(time.time())
    cfg = node.load_config()
    view = node.load_endpoint_view(cfg.network_id)
    netmap = apply_view(netmap, view, now, load_public_keys(settings.keys_dir)).netmap
    doc = build_status(netmap, device, device_info, node.fetched_at(),
                       _read_json(settings.state_dir / "last-sync.json"), now, agent, view, node.load_published(),
                       routes=_read_json(settings.state_dir / ROUTES_FILE),
                       prefs=asdict(load_prefs(settings.state_dir)))
    typer.echo(json.dumps(doc, indent=2) if as_json else render_status(doc, now))


@command
def whois(ctx: typer.Context, ip: Annotated[str, typer.Argument(help="A mesh IP address.")]) -> None:
    """Which member owns a mesh address."""
    import ipaddress

    from meshctl.coord.node_state import NodeState

    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        raise UsageError(f"not an IP address: `{ip}`") from None
    from meshctl.coord.effective import apply_view

    node = NodeState(settings_of(ctx).state_dir)
    netmap = node.load_netmap()
    if netmap is None:
        raise UsageError("no accepted coordination state yet", "run `meshctl sync` first")
    netmap = apply_view(netmap, node.load_endpoint_view(netmap.network.network_id), int(time.time())).netmap
    peer = netmap.peer_by_address(addr)
    if peer is None:
        raise UsageError(f"{ip}: no member of mesh {netmap.network.name} has this address")
    typer.echo(f"{peer.name}.{netmap.network.domain}")
    typer.echo(f"  addresses: {' '.join(str(a) for a in peer.addresses)}")
    typer.echo(f"  owner: {peer.owner or '-'}")
    typer.echo(f"  tags: {', '.join(peer.tags) or '-'}")
    typer.echo(f"  wireguard key: {peer.wg_public_key.b64()}")
    typer.echo(f"  identity key: {peer.identity_key.text()}")
