"""The command table: one line per command, each in its own module under cli/."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from meshctl.cli import admin, join, netcheck, repo, status, sync, up, version

    app.command("version", help="Print the meshctl version.")(version.version)
    app.command("init")(admin.init)
    app.add_typer(admin.admin_app, name="admin")
    app.command("join")(join.join)
    app.add_typer(repo.repo_app, name="repo")
    app.command("sync")(sync.sync)
    app.command("up")(up.up)
    app.command("down")(up.down)
    app.command("status")(status.status)
    app.command("whois")(status.whois)
    app.command("netcheck")(netcheck.netcheck)
    from meshctl.cli import acl
    app.add_typer(acl.acl_app, name="acl")
    from meshctl.cli import ping as ping_cli
    app.command("ping")(ping_cli.ping)
