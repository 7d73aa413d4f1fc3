"""The agent (`meshctl up --foreground`): an asyncio loop that owns every timer and socket.

Two kinds of change reach the host, and they never overlap (one lock):
- the full pass (sync_pass.run_pass: every subsystem read, planned, applied) for a new map:
  on the sync timer, on `meshctl sync` through the control socket, when MagicDNS starts;
- WireGuard-only updates from the path engine, when a peer's endpoint changes.
SIGTERM stops the agent but leaves the interface up, so a restart does not disturb
tunnels; `meshctl down` is what removes it. Timers: the sync interval here, the engine's
keepalives, probes and STUN refresh there; nothing polls. The sync timer is a deadline, not a
delay (a pass for another reason never pushes the next fetch back), and comes sooner while a
peer has no path at all (record_poll.py: its endpoint record may give it one).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Final, Protocol, TypeVar

from meshctl.agent import control, heap
from meshctl.agent.failover import RouteFailover
from meshctl.agent.inputs import NotAMember
from meshctl.agent.lock import state_lock
from meshctl.agent.magicdns import MAGIC_INTERFACE_ADDRESS, MagicDns
from meshctl.agent.paths.engine import EndpointWrites, PathEngine
from meshctl.agent.reconcile import Reconciler
from meshctl.agent.record_poll import RecordPoll
from meshctl.agent.sync_pass import DesiredMemo, PassResult, Peek, peek_netmap, run_pass
from meshctl.coord.endpoint_publish import PublishRequest
from meshctl.coord.endpoint_verify import EndpointView
from meshctl.coord.netmap import NetMap, Prefix
from meshctl.errors import EXIT_FAILURE, EXIT_OK, MeshctlError
from meshctl.fsutil import atomic_write, ensure_private_dir
from meshctl.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_SYNC_INTERVAL_S: Final = 60.0
RETRY_AFTER_FAILURE_S: Final = 10.0
LOCK_WAIT_S: Final = 30.0
LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Extension(Protocol):
    """A long-running part of the agent (the path engine, DNS): started once, fed every new map."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def update_netmap(self, netmap: NetMap) -> None: ...

    def status(self) -> dict[str, Any]: ...

    async def handle(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """Answer a control request this extension owns (e.g. ping), else None."""
        ...


class Agent:
    def __init__(self, settings: Settings, sync_interval_s: float = DEFAULT_SYNC_INTERVAL_S,
                 accept_dns: bool = True) -> None:
        self.settings = settings
        self.accept_dns = accept_dns
        self.sync_interval_s = sync_interval_s
        self.reconciler = Reconciler(settings.interface, settings.wg_backend, settings.state_dir)
        self.engine: PathEngine | None = None
        self.dns: MagicDns | None = None
        self.failover: RouteFailover | None = None  # HA routers of subnet routes (issue 19)
        self._accept_routes = False
        self.extensions: list[Extension] = []
        self.last: PassResult | None = None
        self.last_error: str | None = None
        self.last_exit_code = EXIT_OK  # of last_error: `meshctl sync` through the agent exits with it
        self.passes = 0
        self._not_member = False  # the last failure: this node is not in the verified map
        self._desired = DesiredMemo()
        self._trigger = asyncio.Event()
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fetch_next = True
        self._extensions_started = False
        self._device = asyncio.Lock()  # full passes and endpoint updates, one at a time
        self._endpoint_writes: EndpointWrites = {}
        self._writer: asyncio.Task[None] | None = None
        self._poll = RecordPoll(sync_interval_s)
        self._last_fetch_at = float("-inf")  # loop time of the last pass that fetched
        self._started_wall = int(time.time())
        self._published_since_start = False

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        ensure_private_dir(self.settings.state_dir)
        pid_path = self.settings.state_dir / "agent.pid"
        atomic_write(pid_path, f"{os.getpid()}\n".encode(), mode=0o600)
        server = await self._serve_control()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        log.info("agent started (interface %s, sync every %gs)", self.settings.interface, self.sync_interval_s)
        self._loop = loop
        try:
            while not self._stop.is_set():
                await self._rotate_if_due()
                ok = await self._pass()
                # Deadlines, not delays: a pass for a path change must not push the next fetch back.
                interval = self.sync_interval_s if ok else min(self._retry_delay(), self.sync_interval_s)
                wake = min(self._last_fetch_at + interval, self._poll.deadline() or float("inf"))
                if await self._sleep(max(0.0, wake - loop.time())):
                    self._fetch_next = True  # the sync timer (or the record poll) fired: pull the repository
        finally:
            await self._stop_extensions()
            server.close()
            await server.wait_closed()
            self.settings.control_socket.unlink(missing_ok=True)
            pid_path.unlink(missing_ok=True)
            log.info("agent stopped; interface %s left up", self.settings.interface)

    def _retry_delay(self) -> float:
        # Not a member (yet, or any more) is no glitch: asking again every few seconds helps nobody.
        return self.sync_interval_s if self.last_error and self._not_member else RETRY_AFTER_FAILURE_S

    async def _sleep(self, delay: float) -> bool:
        """Wait for the timer, a trigger or stop; True when the timer ran out."""
        trigger = asyncio.ensure_future(self._trigger.wait())
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            done, _ = await asyncio.wait({trigger, stop}, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            trigger.cancel()
            stop.cancel()
        self._trigger.clear()
        return not done

    async def _pass(self) -> bool:
        if not self._extensions_started:
            await self._prime_extensions()
        self._not_member = False
        async with self._device:
            endpoints = self.engine.endpoints() if self.engine is not None else {}
            serve_dns = self.dns is not None and self.dns.serving
            choices = dict(self.failover.route_choices()) if self.failover is not None else {}
            fetched = self._fetch_due()
            if fetched:
                self._last_fetch_at = asyncio.get_running_loop().time()
            try:
                result = await asyncio.to_thread(self._pass_blocking, endpoints, serve_dns, fetched, choices)
            except MeshctlError as exc:
                self._not_member = isinstance(exc, NotAMember)
                self._failed(exc.message, exc.exit_code)
                return False
            except Exception as exc:  # noqa: BLE001 - a bug in one pass must not end the agent
                # The traceback goes to the log (never locals: they may hold keys); retried later.
                log.exception("unexpected: the pass raised %s", type(exc).__name__)
                self._failed(f"internal error in the pass ({type(exc).__name__}); see the agent log", EXIT_FAILURE,
                             logged=True)
                return False
        self.last = result
        self.passes += 1
        for ext in self.extensions:
            ext.update_netmap(result.netmap)
        if self.dns is not None and result.dns_upstreams is not None:
            self.dns.set_upstreams(result.dns_upstreams)
        self._after_signalling(result, fetched)
        errors = ([result.coordination_error] if result.coordination_error else []) + list(result.apply_errors)
        if errors:
            self._failed(errors[0].message, errors[0].exit_code)
        else:
            self.last_error, self.last_exit_code = None, EXIT_OK
        if result.accepted_new_state:
            log.info("accepted serial %d", result.netmap.serial)
        return not errors

    def _failed(self, message: str, exit_code: int, logged: bool = False) -> None:
        """Remember why the last pass failed; say it once, not at every retry."""
        if message != self.last_error and not logged:
            log.warning("sync failed: %s", message)
        self.last_error, self.last_exit_code = message, exit_code

    def _after_signalling(self, result: PassResult, fetched: bool) -> None:
        """Endpoint records to the path engine; whether to look for records sooner (record_poll)."""
        if self.engine is None:
            return
        news: frozenset[str] = frozenset()
        if result.endpoints is not None:
            news = self.engine.update_endpoints(result.endpoints.records)
        pub = result.published
        if pub is not None and pub.tried_at is not None and pub.tried_at >= self._started_wall:
            self._published_since_start = True
        now = asyncio.get_running_loop().time()
        if fetched:
            self._poll.fetched(now)
        pathless = self.engine.pathless()
        self._poll.update(pathless, bool(news & pathless), now)

    def _publish_request(self, view: EndpointView | None) -> PublishRequest | None:
        """On the loop: what our endpoint record would say now (asked by the pass when it gets
        there: the first netcheck often settles while the first pass starts wireguard-go)."""
        request = self.engine.publish_request() if self.engine is not None else None
        if request is None:
            return None
        return replace(request, started=not self._published_since_start,
                       replaced=view is not None and view.own_replaced)

    def _on_loop(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the event loop from the pass's thread and wait for its value (the loop is
        free meanwhile: it only waits for the pass)."""
        assert self._loop is not None
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def call() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(call)
        return done.result(timeout=LOCK_WAIT_S)

    def accepts_routes(self) -> bool:
        """Whether this node uses subnet routes (prefs.json, read on each pass): the HA monitor
        watches the routers only then."""
        return self._accept_routes

    def _pass_blocking(self, endpoints: dict[str, str | None], serve_dns: bool, fetch: bool,
                       route_choices: dict[Prefix, str]) -> PassResult:
        from meshctl.agent.prefs import load_prefs

        prefs = load_prefs(self.settings.state_dir)
        self._accept_routes = prefs.accept_routes
        with state_lock(self.settings.state_dir, LOCK_WAIT_S):
            result = run_pass(self.settings, int(time.time()), reconciler=self.reconciler, endpoints=endpoints,
                              fetch=fetch, extra_addresses=(MAGIC_INTERFACE_ADDRESS,) if self.accept_dns else (),
                              serve_dns=serve_dns, known_netmap=self.last.netmap if self.last else None,
                              desired_of=self._desired, prefs=prefs, route_choices=route_choices,
                              publish=lambda view: self._on_loop(lambda: self._publish_request(view)))
        # Here, in the pass's thread: ctypes lets go of the GIL, and the event loop (disco, DNS)
        # never waits for the trim. A pass's garbage (git packs, parsed maps) leaves the C heap.
        heap.trim()
        return result

    # --- key rotation (`meshctl rotate-keys`, `--rotate-every`) ---------------------------------

    async def _rotate_if_due(self) -> None:
        from meshctl.coord.rotate import due

        if due(self.settings.state_dir, self.settings.keys_dir, int(time.time())):
            try:
                await self._rotate()
            except MeshctlError as exc:  # retried on the next pass; the keys in force stay
                log.warning("automatic key rotation: %s", exc.message)

    async def _rotate(self) -> dict[str, Any]:
        """New keys announced and in force (coord/rotate.py); the extensions start again with them
        (disco sealing, relay logins), and the caller's next pass switches the interface."""
        from meshctl.coord.rotate import rotate_keys

        def blocking() -> dict[str, Any]:
            with state_lock(self.settings.state_dir, LOCK_WAIT_S):
                done = rotate_keys(self.settings.state_dir, self.settings.repo_dir, self.settings.keys_dir,
                                   int(time.time()))
            return {"old_wireguard": done.old_wireguard.b64(), "new_wireguard": done.new_wireguard.b64(),
                    "counter": done.counter}

        reply = await asyncio.to_thread(blocking)
        await self._stop_extensions()
        self._published_since_start = False
        return reply

    async def _stop_extensions(self) -> None:
        for ext in self.extensions:
            try:
                await ext.stop()
            except Exception:  # noqa: BLE001 - stopping: log and go on
                log.exception("unexpected: stopping %s failed", type(ext).__name__)
        self.extensions, self.engine, self.dns, self.failover = [], None, None, None
        self._extensions_started = False

    def _fetch_due(self) -> bool:
        """Fetch on the sync timer and on request; other passes only re-apply the last map."""
        due = self._fetch_next
        self._fetch_next = False
        return due or self.last is None

    def request_pass(self, fetch: bool = False) -> None:
        """Run a pass soon (from the loop's thread); `fetch` also pulls the repository."""
        self._fetch_next = self._fetch_next or fetch
        self._trigger.set()

    # --- endpoint changes: WireGuard-only updates -------------------------------------------

    def apply_endpoints(self, writes: EndpointWrites) -> None:
        """The path engine chose new endpoints: write them to WireGuard alone, soon, in order."""
        self._endpoint_writes.update(writes)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_endpoints())

    async def _write_endpoints(self) -> None:
        while self._endpoint_writes:
            async with self._device:
                writes, self._endpoint_writes = self._endpoint_writes, {}
                try:
                    await asyncio.to_thread(self.reconciler.apply_endpoints, writes)
                except MeshctlError as exc:
                    log.warning("endpoint update failed: %s; the next pass writes them", exc.message)
                    return
                except Exception:  # noqa: BLE001 - a bug here must not end the agent; the pass heals
                    log.exception("unexpected: the endpoint update raised")
                    return

    # --- extensions ---------------------------------------------------------------------------

    async def _prime_extensions(self) -> None:
        """Start the extensions and show them the map before WireGuard is first configured.

        The path engine must punch from WireGuard's port before WireGuard sends to a peer
        (DESIGN.md: conntrack poisoning), and chooses which endpoints WireGuard may use.
        """
        self._extensions_started = True
        peek: Peek | None
        try:
            peek = await asyncio.to_thread(self._peek_blocking)
        except MeshctlError:
            peek = None  # the real pass reports the reason
        candidates: list[Extension] = []
        if self.accept_dns:
            self.dns = MagicDns(self.settings, lambda: self.request_pass())
            candidates.append(self.dns)
        self.engine = PathEngine(self.settings, self.apply_endpoints, self.reconciler.device_endpoint,
                                 lambda: self.request_pass())
        candidates.append(self.engine)
        engine = self.engine
        self.failover = RouteFailover(engine.liveness, lambda: self.request_pass(), engine.ping_via_relay,
                                      engine.is_direct, self.accepts_routes)
        candidates.append(self.failover)
        for ext in candidates:
            try:
                await ext.start()
            except MeshctlError as exc:
                log.error("%s could not start: %s", type(ext).__name__, exc.message)
                if ext is self.engine:
                    self.engine = None
                if ext is self.dns:
                    self.dns = None
                if ext is self.failover:
                    self.failover = None
                continue
            self.extensions.append(ext)
        if peek is not None and peek.netmap.self_peer is not None:
            if self.engine is not None:
                self.engine.update_netmap(peek.netmap)
                if peek.endpoints is not None:
                    self.engine.update_endpoints(peek.endpoints.records)
            if self.dns is not None:
                await self.dns.serve(peek.netmap)  # the first pass already points the OS at it

    def _peek_blocking(self) -> Peek:
        """The newest map, fetched: the extensions (relay clients above all) start from it."""
        with state_lock(self.settings.state_dir, LOCK_WAIT_S):
            return peek_netmap(self.settings, int(time.time()))

    # --- control socket -------------------------------------------------------------------

    async def _serve_control(self) -> asyncio.AbstractServer:
        path = self.settings.control_socket
        path.unlink(missing_ok=True)
        old_umask = os.umask(0o177)  # the socket is born 0600
        try:
            server = await asyncio.start_unix_server(self._handle, path=str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        return server

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            if sock is None or not control.caller_allowed(control.peer_uid(sock)):
                return
            line = await asyncio.wait_for(reader.readuntil(b"\n"), timeout=5)
            if len(line) > control.MAX_REQUEST_BYTES:
                return
            request = json.loads(line)
            reply = await self._dispatch(request if isinstance(request, dict) else {})
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        if cmd == "status":
            return self.status()
        if cmd == "sync":
            self._fetch_next = True
            ok = await self._pass()
            return {"ok": ok, "error": self.last_error, "exit_code": self.last_exit_code, **self.status()}
        if cmd == "shutdown":
            self._stop.set()
            return {"ok": True}
        if cmd == "rotate-keys":
            try:
                rotated = await self._rotate()
            except MeshctlError as exc:
                return {"ok": False, "error": exc.message, "hint": exc.hint, "exit_code": exc.exit_code}
            ok = await self._pass()
            return {"ok": ok, **rotated, "error": self.last_error, "exit_code": self.last_exit_code}
        for ext in self.extensions:
            reply = await ext.handle(request)
            if reply is not None:
                return reply
        return {"ok": False, "error": f"unknown command {str(cmd)[:40]!r}"}

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"paths": {}, "endpoints": [], "nat": {}}
        for ext in self.extensions:
            doc.update(ext.status())
        return {
            **doc,
            "pid": os.getpid(),
            "passes": self.passes,
            "serial": self.last.netmap.serial if self.last else None,
            "error": self.last_error,
        }


def run_agent(settings: Settings, sync_interval_s: float, accept_dns: bool = True) -> None:
    heap.limit_arenas()  # before any thread starts
    for handler in logging.getLogger().handlers:  # the agent's log is read later: every line is dated
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    asyncio.run(Agent(settings, sync_interval_s, accept_dns).run())
