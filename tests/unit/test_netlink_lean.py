"""meshctl.netlink loads the pyroute2 classes meshctl uses and not the rest of the library."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("pyroute2")


def run_fresh(code: str) -> str:
    """In a new interpreter: what pyroute2 loads depends on what ran before in the process."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_the_classes_meshctl_uses_come_without_the_rest_of_pyroute2() -> None:
    out = run_fresh("""
        import sys
        from meshctl.netlink import IPRoute, NetlinkError, WireGuard, wgmsg, NLM_F_ACK
        with IPRoute() as ipr:
            assert any(link.get_attr("IFLA_IFNAME") == "lo" for link in ipr.get_links())
        heavy = sorted(m for m in ("sqlite3", "pyroute2.ndb", "pyroute2.ipdb", "pyroute2.conntrack",
                                   "pyroute2.ethtool") if m in sys.modules)
        print(" ".join(heavy) or "lean", issubclass(NetlinkError, Exception), NLM_F_ACK)
    """)
    assert out == "lean True 4"


def test_the_full_library_still_works_after_a_lean_import() -> None:
    out = run_fresh("""
        import sys
        from meshctl.netlink import IPRoute
        from pyroute2 import NDB  # only the real __init__ defines this name
        import pyroute2
        print("pyroute2.ndb" in sys.modules, pyroute2.IPRoute is IPRoute, NDB.__name__)
    """)
    assert out == "True True NDB"


def test_unknown_names_are_an_attribute_error() -> None:
    import meshctl.netlink

    with pytest.raises(AttributeError, match="NoSuchThing"):
        meshctl.netlink.NoSuchThing  # noqa: B018
