"""Ready-made lab topologies for the common end-to-end cases."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lab.core import Internet, Lab, Lan, NatRouter, Node


@dataclass(frozen=True, slots=True)
class TwoNats:
    """
        a -- nat_a (profile_a) --+                         +-- nat_b (profile_b) -- b
                                 +-- internet: git, STUN --+
    """

    a: Node
    b: Node
    nat_a: NatRouter
    nat_b: NatRouter
    internet: Internet
    repo_dir: Path  # the bare repository the git daemon serves (push to it as a path too)
    git_url: str
    stun: str  # "IP:PORT" of coturn; a second address is internet.service_ips[1]


def two_nats(lab: Lab, profile_a: str, profile_b: str, *,
             repo_dir: Path | None = None, verbose_git: bool = False) -> TwoNats:
    """Hosts a and b, each behind its own NAT router; git daemon and coturn on the internet.

    Without `repo_dir` an empty bare repository is created and served.
    """
    a, b = lab.host("a"), lab.host("b")
    nat_a = lab.nat_router("nat-a", profile_a, [a])
    nat_b = lab.nat_router("nat-b", profile_b, [b])
    repo = repo_dir if repo_dir is not None else lab.bare_repo()
    return TwoNats(a=a, b=b, nat_a=nat_a, nat_b=nat_b, internet=lab.internet(), repo_dir=repo,
                   git_url=lab.git_daemon(repo, verbose=verbose_git), stun=lab.stun_server())


@dataclass(frozen=True, slots=True)
class OneLan:
    """n1 .. nN and a git server host on one bridged LAN (IPv4 and ULA IPv6)."""

    hosts: tuple[Node, ...]
    git: Node
    lan: Lan
    repo_dir: Path
    git_url: str


def one_lan(lab: Lab, n: int, *, repo_dir: Path | None = None) -> OneLan:
    """`n` hosts named n1..nN plus a host "git" running git daemon, all on LAN "lan"."""
    if n < 1:
        raise ValueError("one_lan needs at least one host")
    hosts = tuple(lab.host(f"n{i}") for i in range(1, n + 1))
    git = lab.host("git")
    lan = lab.lan("lan", [*hosts, git])
    repo = repo_dir if repo_dir is not None else lab.bare_repo()
    return OneLan(hosts=hosts, git=git, lan=lan, repo_dir=repo,
                  git_url=lab.git_daemon(repo, git))


@dataclass(frozen=True, slots=True)
class RoutedSite:
    """Subnet routers and an exit node (issue 19)::

        client_a  client_b  r1  r2  ex  git        LAN "mesh" 10.0.k.0/24, gateway gw (forwards nothing:
           |         |       |   |   |   |           alone, a member reaches no network but this LAN)
           +---------+-------+---+---+---+-- gw
                             |   |   |
        lanhost -------------+---+   |              LAN "office" 192.168.50.0/24: r1 .10, r2 .11, lanhost .12
                                     |
                                  internet          198.51.100.1 / 2001:db8:51::1 on its loopback
    """

    client_a: Node
    client_b: Node
    r1: Node
    r2: Node
    ex: Node
    git: Node
    gw: Node
    lanhost: Node
    internet: Internet
    mesh_lan: Lan
    office: Lan
    repo_dir: Path
    git_url: str

    OFFICE = "192.168.50.0/24"


def routed_site(lab: Lab, *, repo_dir: Path | None = None) -> RoutedSite:
    names = ("client-a", "client-b", "r1", "r2", "ex", "git")
    members = [lab.host(n) for n in names]
    gw = lab.host("gw")
    mesh_lan = lab.lan("mesh", members, router=gw)
    client_a, client_b, r1, r2, ex, git = members
    lanhost = lab.host("lanhost")
    office = lab.lan("office", [r1, r2, lanhost], subnet=RoutedSite.OFFICE)
    internet = lab.internet()
    lab.attach_to_internet(ex)
    repo = repo_dir if repo_dir is not None else lab.bare_repo()
    return RoutedSite(client_a, client_b, r1, r2, ex, git, gw, lanhost, internet, mesh_lan, office, repo,
                      lab.git_daemon(repo, git))
