"""The command table: one line per command, each in its own module under cli/.

Command modules are light (heavy libraries are imported inside the commands), so
registering all of them keeps `meshctl version` fast.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from meshctl.cli import acl, admin, join, netcheck, ping, relay, repo, status, sync, up, version

    app.command("version", help="Print the meshctl version.")(version.version)
    app.command("init")(admin.init)
    app.add_typer(admin.admin_app, name="admin")
    admin.admin_app.add_typer(relay.relay_admin_app, name="relay")
    app.command("join")(join.join)
    app.add_typer(repo.repo_app, name="repo")
    app.command("sync")(sync.sync)
    app.command("up")(up.up)
    app.command("down")(up.down)
    app.command("status")(status.status)
    app.command("whois")(status.whois)
    app.command("ping")(ping.ping)
    app.command("netcheck")(netcheck.netcheck)
    app.add_typer(acl.acl_app, name="acl")
    app.command("relay")(relay.relay)
