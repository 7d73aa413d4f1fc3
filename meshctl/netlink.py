"""pyroute2's few classes meshctl uses, without the rest of pyroute2.

`import pyroute2` runs a package __init__ that imports the whole library (NDB with sqlite3,
IPDB, conntrack, ethtool, devlink, ...): 6 MB of an idle agent's 60 MB budget, for the two
classes meshctl uses. So the package is registered bare (its spec, not its __init__) and only
the submodules asked for are loaded. A name only the real __init__ defines (anything else that
wants `from pyroute2 import NDB`) runs that __init__ then, so pyroute2 still works in full.

    from meshctl.netlink import IPRoute, NetlinkError
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any, Final

# Name -> the pyroute2 module that defines it.
EXPORTS: Final = {
    "IPRoute": "pyroute2.iproute.linux",
    "WireGuard": "pyroute2.netlink.generic.wireguard",
    "wgmsg": "pyroute2.netlink.generic.wireguard",
    "NetlinkError": "pyroute2.netlink.exceptions",
    "NLM_F_ACK": "pyroute2.netlink",
    "NLM_F_REQUEST": "pyroute2.netlink",
}


def bare_package() -> ModuleType:
    """sys.modules["pyroute2"], registered without running its __init__ if not imported yet."""
    if "pyroute2" in sys.modules:
        return sys.modules["pyroute2"]
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError("pyroute2 is not installed", name="pyroute2")
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def on_demand(name: str) -> Any:  # PEP 562: attributes the bare package lacks
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return importlib.import_module(f"pyroute2.{name}")  # a submodule: load just it
        except ModuleNotFoundError as exc:
            if exc.name != f"pyroute2.{name}":
                raise
        del package.__getattr__
        loader.exec_module(package)  # a name of the full library: run the real __init__ now
        return getattr(package, name)

    package.__getattr__ = on_demand  # type: ignore[method-assign]
    sys.modules["pyroute2"] = package
    return package


def __getattr__(name: str) -> Any:
    if name not in EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    bare_package()
    return getattr(importlib.import_module(EXPORTS[name]), name)
