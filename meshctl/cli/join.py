"""`meshctl join REPO_URL`: create this device's keys and a join request."""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Annotated

import typer

from meshctl.cli.common import command, settings_of
from meshctl.cli.route_flags import AdvertiseExitOpt, AdvertiseRoutesOpt, parse_bool
from meshctl.errors import GitError, UsageError

if TYPE_CHECKING:
    from collections.abc import Callable

    from meshctl.coord.enroll import EnrollResult
    from meshctl.coord.join import JoinResult
    from meshctl.keys import SigningKey
    from meshctl.settings import Settings


def _default_name() -> str:
    import re

    host = socket.gethostname().split(".")[0].lower()
    return re.sub(r"[^a-z0-9-]", "-", host).strip("-")[:63] or "device"


@command
def join(
    ctx: typer.Context,
    repo_url: Annotated[str, typer.Argument(
        help="The coordination repository (path, git://, https://, ssh://, git@host:path).")],
    name: Annotated[str | None, typer.Option(
        "--name", help="This device's name in the mesh, also its MagicDNS name (default: the name it asked for "
                       "before, else the hostname).")] = None,
    root: Annotated[str | None, typer.Option(
        "--root", help="The root fingerprint `meshctl admin invite` printed (sha256:...): the mesh you trust.")] = None,
    trust_on_first_use: Annotated[bool, typer.Option("--trust-on-first-use",
                                                     help="Show the root fingerprint and ask.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Answer yes to the trust question.")] = False,
    endpoint: Annotated[
        list[str] | None,
        typer.Option("--endpoint", help="HOST:PORT where peers can always reach this device, e.g. a server's "
                                        "public name and WireGuard port (repeatable)."),
    ] = None,
    ssh_key: Annotated[str | None, typer.Option(
        "--ssh-key", help="SSH private key (no passphrase) for the git host; kept in STATE_DIR/node.json for "
                          "later syncs (cron, systemd). Default: your agent and ~/.ssh keys, also under sudo.")] = None,
    rename: Annotated[bool, typer.Option(
        "--rename", help="Ask under a new --name and withdraw this device's earlier request.")] = False,
    advertise_routes: AdvertiseRoutesOpt = None,
    advertise_exit_node: AdvertiseExitOpt = None,
    auth_key: Annotated[str | None, typer.Option(
        "--auth-key", envvar="MESHCTL_AUTH_KEY", show_envvar=True,
        help="An enrollment key (`meshctl admin authkey create`): join with no admin step. Also file:PATH "
             "(a file holding it) or the environment, which other local users cannot read as they can a "
             "command line.")] = None,
    tag: Annotated[list[str] | None, typer.Option(
        "--tag", help="With --auth-key: only these of the key's tags (repeatable; default: all of them).")] = None,
) -> None:
    """Join a mesh: keys stay on this device; the request goes to a pull-request branch, or, with
    --auth-key, the device is a member on every node's next sync."""
    from meshctl.coord.advertise import Advertised, offer_from_flags
    from meshctl.coord.join import join as do_join

    settings = settings_of(ctx)
    if root is None and not trust_on_first_use:
        raise UsageError("pass --root sha256:... from the invite, or --trust-on-first-use",
                         "an admin prints the invite with `meshctl admin invite`")
    if root is not None and (not root.startswith("sha256:") or len(root) != 71):
        raise UsageError(f"--root {root!r}: expected sha256: followed by 64 hex digits")

    def confirm(fp: str) -> bool:
        typer.echo(f"The mesh's root fingerprint is {fp}")
        typer.echo("Compare it with the one your admin gave you.")
        return yes or typer.confirm("Trust this root?", default=False)

    if auth_key is not None:
        if rename:
            raise UsageError("--auth-key joins without a request: --rename does not apply")
        if advertise_routes is not None or advertise_exit_node is not None:
            raise UsageError("--advertise-routes and --advertise-exit-node need an admin's approval, which "
                             "an enrolled device skips", "once it is a member: `meshctl set --advertise-routes ...`")
        _enroll(settings, repo_url, name, root, confirm, auth_key, tag, ssh_key, tuple(endpoint or ()))
        return
    if tag:
        raise UsageError("--tag goes with --auth-key (an admin gives tags with `meshctl admin approve --tag`)")

    offer = offer_from_flags(Advertised(), advertise_routes, parse_bool(advertise_exit_node, "--advertise-exit-node"))
    try:
        result = do_join(settings.state_dir, settings.repo_dir, settings.keys_dir, repo_url, name, root, confirm,
                         tuple(endpoint or ()), int(time.time()), default_name=_default_name(),
                         ssh_key=ssh_key, rename=rename, advertise=offer)
    except GitError as exc:  # nothing to keep yet: say how to check the URL instead
        raise GitError(exc.message, exc.hint if "authentication" in exc.message else
                       "check the URL and that this machine reaches the git host") from None
    _say_credentials(result)
    if result.withdrawn:
        typer.echo(f"withdrew the request for {result.withdrawn} (branch join/{result.withdrawn})")
    if result.push_error == "already a member":
        typer.echo(f"{result.name} is already a member of {result.mesh}; run `meshctl up` or `meshctl sync`")
        if offer != Advertised():
            typer.echo("to change the routes it advertises: meshctl set --advertise-routes CIDR,... "
                       "[--advertise-exit-node]")
        return
    fingerprint = (f"key fingerprint {result.fingerprint}: give it to your admin, who approves with "
                   f"`meshctl admin approve {result.name} --expect-key {result.fingerprint}`")
    if result.already_pushed:
        typer.echo(f"join request for {result.name} is already on branch {result.branch}; nothing to push")
        typer.echo(fingerprint)
        if result.pr_url:
            typer.echo(f"open the pull request: {result.pr_url}")
        return
    if result.pushed:
        typer.echo(f"join request for {result.name} pushed to branch {result.branch}")
        typer.echo(fingerprint)
        if result.pr_url:
            typer.echo(f"open the pull request: {result.pr_url}")
        else:
            typer.echo(f"open a pull request from {result.branch}, or ask an admin to run "
                       f"`meshctl admin approve {result.name}` on it")
        return
    print_handover(result.name, result.branch, result.push_error, result.record, result.signature, fingerprint)


def print_handover(name: str, branch: str, push_error: str | None, record: bytes, signature: bytes,
                   note: str | None = None) -> None:
    """Without push rights: the two request files, as here-documents an admin can paste."""
    typer.echo(f"could not push branch {branch}: {push_error}")
    if note:
        typer.echo(note)
    typer.echo("Hand these two files to an admin; they go in the coordination repository as:")
    for path, data in ((f"requests/{name}.json", record), (f"requests/{name}.json.sig", signature)):
        typer.echo(f"\ncat > {path} <<'EOF'\n{data.decode().rstrip()}\nEOF")
    typer.echo(f"\nthen: meshctl admin approve {name}")


def _read_auth_key(value: str) -> SigningKey:
    from pathlib import Path

    from meshctl.coord.enrollment import parse_key_text

    if value.startswith("file:"):
        path = Path(value[len("file:"):]).expanduser()
        try:
            value = path.read_text(errors="replace")[:1024]
        except OSError as exc:
            raise UsageError(f"--auth-key file:{path}: {exc.strerror or exc}") from None
    return parse_key_text(value)


def _enroll(settings: Settings, repo_url: str, name: str | None, root: str | None, confirm: Callable[[str], bool],
            auth_key: str, tags: list[str] | None, ssh_key: str | None, endpoints: tuple[str, ...]) -> None:
    from meshctl.coord.enroll import enroll
    from meshctl.netaddrs import ipv4_interfaces, local_candidates

    secret = _read_auth_key(auth_key)
    candidates = local_candidates(ipv4_interfaces(settings.interface), settings.listen_port)
    try:
        result = enroll(settings.state_dir, settings.repo_dir, settings.keys_dir, repo_url, name, root, confirm,
                        secret, int(time.time()), tags=tags, default_name=_default_name(), ssh_key=ssh_key,
                        candidates=candidates, endpoints=endpoints)
    except GitError as exc:
        raise GitError(exc.message, exc.hint if "authentication" in exc.message else
                       "check the URL and that this machine reaches the git host") from None
    _say_credentials(result)
    if result.already_member:
        typer.echo(f"{result.name} is already a member of {result.mesh}; run `meshctl up` or `meshctl sync`")
        return
    again = " (again: the same enrollment)" if result.again else ""
    typer.echo(f"enrolled {result.name} in {result.mesh} with auth key {result.key_id}{again}: "
               f"{' '.join(result.addresses)}, tags {','.join(result.tags) or 'none'}")
    typer.echo(f"published on branch {result.branch}: every node accepts it on its next sync")
    typer.echo(f"key fingerprint {result.fingerprint}; next: `meshctl up` (or `meshctl sync` from cron)")


def _say_credentials(result: JoinResult | EnrollResult) -> None:
    """Which SSH credential later syncs use, when it is not the obvious one (stderr: notes)."""
    import os

    if result.ssh_key is not None and os.environ.get("SUDO_USER"):
        typer.echo(f"git over ssh: {result.ssh_key} (kept for later syncs)", err=True)
    elif result.ssh_agent is not None:
        typer.echo(f"note: the git host accepted a key from the ssh-agent at {result.ssh_agent}; syncs that "
                   "run without it (cron, systemd) need a key file: run join again with --ssh-key PATH", err=True)
