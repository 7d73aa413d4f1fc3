"""What a node keeps in its state directory about the coordination plane.

- node.json: which mesh this node joined (repo URL, branch, pinned root, name, the SSH key file
  that reaches the git host).
- trust.json: the (root hashes, serial, state hash, commit, expiry) it last accepted; only moves
  forward. It is all a no-op pass reads about the coordination state.
- netmap.json: the last accepted NetMap (so a no-op sync needs no re-verification).
- records-cache.json: peer records already verified, keyed by git blob ids.
- endpoints.json: per device, the newest endpoint record accepted (its counter only moves
  forward: a lower one is a rollback) and the record itself for the state it was judged in.
- endpoint-published.json: what this device last published on its own branch, and whether the
  host let it (no push rights is remembered).
- enrollments.json: the enrolled devices this node accepted (their files, so that a withheld branch
  drops nobody and a replaced one swaps nobody), which single-use key each used, and the last
  decision (coord/delegation.py).
- rotation.json: how often this device rotates its keys by itself (`rotate-keys --rotate-every`).
- own-enrollment.json: this device's own enrollment (`join --auth-key`), published on its branch
  until an admin absorbs it.

Every file is written atomically: a crash or a full disk leaves the old one intact.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshctl.coord.trust import TrustMemory
from meshctl.errors import MeshctlError
from meshctl.fsutil import atomic_write, ensure_private_dir

if TYPE_CHECKING:  # imported where used: a no-op pass reads trust.json and node.json only
    from meshctl.coord.delegation import Candidate
    from meshctl.coord.endpoint_publish import Published
    from meshctl.coord.endpoint_verify import EndpointView, Seen
    from meshctl.coord.netmap import NetMap
    from meshctl.coord.records import PeerRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    name: str
    repo_url: str
    branch: str
    root_fingerprint: str
    network_id: str
    ssh_key: str | None = None  # the key file git over ssh used at join (or --ssh-key): for cron and systemd


_RECORD_FIELDS = 8  # entries of a records-cache.json record (_record_to_list)


class NodeState:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir

    # --- node.json
    @property
    def config_path(self) -> Path:
        return self.dir / "node.json"

    def load_config(self) -> NodeConfig:
        try:
            doc = json.loads(self.config_path.read_text())
            return NodeConfig(**doc)
        except FileNotFoundError:
            raise MeshctlError(
                f"{self.config_path}: this device has not joined a mesh",
                "run `meshctl join REPO_URL --root sha256:...` first (or pass --state-dir)",
            ) from None
        except (ValueError, TypeError) as exc:
            raise MeshctlError(f"{self.config_path}: unreadable ({exc})") from None

    def save_config(self, cfg: NodeConfig) -> None:
        ensure_private_dir(self.dir)
        atomic_write(self.config_path, (json.dumps(asdict(cfg), indent=2) + "\n").encode())

    # --- trust.json
    @property
    def trust_path(self) -> Path:
        return self.dir / "trust.json"

    def load_memory(self) -> TrustMemory | None:
        try:
            doc = json.loads(self.trust_path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise MeshctlError(f"{self.trust_path}: corrupt ({exc}); refusing to forget what was "
                               "accepted", "restore it from a backup or re-join") from None
        expires = doc.get("expires")  # absent in files written before it was kept here
        return TrustMemory(tuple(doc["root_hashes"]), int(doc["serial"]), doc["state_sha256"],
                           doc.get("commit"), int(expires) if expires is not None else None)

    def save_memory(self, mem: TrustMemory, fetched_at: int) -> None:
        doc = {"root_hashes": list(mem.root_hashes), "root_version": mem.root_version,
               "serial": mem.serial, "state_sha256": mem.state_sha256, "commit": mem.commit,
               "expires": mem.expires, "fetched_at": fetched_at}
        atomic_write(self.trust_path, (json.dumps(doc, indent=2) + "\n").encode())

    def fetched_at(self) -> int | None:
        try:
            return int(json.loads(self.trust_path.read_text()).get("fetched_at"))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def touch_fetched(self, now: int) -> None:
        """Record a successful fetch that changed nothing (status shows freshness)."""
        mem = self.load_memory()
        if mem is not None:
            self.save_memory(mem, now)

    # --- netmap.json
    @property
    def netmap_path(self) -> Path:
        return self.dir / "netmap.json"

    def has_netmap(self) -> bool:
        return self.netmap_path.exists()

    def load_netmap(self) -> NetMap | None:
        from meshctl.coord.netmap_json import netmap_from_json

        try:
            return netmap_from_json(json.loads(self.netmap_path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return None  # a damaged cache is rebuilt from the repository

    def save_netmap(self, nm: NetMap) -> None:
        from meshctl.coord.netmap_json import netmap_to_json

        atomic_write(self.netmap_path, json.dumps(netmap_to_json(nm)).encode())

    # --- records-cache.json
    @property
    def cache_path(self) -> Path:
        return self.dir / "records-cache.json"

    def load_record_cache(self, network_id: str) -> dict[str, tuple[str, PeerRecord]]:
        try:
            doc = json.loads(self.cache_path.read_text())
            if doc.get("network_id") != network_id:
                return {}
            return {k: (v[0], _record_from_list(network_id, v[1:])) for k, v in doc["records"].items()}
        except (FileNotFoundError, ValueError, KeyError, TypeError, IndexError):
            return {}

    def save_record_cache(self, network_id: str, cache: dict[str, tuple[str, PeerRecord]],
                          keep: set[str]) -> None:
        recs = {k: [d, *_record_to_list(r)] for k, (d, r) in cache.items() if k in keep}
        atomic_write(self.cache_path,
                     json.dumps({"network_id": network_id, "records": recs}).encode())

    # --- endpoints.json
    @property
    def endpoints_path(self) -> Path:
        return self.dir / "endpoints.json"

    def load_endpoint_memory(self, network_id: str) -> EndpointMemory:
        from meshctl.coord.endpoint_verify import Seen

        try:
            doc = json.loads(self.endpoints_path.read_text())
            if doc.get("network_id") != network_id:
                return EndpointMemory(network_id)
            seen = {str(n): Seen(int(v[0]), str(v[1]), str(v[2])) for n, v in doc["seen"].items()}
            accepted = {str(n): (str(v[0]), str(v[1])) for n, v in doc["accepted"].items()}
            refused = {str(n): (str(v[0]), str(v[1])) for n, v in doc["refused"].items()}
            return EndpointMemory(network_id, str(doc["state_sha256"]), seen, accepted, refused)
        except FileNotFoundError:
            return EndpointMemory(network_id)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            # Only the rollback memory of endpoint records (a rolled-back record costs at most a
            # failed punch): kept aside for a look, and started afresh rather than stop syncing.
            log.warning("%s: unreadable (%s); kept as %s.corrupt, endpoint counters start afresh",
                        self.endpoints_path, exc, self.endpoints_path.name)
            self.endpoints_path.replace(self.endpoints_path.with_name(self.endpoints_path.name + ".corrupt"))
            return EndpointMemory(network_id)

    def load_endpoint_view(self, network_id: str) -> EndpointView:
        """The records and enrollments accepted last, the branches refused (no git): what `status` and a
        pass that does not fetch use."""
        from meshctl.coord.endpoint_record import parse_endpoint
        from meshctl.coord.endpoint_verify import EndpointView
        from meshctl.errors import ParseError

        mem = self.load_endpoint_memory(network_id)
        records = {}
        for name, (_commit, text) in mem.accepted.items():
            try:
                records[name] = parse_endpoint(text.encode())
            except ParseError:
                continue
        emem = self.load_enrollment_memory(network_id)
        return EndpointView(records, {n: why for n, (_c, why) in mem.refused.items()}, False, emem.accepted,
                            emem.refused, emem.used)

    def save_endpoint_memory(self, mem: EndpointMemory) -> None:
        doc = {"network_id": mem.network_id, "state_sha256": mem.state_sha256,
               "seen": {n: [s.counter, s.sha256, s.identity] for n, s in sorted(mem.seen.items())},
               "accepted": {n: list(v) for n, v in sorted(mem.accepted.items())},
               "refused": {n: list(v) for n, v in sorted(mem.refused.items())}}
        atomic_write(self.endpoints_path, json.dumps(doc).encode(), mode=0o600)

    # --- endpoint-published.json
    @property
    def published_path(self) -> Path:
        return self.dir / "endpoint-published.json"

    def load_published(self) -> Published:
        from meshctl.coord.endpoint_publish import Published

        try:
            doc = json.loads(self.published_path.read_text())
            return Published(doc["counter"], doc["at"], tuple(doc["candidates"]), bool(doc["agent"]),
                             doc["refused"], doc["failed"], doc["tried_at"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return Published()  # at worst one more push than needed, with a counter from the clock

    def save_published(self, pub: Published) -> None:
        doc = {"counter": pub.counter, "at": pub.at, "candidates": list(pub.candidates), "agent": pub.agent,
               "refused": pub.refused, "failed": pub.failed, "tried_at": pub.tried_at}
        atomic_write(self.published_path, (json.dumps(doc, indent=2) + "\n").encode())


    # --- enrollments.json
    @property
    def enrollments_path(self) -> Path:
        return self.dir / "enrollments.json"

    def load_enrollment_memory(self, network_id: str) -> EnrollmentMemory:
        try:
            doc = json.loads(self.enrollments_path.read_text())
            if doc.get("network_id") != network_id:
                return EnrollmentMemory(network_id)
            return EnrollmentMemory(
                network_id,
                accepted={str(n): _candidate_from(n, v) for n, v in doc["accepted"].items()},
                used={str(k): str(v) for k, v in doc["used"].items()},
                refused={str(n): str(v) for n, v in doc["refused"].items()},
                decided=str(doc["decided"]),
                valid_until=int(doc["valid_until"]),
            )
        except FileNotFoundError:
            return EnrollmentMemory(network_id)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, binascii.Error) as exc:
            # Lost, it would let an accepted enrollment be swapped once: kept aside, and said loudly.
            log.warning("%s: unreadable (%s); kept as %s.corrupt, enrollments are judged afresh",
                        self.enrollments_path, exc, self.enrollments_path.name)
            self.enrollments_path.replace(self.enrollments_path.with_name(self.enrollments_path.name + ".corrupt"))
            return EnrollmentMemory(network_id)

    def save_enrollment_memory(self, mem: EnrollmentMemory) -> None:
        doc = {"network_id": mem.network_id,
               "accepted": {n: _candidate_to(c) for n, c in sorted(mem.accepted.items())},
               "used": dict(sorted(mem.used.items())), "refused": dict(sorted(mem.refused.items())),
               "decided": mem.decided, "valid_until": mem.valid_until}
        atomic_write(self.enrollments_path, json.dumps(doc).encode(), mode=0o600)

    # --- own-enrollment.json
    @property
    def own_enrollment_path(self) -> Path:
        return self.dir / "own-enrollment.json"

    def load_own_enrollment(self, name: str) -> Candidate | None:
        try:
            return _candidate_from(name, json.loads(self.own_enrollment_path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, IndexError, binascii.Error):
            log.warning("%s: unreadable; this device's enrollment is not published", self.own_enrollment_path)
            return None

    def save_own_enrollment(self, candidate: Candidate | None) -> None:
        if candidate is None:
            self.own_enrollment_path.unlink(missing_ok=True)
            return
        atomic_write(self.own_enrollment_path, json.dumps(_candidate_to(candidate)).encode(), mode=0o600)


    # --- rotation.json
    @property
    def rotation_path(self) -> Path:
        return self.dir / "rotation.json"

    def load_rotate_every(self) -> int | None:
        """Seconds between automatic key rotations (`rotate-keys --rotate-every`), or None."""
        try:
            every = json.loads(self.rotation_path.read_text()).get("every")
            return int(every) if every else None
        except (FileNotFoundError, ValueError, TypeError, AttributeError):
            return None

    def save_rotate_every(self, every: int | None) -> None:
        atomic_write(self.rotation_path, (json.dumps({"every": every}) + "\n").encode())


@dataclass
class EnrollmentMemory:
    """enrollments.json (see the module docstring). `decided` names the inputs of the last decision
    (the state, the branches' enrollments, what was remembered); it holds until `valid_until` (the
    first expiry of an auth key it relied on)."""

    network_id: str
    accepted: dict[str, Candidate] = field(default_factory=dict)
    used: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    decided: str = ""
    valid_until: int = 0


def _candidate_to(c: Candidate) -> list[str]:
    return [base64.b64encode(x).decode() for x in (c.peer, c.peer_sig, c.enrollment, c.enrollment_sig)]


def _candidate_from(name: str, v: list[str]) -> Candidate:
    from meshctl.coord.delegation import Candidate

    if not isinstance(v, list) or len(v) != 4:
        raise ValueError("an enrollment is four files")
    peer, peer_sig, enr, enr_sig = (base64.b64decode(x, validate=True) for x in v)
    return Candidate(str(name), peer, peer_sig, enr, enr_sig)


@dataclass
class EndpointMemory:
    """endpoints.json: rollback memory (`seen`, per device, only moves forward) and, for the state
    `state_sha256`, each device's verdict: its accepted record as (branch commit, endpoint.json
    text), or its refused branch as (branch commit, reason)."""

    network_id: str
    state_sha256: str = ""
    seen: dict[str, Seen] = field(default_factory=dict)
    accepted: dict[str, tuple[str, str]] = field(default_factory=dict)
    refused: dict[str, tuple[str, str]] = field(default_factory=dict)


def _record_to_list(r: PeerRecord) -> list[Any]:
    # Every field of the record: an entry of an older meshctl (shorter) fails to load, and the
    # whole cache is rebuilt, rather than give back a record missing what it signed.
    return [r.name, r.identity_key.text(), r.wg_public_key.b64(), r.disco_key.b64(),
            list(r.endpoints), r.created, [str(x) for x in r.advertise_routes], r.advertise_exit_node]


def _record_from_list(network_id: str, v: list[Any]) -> PeerRecord:
    from meshctl.coord.records import PeerRecord
    from meshctl.keys import DiscoPublic, NodePublic, VerifyKey

    if len(v) != _RECORD_FIELDS:
        raise IndexError("a record cache entry of another meshctl version")
    return PeerRecord(network_id, v[0], VerifyKey.from_text(v[1]), NodePublic.from_b64(v[2]),
                      DiscoPublic.from_b64(v[3]), tuple(v[4]), int(v[5]),
                      tuple(ipaddress.ip_network(x) for x in v[6]), bool(v[7]))
