"""`meshctl rotate-keys [--rotate-every 90d|off]`: new WireGuard and disco keys, no admin step."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from meshctl.cli.common import command, settings_of
from meshctl.errors import MeshctlError, UsageError

if TYPE_CHECKING:
    from meshctl.coord.node_state import NodeState


@command
def rotate_keys(
    ctx: typer.Context,
    rotate_every: Annotated[str | None, typer.Option(
        "--rotate-every", help="Also rotate by itself from now on, this long after each rotation (e.g. 90d; "
                               "'off' stops it): the agent, or `meshctl sync` from cron, does it.")] = None,
) -> None:
    """Make new WireGuard and disco keys and announce them in this device's signed endpoint record;
    peers use them on their next sync. Addresses and the identity key stay."""
    from meshctl.agent.control import query_agent
    from meshctl.cli import preflight
    from meshctl.coord.node_state import NodeState

    settings = settings_of(ctx)
    preflight.require_root("rotate-keys", "the keys are root's, in the state directory")
    node = NodeState(settings.state_dir)
    node.load_config()  # "not joined" first
    if rotate_every is not None:
        node.save_rotate_every(None if rotate_every == "off" else _every(rotate_every))
    reply = query_agent(settings.control_socket, {"cmd": "rotate-keys"}, timeout=120)
    if reply is not None:
        if "new_wireguard" not in reply:
            error = MeshctlError(str(reply.get("error") or "the agent did not rotate the keys"), reply.get("hint"))
            error.exit_code = int(reply.get("exit_code") or 1)
            raise error
        _say(str(reply["old_wireguard"]), str(reply["new_wireguard"]), int(reply["counter"]), node)
        if reply.get("error"):
            typer.echo(f"warning: the pass after the rotation: {reply['error']}", err=True)
        return
    _rotate_here(ctx, node)


def _rotate_here(ctx: typer.Context, node: NodeState) -> None:
    """No agent runs: rotate, then one pass (as `meshctl sync` runs it) switches the interface."""
    from meshctl.agent.lock import state_lock
    from meshctl.agent.sync_pass import cron_publish_plan, run_pass
    from meshctl.cli import preflight
    from meshctl.coord.rotate import rotate_keys as rotate

    settings = settings_of(ctx)
    with state_lock(settings.state_dir, 60):
        done = rotate(settings.state_dir, settings.repo_dir, settings.keys_dir, int(time.time()))
        _say(done.old_wireguard.b64(), done.new_wireguard.b64(), done.counter, node)
        now = int(time.time())
        result = run_pass(settings, now, before_apply=lambda: preflight.network_preflight(
            settings.interface, settings.listen_port), publish=cron_publish_plan(settings, now))
    for error in (result.coordination_error, *result.apply_errors):
        if error is not None:
            typer.echo(f"warning: the pass after the rotation: {error.message}", err=True)


def _every(text: str) -> int:
    from meshctl.duration import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"--rotate-every {exc} (or 'off')") from None


def _say(old: str, new: str, counter: int, node: NodeState) -> None:
    from meshctl.duration import format_duration

    typer.echo(f"rotated: WireGuard key {old} -> {new} (endpoint record counter {counter})")
    typer.echo("peers and relays use the new key on their next sync; addresses and identity are unchanged")
    every = node.load_rotate_every()
    if every is not None:
        typer.echo(f"next rotation in {format_duration(every)} (by the agent, or `meshctl sync`)")
