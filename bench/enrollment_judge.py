"""What judging enrollments costs a node (issue 20): coord/delegation.decide on a mesh of MEMBERS
members with N enrollments pending (not yet absorbed by an admin), next to the baseline of the same
run: judging N endpoint records (issue 18's check, one signature each). Pure code, no lab.

An enrollment costs three Ed25519 checks (its peer record, the auth key's and the identity key's
signatures on the enrollment) plus the scope and collision checks; a node makes the decision again
only when a device branch moved, the state changed or an auth key it relied on expired.

    .venv/bin/python bench/enrollment_judge.py [--members 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshctl.coord import addressing, endpoint_verify, records, signing  # noqa: E402
from meshctl.coord.delegation import Candidate, decide  # noqa: E402
from meshctl.coord.endpoint_publish import build_record  # noqa: E402
from meshctl.coord.enrollment import Enrollment, sign_enrollment  # noqa: E402
from meshctl.coord.netmap import NetMap, NetworkSettings, Peer  # noqa: E402
from meshctl.keys import DiscoPrivate, DiscoPublic, NodePrivate, NodePublic, SigningKey, VerifyKey  # noqa: E402

NETWORK = "ab" * 16
NOW = 1_733_000_000
V4 = ipaddress.IPv4Network("100.64.0.0/10")
V6 = ipaddress.IPv6Network("fd7a:115c:a1e0::/48")


def mesh(members: int, key: records.AuthKey) -> NetMap:
    peers = []
    for i in range(members):
        v4 = V4[i + 1]
        raw = hashlib.sha256(i.to_bytes(4, "big")).digest()
        peers.append(Peer(f"m{i}", VerifyKey(raw), NodePublic(raw), DiscoPublic(raw),
                          (v4, addressing.mesh_ipv6_for(V6, v4))))
    return NetMap(NetworkSettings(NETWORK, "acme", V4, V6, "acme.mesh"), 2, NOW + 86400, "0" * 64, tuple(peers),
                  authkeys=(key,))


Record = tuple[str, bytes, bytes, VerifyKey]


def enrollments(n: int, secret: SigningKey, key: records.AuthKey) -> tuple[dict[str, Candidate], list[Record]]:
    cands: dict[str, Candidate] = {}
    records_: list[Record] = []
    for i in range(n):
        identity, wg, disco = SigningKey.generate(), NodePrivate.generate(), DiscoPrivate.generate()
        name = f"web-{i}"
        peer = records.marshal_peer(records.PeerRecord(NETWORK, name, identity.public(), wg.public(), disco.public(),
                                                       (), NOW - 60))
        peer_sig = signing.marshal_signatures([signing.sign(identity, "peer", NETWORK, peer)])
        v4 = key.pool[i + 1]
        doc = Enrollment(NETWORK, key.id, name, hashlib.sha256(peer).hexdigest(),
                         (v4, addressing.mesh_ipv6_for(V6, v4)), NOW - 60)
        data, sig = sign_enrollment(doc, secret, identity)
        cands[name] = Candidate(name, peer, peer_sig, data, sig)
        _rec, files = build_record(identity, NETWORK, name, (), disco.public(), wg.public(), True, NOW, 1, None)
        records_.append((name, files["endpoint.json"], files["endpoint.json.sig"], identity.public()))
    return cands, records_


def timed(fn, rounds: int) -> float:  # type: ignore[no-untyped-def]
    runs = []
    for _ in range(rounds):
        began = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - began)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    secret = SigningKey.generate()
    public = secret.public()
    key = records.AuthKey(public.key_id(), public, ("tag:server",), ipaddress.IPv4Network("100.96.0.0/16"),
                          NOW + 86400, reusable=True)
    netmap = mesh(args.members, key)
    print(f"{args.members} members; median of {args.rounds} rounds")
    print("| pending enrollments | decide (ms) | per enrollment (ms) | baseline: as many endpoint records (ms) "
          "| ratio |")
    print("| --- | --- | --- | --- | --- |")
    for n in (10, 100, 1000):
        cands, recs = enrollments(n, secret, key)
        verdict = decide(netmap, cands, {}, {}, NOW)
        assert len(verdict.accepted) == n, verdict.refused
        took = timed(lambda c=cands: decide(netmap, c, {}, {}, NOW), args.rounds)
        base = timed(lambda r=recs: [endpoint_verify.judge(name, data, sig, ident, NETWORK, None)
                                     for name, data, sig, ident in r], args.rounds)
        print(f"| {n} | {took * 1000:.1f} | {took * 1000 / n:.3f} | {base * 1000:.1f} | {took / base:.2f} |")


if __name__ == "__main__":
    main()
