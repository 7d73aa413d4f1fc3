"""Shared by the MagicDNS end-to-end tests and their fixtures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lab.scenario import MeshScenario


@dataclass
class DnsMesh:
    mesh: MeshScenario
    domain: str
    upstream: str  # the nameserver of node1's original resolv.conf, served by the test
    resolv_conf: Path  # node1's namespace's /etc/resolv.conf, as seen from the host
    original: bytes  # its bytes before `meshctl up`
