"""`meshctl relay` (run a relay) and `meshctl admin relay add|remove|list` (list relays in state.json)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from meshctl.cli.admin_signing import DryRunOpt, KeyOpt, NoCommitOpt, RepoOpt
from meshctl.cli.app import command, settings_of

relay_admin_app = typer.Typer(help="The relays listed in state.json.", no_args_is_help=True)


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
    from meshctl.relay import protocol, sockets
    from meshctl.relay.server import RelayConfig, RelayServer, load_or_create_identity, run_relay

    for opt, value in (("--listen", listen), ("--metrics", metrics)):
        if value is not None:
            try:
                sockets.split_host_port(value)
            except ValueError:
                raise UsageError(f"{opt} {value!r}: expected ADDR:PORT such as 0.0.0.0:3340") from None
    if not root.startswith("sha256:"):
        raise UsageError(f"--root {root!r}: expected sha256:<fingerprint> from `meshctl admin invite`")
    if len(name.encode()) > protocol.MAX_RELAY_NAME_LEN or not name.isascii():
        raise UsageError(f"--name {name!r}: at most {protocol.MAX_RELAY_NAME_LEN} ASCII characters")
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
        limits=protocol.Limits(rate_bytes_per_s=rate, burst_bytes=max(rate / 20, 256 * 1024),
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


@relay_admin_app.command("add")
@command
def add(
    name: Annotated[str, typer.Argument(help="Relay name (a DNS label).")],
    address: Annotated[str, typer.Argument(help="HOST:PORT clients dial (UDP, TCP fallback on the same port).")],
    identity_key: Annotated[str | None, typer.Option(
        "--identity-key", help="ed25519:... printed by `meshctl relay` at start (required: clients accept "
                               "only the relay that proves it).")] = None,
    repo: RepoOpt = Path("."),
    admin_key: KeyOpt = None,
    no_commit: NoCommitOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """List a relay in state.json (re-signs the state)."""
    from meshctl.cli.admin_signing import run_signing
    from meshctl.coord import relays_admin

    entry = relays_admin.parse_relay(name, address, identity_key)
    run_signing(repo, admin_key, lambda s: relays_admin.add_change(s.baseline, entry), dry_run=dry_run,
                no_commit=no_commit)


@relay_admin_app.command("remove")
@command
def remove(
    name: Annotated[str, typer.Argument(help="The relay to remove.")],
    repo: RepoOpt = Path("."),
    admin_key: KeyOpt = None,
    no_commit: NoCommitOpt = False,
    dry_run: DryRunOpt = False,
) -> None:
    """Remove a relay from state.json (re-signs the state)."""
    from meshctl.cli.admin_signing import run_signing
    from meshctl.coord import relays_admin

    run_signing(repo, admin_key, lambda s: relays_admin.remove_change(s.baseline, name), dry_run=dry_run,
                no_commit=no_commit)


@relay_admin_app.command("list")
@command
def list_(repo: RepoOpt = Path(".")) -> None:
    """Print the listed relays: name, address, identity key."""
    from meshctl.coord import admin, relays_admin

    for r in relays_admin.list_relays(admin.open_checkout(repo)):
        typer.echo(f"{r.name}\t{r.address}\t{r.identity_key.text() if r.identity_key else '-'}")
