"""The network lab used by the end-to-end tests and `make demo` (root; network namespaces).

    with Lab() as lab:
        t = two_nats(lab, PORT_RESTRICTED, SYMMETRIC)
        lab.meshctl(t.a, ["join", t.git_url, "--name", "a"])
"""

from __future__ import annotations

from lab.core import (
    DEFAULT_PREFIX,
    Datagram,
    Internet,
    Lab,
    LabError,
    LabInterrupted,
    Lan,
    Link,
    NatRouter,
    Node,
    UdpAgent,
    cleanup_stale,
    lab_unavailable,
    meshctl_argv,
    open_lab,
    poll,
)
from lab.rules import (
    ADDRESS_RESTRICTED,
    FULL_CONE,
    MASQUERADE,
    PORT_RESTRICTED,
    PROFILES,
    SYMMETRIC,
)
from lab.topology import OneLan, TwoNats, one_lan, two_nats

__all__ = [
    "ADDRESS_RESTRICTED",
    "DEFAULT_PREFIX",
    "FULL_CONE",
    "MASQUERADE",
    "PORT_RESTRICTED",
    "PROFILES",
    "SYMMETRIC",
    "Datagram",
    "Internet",
    "Lab",
    "LabError",
    "LabInterrupted",
    "Lan",
    "Link",
    "NatRouter",
    "Node",
    "OneLan",
    "TwoNats",
    "UdpAgent",
    "cleanup_stale",
    "lab_unavailable",
    "meshctl_argv",
    "one_lan",
    "open_lab",
    "poll",
    "two_nats",
]
