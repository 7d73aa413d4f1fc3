"""A coordination repository built in tmp_path with the library API (no network)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pygit2

from meshctl.coord import admin, verify
from meshctl.coord.advertise import Advertised
from meshctl.coord.fs_snapshot import FsSnapshot
from meshctl.coord.join import make_request
from meshctl.identity import DeviceKeys
from meshctl.keys import DiscoPrivate, NodePrivate, SigningKey

NOW = int(time.time())


def new_device() -> DeviceKeys:
    return DeviceKeys(SigningKey.generate(), NodePrivate.generate(), DiscoPrivate.generate())


@dataclass
class Mesh:
    path: Path
    admin_keys: list[SigningKey]
    devices: dict[str, DeviceKeys] = field(default_factory=dict)

    @property
    def checkout(self) -> admin.Checkout:
        return admin.open_checkout(self.path)

    @property
    def fingerprint(self) -> str:
        return self.checkout.fingerprint

    def request(self, name: str, keys: DeviceKeys | None = None, endpoints: tuple[str, ...] = (),
                advertise: Advertised | None = None) -> DeviceKeys:
        keys = keys or new_device()
        data, sig = make_request(keys, self.checkout.root.network_id, name, endpoints, NOW, advertise)
        (self.path / "requests").mkdir(exist_ok=True)
        (self.path / "requests" / f"{name}.json").write_bytes(data)
        (self.path / "requests" / f"{name}.json.sig").write_bytes(sig)
        self.devices[name] = keys
        return keys

    def add(self, name: str, **kw: object) -> DeviceKeys:
        keys = self.request(name)
        admin.approve(self.checkout, name, self.admin_keys, NOW, **kw)  # type: ignore[arg-type]
        return keys

    def verify(self, memory: verify.TrustMemory | None = None, now: int = NOW) -> verify.Verified:
        return verify.verify_snapshot(FsSnapshot(self.path), self.fingerprint, now, memory)

    def commit(self, message: str = "change") -> str:
        repo = pygit2.Repository(str(self.path))
        repo.index.add_all()
        repo.index.write()
        tree = repo.index.write_tree()
        sig = pygit2.Signature("t", "t@example.com")
        parents = [] if repo.head_is_unborn else [repo.head.target]
        return str(repo.create_commit("HEAD", sig, sig, message, tree, parents))


def make_mesh(path: Path, n_admins: int = 1, threshold: int = 1) -> Mesh:
    keys = [SigningKey.generate() for _ in range(n_admins)]
    admin.init_repo(path, "acme", "100.64.0.0/10", None, keys, threshold, threshold, NOW)
    pygit2.init_repository(str(path), initial_head="main")
    mesh = Mesh(path, keys)
    mesh.commit("init")
    return mesh
