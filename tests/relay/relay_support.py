"""Helpers for the relay tests: a signed coordination repo in tmp_path, a core/client pair."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import pygit2

from meshctl.coord import admin
from meshctl.coord.join import make_request
from meshctl.identity import DeviceKeys
from meshctl.keys import DiscoPrivate, NodePrivate, NodePublic, SigningKey, VerifyKey
from meshctl.relay.client import RelayClient, RelayClientConfig
from meshctl.relay.client_core import ClientSession
from meshctl.relay.server import RelayConfig, RelayServer, load_or_create_identity
from meshctl.relay.server_core import RelayCore, ServerEvent

NOW = int(time.time())
NETWORK_ID = "ab" * 16


def new_device() -> DeviceKeys:
    return DeviceKeys(SigningKey.generate(), NodePrivate.generate(), DiscoPrivate.generate())


@dataclass
class RelayMesh:
    """A real coordination repository (git, signed) with named member devices."""

    path: Path
    admin_keys: list[SigningKey]
    devices: dict[str, DeviceKeys] = field(default_factory=dict)

    @property
    def checkout(self) -> admin.Checkout:
        return admin.open_checkout(self.path)

    @property
    def fingerprint(self) -> str:
        return self.checkout.fingerprint

    @property
    def network_id(self) -> str:
        return self.checkout.root.network_id

    def add(self, name: str) -> DeviceKeys:
        keys = new_device()
        data, sig = make_request(keys, self.network_id, name, (), NOW)
        (self.path / "requests").mkdir(exist_ok=True)
        (self.path / "requests" / f"{name}.json").write_bytes(data)
        (self.path / "requests" / f"{name}.json.sig").write_bytes(sig)
        admin.approve(self.checkout, name, self.admin_keys, NOW)
        self.devices[name] = keys
        return keys

    def revoke(self, name: str) -> None:
        admin.revoke(self.checkout, name, self.admin_keys, NOW)

    def commit(self, message: str = "change") -> str:
        repo = pygit2.Repository(str(self.path))
        repo.index.add_all()
        repo.index.write()
        tree = repo.index.write_tree()
        sig = pygit2.Signature("t", "t@example.com")
        parents = [] if repo.head_is_unborn else [repo.head.target]
        return str(repo.create_commit("HEAD", sig, sig, message, tree, parents))


def make_relay_mesh(path: Path, members: tuple[str, ...] = ("alpha", "bravo", "charlie")) -> RelayMesh:
    keys = [SigningKey.generate()]
    admin.init_repo(path, "acme", "100.64.0.0/10", None, keys, 1, 1, NOW)
    pygit2.init_repository(str(path), initial_head="main")
    mesh = RelayMesh(path, keys)
    for name in members:
        mesh.add(name)
    mesh.commit("init")
    return mesh


# --- sans-IO pairs -----------------------------------------------------------------------------


def counter_rand() -> Callable[[int], bytes]:
    """Deterministic 'random' bytes (distinct on every call)."""
    counter = itertools.count(1)

    def rand(n: int) -> bytes:
        return next(counter).to_bytes(n, "big")

    return rand


@dataclass
class Member:
    identity: SigningKey
    wg: NodePublic

    @classmethod
    def new(cls) -> Member:
        return cls(SigningKey.generate(), NodePrivate.generate().public())

    @property
    def verify_key(self) -> VerifyKey:
        return self.identity.public()


def make_core(members: list[Member], name: str = "home", signing_key: SigningKey | None = None,
              **limits: float) -> RelayCore:
    from meshctl.relay.server_core import Limits

    core = RelayCore(name, os.urandom(32), counter_rand(), signing_key, Limits(**limits))  # type: ignore[arg-type]
    core.set_members(NETWORK_ID, {m.verify_key: m.wg for m in members}, 0.0)
    return core


def login(core: RelayCore, member: Member, conn: object, now: float = 1.0, relay_name: str | None = "home",
          relay_key: VerifyKey | None = None) -> ClientSession:
    """Run the handshake between a fresh ClientSession and `core` over a perfect link."""
    sess = ClientSession(member.identity, member.wg, NETWORK_ID, counter_rand(), relay_name, relay_key)
    sess.connect(now)
    pump(core, sess, conn, now)
    return sess


def drain(core: RelayCore) -> tuple[list[tuple[object, bytes]], list[ServerEvent]]:
    """The core's output queue, split: (frames to send, session events), in order."""
    frames: list[tuple[object, bytes]] = []
    events: list[ServerEvent] = []
    for item in core.take_output():
        if isinstance(item, tuple):
            frames.append(item)
        else:
            events.append(item)
    return frames, events


def feed(core: RelayCore, conn: object, data: bytes, now: float) -> list[tuple[object, bytes]]:
    """One frame into the core; the frames it queued in answer (its events are dropped)."""
    core.receive(conn, data, now)
    return drain(core)[0]


def pump(core: RelayCore, sess: ClientSession, conn: object,
         now: float) -> list[tuple[object, bytes] | ServerEvent]:
    """Deliver client frames to the core and the core's replies for `conn` back; return the
    rest of its output (frames for others, session events)."""
    elsewhere: list[tuple[object, bytes] | ServerEvent] = []
    for _ in range(10):
        frames = sess.data_to_send()
        if not frames:
            break
        for f in frames:
            core.receive(conn, f, now)
            for item in core.take_output():
                if isinstance(item, tuple) and item[0] == conn:
                    sess.receive_frame(item[1], now)
                else:
                    elsewhere.append(item)
    return elsewhere


# --- asyncio helpers -----------------------------------------------------------------------------


def self_signed_cert(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A certificate for `host` (IP SAN) and its key, written as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshctl test relay")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "relay.crt", directory / "relay.key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def wait_for(check: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    """Poll `check` until true or `timeout` seconds passed (no fixed sleeps in tests)."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if check():
            return True
        await asyncio.sleep(step)
    return check()


def flood(address: tuple[str, int], identity_raw: bytes, wg_raw: bytes, network_id: str, dst_raw: bytes,
          seconds: float, size: int, result: object) -> None:
    """Log in over UDP (blocking socket) and send to `dst` as fast as possible (a separate process)."""
    import socket

    identity = SigningKey(identity_raw)
    sess = ClientSession(identity, NodePublic(wg_raw), network_id, os.urandom, None)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(address)
    sock.settimeout(1.0)
    sess.connect(time.monotonic())
    deadline = time.monotonic() + 5
    while sess.state.value != "connected" and time.monotonic() < deadline:
        for f in sess.data_to_send():
            sock.send(f)
        try:
            sess.receive_frame(sock.recv(65535), time.monotonic())
        except TimeoutError:
            sess.handle_timer(time.monotonic())
    sent = 0
    frame = sess.send_packet(NodePublic(dst_raw), b"\x04" + bytes(size - 1))
    assert frame is not None, "flooder could not log in"
    sock.setblocking(False)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(100):
            try:
                sock.send(frame)
                sent += 1
            except (BlockingIOError, ConnectionRefusedError):
                pass
    result.put(sent)  # type: ignore[attr-defined]


# --- relay server and clients in one event loop ---------------------------------------------------

def relay_config(mesh: RelayMesh, tmp: Path, **kw: object) -> RelayConfig:
    cfg = RelayConfig(listen="127.0.0.1:0", repo_url=str(mesh.path), root_fingerprint=mesh.fingerprint,
                      state_dir=tmp / "relay-state", name="home", metrics="127.0.0.1:0", sync_interval_s=3600)
    return replace(cfg, **kw)  # type: ignore[arg-type]


@asynccontextmanager
async def running(config: RelayConfig) -> AsyncIterator[RelayServer]:
    server = RelayServer(config, load_or_create_identity(config.state_dir))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class Inbox:
    def __init__(self) -> None:
        self.packets: list[tuple[NodePublic, bytes]] = []

    def __call__(self, src: NodePublic, payload: bytes) -> None:
        self.packets.append((src, payload))

    def count_from(self, src: NodePublic) -> int:
        return sum(1 for s, _ in self.packets if s == src)


def client_for(server: RelayServer, mesh: RelayMesh, keys: DeviceKeys, inbox: Inbox | None = None,
               **kw: object) -> RelayClient:
    assert server.udp_addr is not None and server.identity is not None
    cfg = RelayClientConfig(f"127.0.0.1:{server.udp_addr[1]}", mesh.network_id, relay_name="home",
                            relay_key=server.identity.public())
    return RelayClient(replace(cfg, **kw), keys.identity, keys.wireguard.public(),  # type: ignore[arg-type]
                       inbox or Inbox())


async def http_get(addr: tuple[str, int], path: str) -> str:
    reader, writer = await asyncio.open_connection(*addr)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return data.decode()


