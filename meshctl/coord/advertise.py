"""What a device offers to route (`join`/`set --advertise-routes ... --advertise-exit-node`), and
the update request that carries a changed offer to the admins.

The offer is part of the device's self-signed record. A change is a new record, signed by the
same identity key, sent as requests/NAME.json(.sig) on the device's own branch `update/NAME`
(ROUND2.md, section 2), or printed as files to hand over without push rights. It takes effect
when an admin approves it (`meshctl admin approve NAME`); until then the old record holds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from meshctl.coord import records, routes
from meshctl.coord.routes import EXIT_ROUTES, Prefix
from meshctl.errors import GitError, MeshctlError, UsageError


@dataclass(frozen=True, slots=True)
class Advertised:
    routes: tuple[Prefix, ...] = ()
    exit_node: bool = False


def parse_advertise_routes(text: str) -> tuple[tuple[Prefix, ...], bool]:
    """`--advertise-routes CIDR[,CIDR...]` ("" = none) -> (subnet routes, exit node named).

    Like Tailscale, 0.0.0.0/0 and ::/0 together mean an exit node; one alone is refused."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    parsed: list[Prefix] = []
    for item in items:
        try:
            parsed.append(routes.parse_route(item))
        except ValueError as exc:
            raise UsageError(f"--advertise-routes: {exc}") from None
    defaults = [p for p in parsed if routes.is_exit_route(p)]
    if defaults and set(defaults) != set(EXIT_ROUTES):
        raise UsageError("--advertise-routes: 0.0.0.0/0 and ::/0 go together (or use --advertise-exit-node)")
    if len(parsed) > routes.MAX_ROUTES + len(defaults):
        raise UsageError(f"--advertise-routes: at most {routes.MAX_ROUTES} routes")
    return routes.canonical(p for p in parsed if not routes.is_exit_route(p)), bool(defaults)


def check_advertised(offer: Advertised, mesh: tuple[Prefix, ...]) -> None:
    problems = routes.advertised_problems(offer.routes, mesh)
    if problems:
        raise UsageError(f"--advertise-routes: {problems[0]}")


def offer_from_flags(current: Advertised, routes_text: str | None, exit_flag: bool | None) -> Advertised:
    """The offer after `--advertise-routes` / `--advertise-exit-node` (None: not given, kept)."""
    offer = current
    if routes_text is not None:
        subnet, exit_named = parse_advertise_routes(routes_text)
        offer = Advertised(subnet, offer.exit_node or exit_named)
    if exit_flag is not None:
        offer = dataclasses.replace(offer, exit_node=exit_flag)
    return offer


@dataclass(frozen=True, slots=True)
class UpdateResult:
    name: str
    branch: str
    before: Advertised
    after: Advertised
    pushed: bool = False
    push_error: str | None = None
    pr_url: str | None = None
    record: bytes = b""
    signature: bytes = b""

    @property
    def changed(self) -> bool:
        return self.before != self.after


def request_update(state_dir: Path, repo_dir: Path, keys_dir: Path, routes_text: str | None,
                   exit_flag: bool | None, now: int) -> UpdateResult:
    """A new self-signed record with the changed offer, pushed as `update/NAME` (module docstring)."""
    from meshctl.coord import repo as gitrepo
    from meshctl.coord.join import pull_request_url, sign_record
    from meshctl.coord.node_state import NodeState
    from meshctl.identity import load_device_keys

    node = NodeState(state_dir)
    cfg = node.load_config()
    keys = load_device_keys(keys_dir)
    branch = f"update/{cfg.name}"
    with gitrepo.opened(repo_dir, cfg.repo_url) as repo:
        trusted = gitrepo.trusted_tip(repo)
        if trusted is None:
            raise UsageError("no accepted coordination state yet", "run `meshctl sync` first")
        snap = gitrepo.GitSnapshot(repo, trusted)
        path = f"peers/{cfg.name}.json"
        if path not in snap.files():
            raise UsageError(f"{cfg.name} is not a member yet: nothing to update",
                             "join with `meshctl join URL --advertise-routes ...` once more, or wait for the approval")
        old = records.parse_peer(snap.read(path), path)
        if old.identity_key != keys.identity.public():
            raise MeshctlError(f"{path}: signed by another identity key than this device's",
                               "this state directory is not the device that joined under this name")
        state = records.parse_state(snap.read("state.json"))
        before = Advertised(old.advertise_routes, old.advertise_exit_node)
        after = offer_from_flags(before, routes_text, exit_flag)
        check_advertised(after, (state.ipv4_cidr, state.ipv6_prefix))
        if after == before:
            return UpdateResult(cfg.name, branch, before, after)
        rec = dataclasses.replace(old, advertise_routes=after.routes, advertise_exit_node=after.exit_node,
                                  created=now)
        data, sig = sign_record(keys, rec)
        creds = gitrepo.Credentials(cfg.ssh_key)
        try:
            base = gitrepo.fetch(repo, cfg.branch, creds)  # the request goes on top of the newest main
        except GitError:
            base = trusted
        commit = gitrepo.commit_tree_changes(repo, base, {f"requests/{cfg.name}.json": data,
                                                          f"requests/{cfg.name}.json.sig": sig},
                                             f"Update request: {cfg.name}")
        gitrepo.set_ref(repo, f"refs/heads/{branch}", commit)  # a new update replaces the last one
        try:
            gitrepo.push(repo, f"+refs/heads/{branch}:refs/heads/{branch}", creds)
        except GitError as exc:
            return UpdateResult(cfg.name, branch, before, after, False, exc.message, None, data, sig)
        return UpdateResult(cfg.name, branch, before, after, True, None,
                            pull_request_url(cfg.repo_url, branch), data, sig)
