"""Fixtures for the ACL end-to-end tests: issue 6's mesh, shared by the whole module.

    prod (tag:prod)          dev (dana, group:dev)       ops (oscar, group:ops)
        |                          |                           |
        +----------------- LAN "lan" + git daemon host --------+
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from acl_e2e_support import POLICY_V1, SERVICE_PORTS, EchoService, install_syn_counter

from lab import lab_unavailable, open_lab
from lab.scenario import MeshScenario, build_lan_mesh

E2E_TOOLS = ("wireguard-go", "wg", "git", "ping", "nft")
NAMES = ("prod", "dev", "ops")
APPROVE_ARGS = {
    "prod": ["--tag", "tag:prod"],
    "dev": ["--owner", "dana@example.com"],
    "ops": ["--owner", "oscar@example.com"],
}


def need_e2e() -> None:
    """Skip, saying exactly what is missing, unless a mesh can be built here."""
    reason = lab_unavailable(E2E_TOOLS)
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def acl_mesh() -> Iterator[MeshScenario]:
    """prod, dev and ops joined and approved as a person would, policy V1 signed, agents up."""
    need_e2e()
    with open_lab() as lab:
        mesh = build_lan_mesh(lab, len(NAMES), name="acl", names=NAMES, approve_args=APPROVE_ARGS)
        mesh.set_policy(POLICY_V1)
        try:
            for name in NAMES:
                mesh.up(name)
            yield mesh
        finally:
            for name in NAMES:  # stop the agents before the lab kills their namespaces
                mesh.meshctl(name, "down", check=False)


@pytest.fixture(scope="module")
def prod_service(acl_mesh: MeshScenario) -> Iterator[EchoService]:
    """Echo services on prod's ports 22 and 443, and a SYN counter for port 22 on its mesh interface."""
    node = acl_mesh.members["prod"].node
    install_syn_counter(node.ns, acl_mesh.lab.meshctl_env(node)["MESHCTL_INTERFACE"], 22)
    service = EchoService(node.ns, SERVICE_PORTS)
    try:
        yield service
    finally:
        service.close()
