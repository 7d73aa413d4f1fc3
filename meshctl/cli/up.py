"""`meshctl up` (start the agent) and `meshctl down` (stop it, remove the interface)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from meshctl.cli.common import command, settings_of
from meshctl.cli.route_flags import AcceptRoutesOpt, AllowLanOpt, ExitNodeOpt, SnatOpt, pref_changes
from meshctl.errors import MeshctlError

START_TIMEOUT_S = 30.0


def _self_argv() -> list[str]:
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "meshctl"]


@command
def up(
    ctx: typer.Context,
    foreground: Annotated[bool, typer.Option(
        "--foreground", help="Run the agent in this process (systemd); otherwise it runs in the background "
                             "and logs to STATE_DIR/agent.log.")] = False,
    sync_interval: Annotated[float, typer.Option("--sync-interval", help="Seconds between syncs.", min=1)] = 60.0,
    accept_dns: Annotated[bool, typer.Option("--accept-dns/--no-accept-dns", envvar="MESHCTL_ACCEPT_DNS",
                                             help="Run MagicDNS and point the system's DNS at it.")] = True,
    accept_routes: AcceptRoutesOpt = None,
    exit_node: ExitNodeOpt = None,
    exit_node_allow_lan_access: AllowLanOpt = None,
    snat_subnet_routes: SnatOpt = None,
) -> None:
    """Bring this node onto the mesh and keep it there (the agent)."""
    from meshctl.agent.control import query_agent
    from meshctl.cli import preflight
    from meshctl.cli.set import save_route_prefs
    from meshctl.coord.node_state import NodeState
    from meshctl.fsutil import ensure_private_dir

    settings = settings_of(ctx)
    preflight.require_root("up", "run it with sudo (or as the systemd unit meshctl.service)")
    NodeState(settings.state_dir).load_config()  # "not joined" is said before anything starts
    # Kept in prefs.json: the agent (started below, or already running) reads them on every pass.
    save_route_prefs(settings, pref_changes(accept_routes, exit_node, exit_node_allow_lan_access,
                                            snat_subnet_routes))
    preflight.network_preflight(settings.interface, settings.listen_port)
    clock = preflight.clock_check(settings.state_dir, int(time.time()))
    if clock is not None:
        typer.echo(f"warning: {clock}", err=True)
    if foreground:
        from meshctl.agent.daemon import run_agent

        run_agent(settings, sync_interval, accept_dns)
        return
    running = query_agent(settings.control_socket, {"cmd": "sync"}, timeout=60)
    if running is not None:
        typer.echo(f"agent already running (pid {running['pid']}); synced: serial {running.get('serial')}")
        if running.get("error"):
            raise MeshctlError(str(running["error"]))
        return
    ensure_private_dir(settings.state_dir)
    log = open(settings.state_dir / "agent.log", "ab")  # noqa: SIM115 - handed to the child
    env = {**os.environ, "MESHCTL_STATE_DIR": str(settings.state_dir), "MESHCTL_INTERFACE": settings.interface,
           "MESHCTL_WG_BACKEND": settings.wg_backend, "MESHCTL_LISTEN_PORT": str(settings.listen_port),
           # The one-file binary: without this the agent would reuse this process's unpacked
           # files, which are deleted when `up` exits, and fail on any module it loads later.
           "PYINSTALLER_RESET_ENVIRONMENT": "1"}
    dns_flag = "--accept-dns" if accept_dns else "--no-accept-dns"
    argv = [*_self_argv(), "-v", "up", "--foreground", "--sync-interval", str(sync_interval), dns_flag]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True)
    log.close()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MeshctlError(f"the agent exited with status {proc.returncode}",
                               f"see {settings.state_dir / 'agent.log'}")
        reply = query_agent(settings.control_socket, {"cmd": "status"}, timeout=1)
        if reply is not None and (reply.get("passes") or reply.get("error")):
            if reply.get("error"):
                raise MeshctlError(f"agent running (pid {proc.pid}), but: {reply['error']}",
                                   "it retries on its own; `meshctl status` shows progress")
            typer.echo(f"meshctl is up on {settings.interface} (agent pid {proc.pid}, serial {reply.get('serial')})")
            return
        time.sleep(0.05)
    raise MeshctlError(f"the agent did not finish its first sync within {START_TIMEOUT_S:g} s",
                       f"see {settings.state_dir / 'agent.log'}")


def stop_agent(state_dir: Path, control_socket: Path) -> int | None:
    """Stop a running agent; returns its pid if there was one."""
    from meshctl.agent.control import query_agent

    reply = query_agent(control_socket, {"cmd": "status"}, timeout=2)
    pid = int(reply["pid"]) if reply and reply.get("pid") else None
    if pid is None:
        try:
            pid = int((state_dir / "agent.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return pid


@command
def down(ctx: typer.Context) -> None:
    """Stop the agent and remove the mesh interface, its addresses and routes."""
    from meshctl.agent.lock import state_lock
    from meshctl.agent.reconcile import Reconciler
    from meshctl.cli import preflight

    settings = settings_of(ctx)
    preflight.require_root("down", "run it with sudo")
    preflight.check_interface(settings.interface)  # never remove somebody else's interface
    pid = stop_agent(settings.state_dir, settings.control_socket)
    with state_lock(settings.state_dir, 30):  # also restores DNS an agent that crashed left
        Reconciler(settings.interface, settings.wg_backend, settings.state_dir).remove()
    typer.echo(f"meshctl is down ({settings.interface} removed{f', agent {pid} stopped' if pid else ''})")
