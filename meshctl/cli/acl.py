"""`meshctl acl check SRC DST:PORT`: would the policy let it through, and which rule decides."""

from __future__ import annotations

import ipaddress
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from meshctl.cli.common import command, settings_of
from meshctl.errors import EXIT_DENIED, UsageError

if TYPE_CHECKING:
    from meshctl.coord.netmap import NetMap

acl_app = typer.Typer(help="The access control policy (policy.hujson).", no_args_is_help=True)

CHECKOUT_MARKERS = ("state.json", "root/1.root.json")


def _split_dst(text: str, proto: str) -> tuple[str, int | None]:
    host, sep, port = text.rpartition(":")
    if text.startswith("[") and "]" in text:  # [fd7a::1]:22
        host, sep, port = text[1:].partition("]:")
    if proto.lower() in ("icmp", "icmpv4", "icmpv6", "ipv6-icmp", "1", "58"):  # ping needs no port
        bare = text.strip("[]")
        if not sep or not port.isdigit() or _is_address(bare):
            return bare, None
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"Unable to parse destination: `{text}`", hint="write DST:PORT, e.g. prod:443 or tag:prod:22")
    return host, int(port)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@acl_app.command("check")
@command
def check(
    ctx: typer.Context,
    src: Annotated[str, typer.Argument(
        metavar="SRC", help="Source: a member name, user, group, tag, host or IP.")],
    dst: Annotated[str, typer.Argument(
        metavar="DST:PORT", help="Destination (member, user, group, tag, host or IP) and port.")],
    proto: Annotated[str, typer.Option("--proto", help="tcp, udp (or icmp for ping).")] = "tcp",
    repo: Annotated[
        Path | None, typer.Option("--repo", help="Check against this checkout instead of the last synced state.")
    ] = None,
    policy_file: Annotated[
        Path | None, typer.Option("--policy", help="Use this policy file instead (try an edit before signing).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision as JSON.")] = False,
) -> None:
    """Evaluate the policy as the nodes enforce it.

    In a coordination checkout (the current directory, --repo DIR, or the directory of
    --policy FILE) the members are the checkout's, verified, and the policy is the file as it
    is now: an edit can be checked before `meshctl admin sign`. Elsewhere, the state this
    node last synced.

    Exit codes: 0 allowed, 4 denied; 1 runtime failure, 2 usage or bad input (a policy that
    does not parse), 3 verification refused.
    """
    from meshctl.policy.evaluate import evaluate
    from meshctl.policy.parse import parse_policy

    host, port = _split_dst(dst, proto)
    netmap = _load_netmap(ctx, repo, policy_file)
    text, name = netmap.policy_text, "policy.hujson"
    if policy_file is not None:
        try:
            text, name = policy_file.read_text(encoding="utf-8"), policy_file.name
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{policy_file}: cannot read ({exc})") from None
    policy = parse_policy(text, name)
    for warning in policy.warnings:
        typer.echo(f"warning: {warning}", err=True)
    decision = evaluate(policy, netmap, src, host, port, proto)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "allowed": decision.allowed,
                    "section": decision.section,
                    "rule_index": decision.rule_index,
                    "line": decision.line,
                    "src": str(decision.src) if decision.src else None,
                    "dst": str(decision.dst) if decision.dst else None,
                    "proto": proto.lower(),
                    "port": port,
                    "reason": decision.reason,
                }
            )
        )
    else:
        what = f"{src} -> {host}" + (f":{port}" if port is not None else "") + f" ({proto.lower()})"
        typer.echo(f"{'allow' if decision.allowed else 'deny'}: {what}: {decision.reason}")
    if not decision.allowed:
        raise typer.Exit(EXIT_DENIED)


def _checkout(repo: Path | None, policy_file: Path | None) -> Path | None:
    """The coordination checkout to read members from, if any."""
    if repo is not None:
        if not repo.is_dir():
            raise UsageError(f"{repo}: not a directory")
        return repo
    candidates = [Path.cwd()] + ([policy_file.resolve().parent] if policy_file is not None else [])
    return next((c for c in candidates if all((c / m).is_file() for m in CHECKOUT_MARKERS)), None)


def _load_netmap(ctx: typer.Context, repo: Path | None, policy_file: Path | None) -> NetMap:
    """A checkout's verified members (its policy as it is on disk), else the last synced map."""
    checkout = _checkout(repo, policy_file)
    if checkout is not None:
        from meshctl.coord import verify
        from meshctl.coord.fs_snapshot import FsSnapshot

        snap = FsSnapshot(checkout)
        try:
            pinned = verify.fingerprint(snap.read("root/1.root.json"))
        except OSError as exc:
            raise UsageError(f"{checkout}: not a coordination checkout ({exc.strerror})") from None
        verified = verify.verify_members(snap, pinned, int(time.time()))
        if policy_file is None and verify.sha256_hex(verified.policy_text.encode()) != verified.state.policy_sha256:
            typer.echo(f"note: {checkout / 'policy.hujson'} is edited and not signed yet "
                       "(checked as it is; `meshctl admin sign` signs it)", err=True)
        return verified.netmap
    from meshctl.coord.node_state import NodeState

    settings = settings_of(ctx)
    netmap = NodeState(settings.state_dir).load_netmap()
    if netmap is None:
        raise UsageError(
            f"{settings.state_dir}: no synced coordination state",
            hint="run `meshctl sync` first, or run this in a coordination checkout (or pass --repo DIR)",
        )
    return netmap
