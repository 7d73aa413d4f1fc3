"""The endpoint record a device publishes on its own branch `endpoints/<name>` (pure).

    {"type": "meshctl-endpoint", "network_id", "name", "counter", "timestamp",
     "candidates": ["IP:PORT", ...], "disco_key", "wg_public_key"[, "agent": false]}

Signed by the device's identity key as file type "endpoint" (coord/signing.py), so it can be
replayed neither as another document nor in another mesh. It says where the device can be
reached now (its STUN-mapped and local addresses) and nothing else: it never grants
membership, addresses, tags or routes (coord/endpoint_verify.py decides what a node uses).

- `counter` grows strictly with every publish (unix milliseconds, or one more than the last
  one when the clock went back): nodes refuse a lower one (rollback) and the same one with
  other bytes (equivocation).
- `candidates` are literal addresses in canonical text (no host names: a record never makes
  a node resolve anything), at most MAX_CANDIDATES, no duplicates.
- `agent` is false when `meshctl sync` (cron) published the record: no agent on that device
  answers disco, so peers send WireGuard to its static endpoint or candidates at once instead
  of waiting for a probe to prove a path. Absent means true (the agent published it).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Final

from meshctl.coord import records, strictjson
from meshctl.coord.records import NAME_RE, NETWORK_ID_RE
from meshctl.keys import DiscoPublic, NodePublic

ENDPOINT_TYPE: Final = "meshctl-endpoint"
FILE_TYPE: Final = "endpoint"  # the signature's type prefix (coord/signing.py FILE_TYPES)
RECORD_FILE: Final = "endpoint.json"
SIG_FILE: Final = RECORD_FILE + ".sig"
BRANCH_PREFIX: Final = "endpoints/"

MAX_ENDPOINT_BYTES: Final = 4 * 1024  # 16 candidates and two keys take about 1 KiB
MAX_CANDIDATES: Final = 16
MAX_COUNTER: Final = 2**63 - 1
MAX_CANDIDATE_CHARS: Final = 47  # "[" + 39 (IPv6) + "]:" + 5


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    network_id: str
    name: str
    counter: int
    timestamp: int  # unix seconds, when it was published
    candidates: tuple[str, ...]  # canonical "IP:PORT" / "[IPv6]:PORT"
    disco_key: DiscoPublic
    wg_public_key: NodePublic
    agent: bool = True


def branch_of(name: str) -> str:
    return BRANCH_PREFIX + name


def canonical_candidate(text: str) -> str:
    """The one accepted spelling of a candidate; ValueError for anything else (host names,
    port 0, leading zeros, upper-case or uncompressed IPv6, scoped, unspecified, multicast or
    loopback addresses: a member's record must not send others' probes to their own host)."""
    if len(text) > MAX_CANDIDATE_CHARS:
        raise ValueError("too long")
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or port_text != str(int(port_text)) or not 1 <= int(port_text) <= 65535:
        raise ValueError("expected IP:PORT with a port from 1 to 65535")
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    if host.startswith("[") and host.endswith("]"):
        ip = ipaddress.IPv6Address(host[1:-1])
        if ip.ipv4_mapped is not None or "%" in host:
            raise ValueError("not a plain IPv6 address")
        out = f"[{ip}]:{int(port_text)}"
    else:
        ip = ipaddress.IPv4Address(host)
        out = f"{ip}:{int(port_text)}"
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
        raise ValueError("not a unicast address another device can reach")
    if out != text:
        raise ValueError(f"not in canonical form (expected {out!r})")
    return out


def parse_endpoint(data: bytes, name: str = RECORD_FILE) -> EndpointRecord:
    """Strict: unknown fields (a record that tries to say more, e.g. addresses or tags), missing
    ones, wrong types and out-of-range values are refused with the field named."""
    r = records.Reader(strictjson.loads(data, name=name, max_bytes=MAX_ENDPOINT_BYTES), name)
    r.only({"type", "network_id", "name", "counter", "timestamp", "candidates", "disco_key",
            "wg_public_key"}, {"agent"})
    records.type_check(r, ENDPOINT_TYPE)
    raw = r.items("candidates", MAX_CANDIDATES)
    candidates = []
    for item in raw:
        if not isinstance(item, str):
            raise r.fail("candidates", "items must be strings")
        try:
            candidates.append(canonical_candidate(item))
        except ValueError as exc:
            raise r.fail("candidates", f"invalid item {item[:60]!r}: {exc}") from None
    if len(set(candidates)) != len(candidates):
        raise r.fail("candidates", "has duplicate items")
    agent = r.doc.get("agent", True)
    if type(agent) is not bool:
        raise r.fail("agent", "must be true or false")
    return EndpointRecord(
        network_id=r.text("network_id", NETWORK_ID_RE),
        name=r.text("name", NAME_RE),
        counter=r.integer("counter", 0, MAX_COUNTER),
        timestamp=r.time("timestamp"),
        candidates=tuple(candidates),
        disco_key=r.disco_public("disco_key"),
        wg_public_key=r.node_public("wg_public_key"),
        agent=agent,
    )


def marshal_endpoint(rec: EndpointRecord) -> bytes:
    doc: dict[str, Any] = {
        "type": ENDPOINT_TYPE,
        "network_id": rec.network_id,
        "name": rec.name,
        "counter": rec.counter,
        "timestamp": records.format_time(rec.timestamp),
        "candidates": [canonical_candidate(c) for c in rec.candidates],
        "disco_key": rec.disco_key.b64(),
        "wg_public_key": rec.wg_public_key.b64(),
    }
    if not rec.agent:
        doc["agent"] = False
    return strictjson.dumps(doc)


def next_counter(now_ms: int, last: int | None) -> int:
    """Unix milliseconds, or one past the last counter when the clock went back (strictly increasing)."""
    return now_ms if last is None or now_ms > last else last + 1

