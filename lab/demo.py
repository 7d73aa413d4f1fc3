"""`make demo`: a real mesh in network namespaces, built the way a person builds one.

Three devices on a LAN and a git server. An admin creates the mesh, each device asks
to join on a pull-request branch, the admin approves and merges, the agents come up,
and every device pings every other over the mesh. Everything is removed at the end.
"""

from __future__ import annotations

import sys
import time

from lab import LabError, LabInterrupted, lab_unavailable, open_lab
from lab.scenario import build_lan_mesh


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main() -> int:
    reason = lab_unavailable()
    if reason:
        print(f"make demo needs the network lab: {reason}", file=sys.stderr)
        return 1
    started = time.monotonic()
    with open_lab("mdemo") as lab:
        say("building the lab: 3 devices and a git server on one LAN (network namespaces)")
        say("admin: meshctl init --remote; devices: meshctl join (pull-request branches); "
            "admin: meshctl admin approve NAME")
        mesh = build_lan_mesh(lab, 3, name="demo")
        print(f"mesh 'demo' served at {mesh.git_url}, root {mesh.fingerprint[:23]}…")
        print(mesh.git("log", "--oneline", "main"))
        say("devices: meshctl up")
        for name in mesh.members:
            print(mesh.meshctl(name, "up").stdout.strip())
        for name in mesh.members:
            say(f"{name}: meshctl status")
            print(mesh.meshctl(name, "status").stdout.rstrip())
        say("ping matrix over the mesh (IPv4 / IPv6)")
        names = list(mesh.members)
        matrix = mesh.ping_matrix()
        print("from/to".ljust(10) + "".join(f"{n:>14}" for n in names))
        for a in names:
            cells = []
            for b in names:
                if a == b:
                    cells.append(f"{'-':>14}")
                else:
                    v4, v6 = matrix[(a, b)]
                    cells.append(f"{('ok' if v4 else 'FAIL') + ' / ' + ('ok' if v6 else 'FAIL'):>14}")
            print(f"{a:<10}" + "".join(cells))
        ok = all(v4 and v6 for v4, v6 in matrix.values())
        say("meshctl down on every device; removing the lab")
        for name in mesh.members:
            print(mesh.meshctl(name, "down").stdout.strip())
    print(f"\ndemo {'passed' if ok else 'FAILED'} in {time.monotonic() - started:.0f} s")
    return 0 if ok else 1


def run() -> int:
    """main(), with Ctrl-C (or SIGTERM) ending the demo in one line: the lab's own cleanup has
    already removed every namespace and process by the time the interrupt arrives here."""
    try:
        return main()
    except KeyboardInterrupt as exc:  # LabInterrupted too: SIGTERM, SIGHUP
        what = str(exc) if isinstance(exc, LabInterrupted) and "SIGINT" not in str(exc) else "Ctrl-C"
        print(f"\ndemo interrupted ({what}); the lab is removed", file=sys.stderr, flush=True)
        return 130
    except LabError as exc:
        print(f"\ndemo failed: {exc}; the lab is removed", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(run())
