"""`meshctl relay`: run a relay (listing it in state.json is `meshctl admin relay`, cli/admin_relay.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meshctl.cli.common import command, settings_of


@command
def relay(
    ctx: typer.Context,
    listen: Annotated[str, typer.Option("--listen", help="ADDR:PORT for UDP and the TCP fallback.")],
    repo: Annotated[str, typer.Option("--repo", help="URL of the coordination repository.")],
    root: Annotated[str, typer.Option("--root", help="Pinned root fingerprint, sha256:...")],
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="TLS certificate for the TCP fallback.")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="TLS private key for the TCP fallback.")] = None,
    metrics: Annotated[str | None, typer.Option("--metrics", help="ADDR:PORT for Prometheus text metrics.")] = None,
    state_dir: Annotated[Path | None, typer.Option("--state-dir",
                                                   help="Relay state (default: STATE_DIR/relay).")] = None,
    name: Annotated[str, typer.Option("--name", help="This relay's name as listed in state.json.")] = "relay",
    sync_interval: Annotated[float, typer.Option("--sync-interval", min=1.0,
                                                 help="Seconds between repository syncs.")] = 60.0,
    rate_limit_mbit: Annotated[float, typer.Option("--rate-limit-mbit", min=0.1,
                                                   help="Per-client rate limit, Mbit/s.")] = 1000.0,
    max_clients: Annotated[int, typer.Option("--max-clients", min=1, help="Sessions at most.")] = 10_000,
    channel_ports: Annotated[str | None, typer.Option(
        "--channel-ports", help="LO-HI: UDP ports for channels (open them in the firewall); default any.")] = None,
    channels: Annotated[bool, typer.Option(
        "--channels/--no-channels", help="Offer channels: WireGuard to the relay's ports, no proxy.")] = True,
) -> None:
    """Run a relay for the members of one mesh: UDP first, TCP/TLS fallback, STUN on the same port."""
    import asyncio
    import logging
    import signal

    from meshctl.errors import UsageError
    from meshctl.relay import wire
    from meshctl.relay.server import RelayConfig, RelayServer, load_or_create_identity, run_relay
    from meshctl.relay.server_core import Limits
    from meshctl.udp import sockets

    for opt, value in (("--listen", listen), ("--metrics", metrics)):
        if value is not None:
            try:
                sockets.split_host_port(value)
            except ValueError:
                raise UsageError(f"{opt} {value!r}: expected ADDR:PORT such as 0.0.0.0:3340") from None
    if not root.startswith("sha256:"):
        raise UsageError(f"--root {root!r}: expected sha256:<fingerprint> from `meshctl admin invite`")
    if len(name.encode()) > wire.MAX_RELAY_NAME_LEN or not name.isascii():
        raise UsageError(f"--name {name!r}: at most {wire.MAX_RELAY_NAME_LEN} ASCII characters")
    port_range = None
    if channel_ports is not None:
        port_range = parse_port_range(channel_ports)
        if port_range is None:
            raise UsageError(f"--channel-ports {channel_ports!r}: expected LO-HI such as 40000-40999 "
                             "(1024-65535, at least two ports)")
    rate = rate_limit_mbit * 1_000_000 / 8
    config = RelayConfig(
        listen=listen, repo_url=repo, root_fingerprint=root,
        state_dir=state_dir or settings_of(ctx).state_dir / "relay", name=name,
        tls_cert=tls_cert, tls_key=tls_key, metrics=metrics, sync_interval_s=sync_interval,
        limits=Limits(rate_bytes_per_s=rate, burst_bytes=max(rate / 20, 256 * 1024),
                               max_sessions=max_clients),
        channels=channels, channel_ports=port_range,
    )
    logging.getLogger("meshctl.relay").setLevel(logging.INFO)  # connects and disconnects are the log
    identity = load_or_create_identity(config.state_dir)

    def ready(server: RelayServer) -> None:
        assert server.udp_addr is not None
        typer.echo(f"relay {name} on {server.udp_addr[0]}:{server.udp_addr[1]} (udp, "
                   f"{'tls' if tls_cert else 'tcp'}), identity {identity.public().text()}", err=True)
        typer.echo(f"list it: meshctl admin relay add {name} HOST:{server.udp_addr[1]} "
                   f"--identity-key {identity.public().text()}", err=True)

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await run_relay(config, ready)
        except asyncio.CancelledError:
            pass

    asyncio.run(main())


def parse_port_range(text: str) -> tuple[int, int] | None:
    """'40000-40999' -> (40000, 40999); None unless 1024 <= LO < HI <= 65535."""
    lo, sep, hi = text.partition("-")
    if not sep or not lo.isdigit() or not hi.isdigit():
        return None
    first, last = int(lo), int(hi)
    return (first, last) if 1024 <= first < last <= 65535 else None
