"""`meshctl acl check SRC DST:PORT`: would DST accept it, and which rule decides."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from meshctl.cli.common import command, settings_of
from meshctl.errors import UsageError

if TYPE_CHECKING:
    from meshctl.coord.netmap import NetMap

acl_app = typer.Typer(help="The access control policy (policy.hujson).", no_args_is_help=True)

EXIT_DENIED = 1  # like grep: the question was answered, and the answer is no


def _split_dst(text: str, proto: str) -> tuple[str, int | None]:
    host, sep, port = text.rpartition(":")
    if text.startswith("[") and "]" in text:  # [fd7a::1]:22
        host, sep, port = text[1:].partition("]:")
    if proto.lower() in ("icmp", "icmpv6", "ipv6-icmp") and (not sep or ":" in port):
        return text.strip("[]"), None  # ping needs no port
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"Unable to parse destination: `{text}`", hint="write DST:PORT, e.g. prod:443")
    return host, int(port)


@acl_app.command("check")
@command
def check(
    ctx: typer.Context,
    src: Annotated[str, typer.Argument(metavar="SRC", help="Source: a member name or an IP.")],
    dst: Annotated[str, typer.Argument(metavar="DST:PORT", help="Destination member (or mesh IP) and port.")],
    proto: Annotated[str, typer.Option("--proto", help="tcp, udp (or icmp for ping).")] = "tcp",
    repo: Annotated[
        Path | None, typer.Option("--repo", help="Check against this checkout instead of the last synced state.")
    ] = None,
    policy_file: Annotated[
        Path | None, typer.Option("--policy", help="Use this policy file instead (try an edit before signing).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision as JSON.")] = False,
) -> None:
    """Evaluate the policy as DST would enforce it. Exit 0 when allowed, 1 when denied."""
    from meshctl.policy.compile import evaluate
    from meshctl.policy.parse import parse_policy

    host, port = _split_dst(dst, proto)
    netmap = _load_netmap(ctx, repo)
    text, name = netmap.policy_text, "policy.hujson"
    if policy_file is not None:
        try:
            text, name = policy_file.read_text(encoding="utf-8"), policy_file.name
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{policy_file}: cannot read ({exc})") from None
    decision = evaluate(parse_policy(text, name), netmap, src, host, port, proto)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "allowed": decision.allowed,
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


def _load_netmap(ctx: typer.Context, repo: Path | None) -> NetMap:
    """The verified map: from a checkout with --repo, else the one the last sync accepted."""
    if repo is not None:
        from meshctl.coord import pr_check
        from meshctl.coord.fs_snapshot import FsSnapshot
        from meshctl.errors import VerificationError

        if not repo.is_dir():
            raise UsageError(f"{repo}: not a directory")
        report = pr_check.check_change(FsSnapshot(repo), None, int(time.time()))
        if report.verified is None:
            raise VerificationError(f"{repo}: {'; '.join(report.problems)}")
        return report.verified.netmap
    from meshctl.coord.node_state import NodeState

    settings = settings_of(ctx)
    netmap = NodeState(settings.state_dir).load_netmap()
    if netmap is None:
        raise UsageError(
            f"{settings.state_dir}: no synced coordination state",
            hint="run `meshctl sync` first, or pass --repo DIR to check a checkout",
        )
    return netmap
