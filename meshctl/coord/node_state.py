"""What a node keeps in its state directory about the coordination plane.

- node.json: which mesh this node joined (repo URL, branch, pinned root, name, the SSH key file
  that reaches the git host).
- trust.json: the (root hashes, serial, state hash, commit, expiry) it last accepted; only moves
  forward. It is all a no-op pass reads about the coordination state.
- netmap.json: the last accepted NetMap (so a no-op sync needs no re-verification).
- records-cache.json: peer records already verified, keyed by git blob ids.

Every file is written atomically: a crash or a full disk leaves the old one intact.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshctl.coord.trust import TrustMemory
from meshctl.errors import MeshctlError
from meshctl.fsutil import atomic_write, ensure_private_dir

if TYPE_CHECKING:  # imported where used: a no-op pass reads trust.json and node.json only
    from meshctl.coord.netmap import NetMap
    from meshctl.coord.records import PeerRecord


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
