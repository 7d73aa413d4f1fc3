"""The agent (`meshctl up --foreground`): an asyncio loop that owns every timer and socket.

Every trigger (the sync timer, a `meshctl sync` through the control socket) runs the
same full pass. SIGTERM stops the agent but leaves the interface up, so a restart
does not disturb tunnels; `meshctl down` is what removes it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Final, Protocol, TypeVar

from meshctl.agent import control, heap
from meshctl.agent.lock import state_lock
from meshctl.agent.magicdns import MAGIC_INTERFACE_ADDRESS
from meshctl.agent.reconcile import Reconciler
from meshctl.agent.record_poll import RecordPoll
from meshctl.agent.sync_pass import PassResult, run_pass
from meshctl.coord.endpoint_publish import PublishRequest
from meshctl.coord.endpoint_record import EndpointRecord
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


class Extension(Protocol):
    """A long-running part of the agent (NAT traversal, DNS): started once, fed every new map."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def update_netmap(self, netmap: NetMap) -> None: ...

    def endpoint_overrides(self) -> dict[str, str | None]: ...

    def route_choices(self) -> Mapping[Prefix, str]:
        """For prefixes several routers carry, the one to use (agent/failover.py; others: none)."""
        ...

    def status(self) -> dict[str, Any]: ...

    async def handle(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """Answer a control request this extension owns (e.g. ping), else None."""
        ...


class Signalling(Protocol):
    """The extension that finds paths (NAT traversal): it takes the devices' endpoint records and
    says what this device's own record would say (issue 18, endpoints through the git host)."""

    def update_endpoints(self, records: Mapping[str, EndpointRecord]) -> frozenset[str]: ...

    def publish_request(self) -> PublishRequest | None: ...

    def pathless(self) -> frozenset[str]: ...


def default_extensions(agent: Agent) -> list[Extension]:
    """The extensions the agent runs; each is optional so a failure to start one is reported, not fatal."""
    out: list[Extension] = []
    if agent.accept_dns:
        from meshctl.agent.magicdns import MagicDns

        out.append(MagicDns(agent.settings))
    from meshctl.agent.failover import RouteFailover
    from meshctl.agent.magic import Magic
    from meshctl.agent.relaying import Relaying  # relays and the relayed path, around Magic

    magic = Magic(agent.settings, agent.request_pass)
    out.append(Relaying(agent.settings, agent.request_pass, magic))
    out.append(RouteFailover(magic.liveness, agent.request_pass, magic.ping_via_relay, magic.is_direct,
                             agent.accepts_routes))
    return out


class Agent:
    def __init__(self, settings: Settings, sync_interval_s: float = DEFAULT_SYNC_INTERVAL_S,
                 accept_dns: bool = True) -> None:
        self.settings = settings
        self.accept_dns = accept_dns
        self.extensions: list[Extension] = []
        self.sync_interval_s = sync_interval_s
        self.reconciler = Reconciler(settings.interface, settings.wg_backend, settings.state_dir)
        self.last: PassResult | None = None
        self.last_error: str | None = None
        self.last_exit_code = EXIT_OK  # of last_error: `meshctl sync` through the agent exits with it
        self.passes = 0
        self._trigger = asyncio.Event()
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fetch_next = True
        self._extensions_started = False
        self._accept_routes = False
        self.signalling: Signalling | None = None
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
                interval = self.sync_interval_s if ok else min(RETRY_AFTER_FAILURE_S, self.sync_interval_s)
                wake = min(self._last_fetch_at + interval, self._poll.deadline() or float("inf"))
                if await self._sleep(max(0.0, wake - loop.time())):
                    self._fetch_next = True  # the sync timer (or the record poll) fired: pull the repository
        finally:
            for ext in self.extensions:
                try:
                    await ext.stop()
                except Exception:  # noqa: BLE001 - shutting down: log and go on
                    log.exception("unexpected: stopping %s failed", type(ext).__name__)
            server.close()
            await server.wait_closed()
            self.settings.control_socket.unlink(missing_ok=True)
            pid_path.unlink(missing_ok=True)
            log.info("agent stopped; interface %s left up", self.settings.interface)

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
        fetched = self._fetch_due()
        if fetched:
            self._last_fetch_at = asyncio.get_running_loop().time()
        try:
            result = await asyncio.to_thread(self._pass_blocking, fetched)
        except MeshctlError as exc:
            self.last_error, self.last_exit_code = exc.message, exc.exit_code
            log.warning("sync failed: %s", exc.message)
            return False
        except Exception as exc:  # noqa: BLE001 - a bug in one pass must not end the agent
            # The traceback goes to the log (never locals: they may hold keys); retried later.
            log.exception("unexpected: the pass raised %s", type(exc).__name__)
            self.last_error = f"internal error in the pass ({type(exc).__name__}); see the agent log"
            self.last_exit_code = EXIT_FAILURE
            return False
        self.last = result
        self.passes += 1
        for ext in self.extensions:
            ext.update_netmap(result.netmap)
        self._after_signalling(result, fetched)
        errors = ([result.coordination_error] if result.coordination_error else []) + list(result.apply_errors)
        self.last_error = errors[0].message if errors else None
        self.last_exit_code = errors[0].exit_code if errors else EXIT_OK
        if result.accepted_new_state:
            log.info("accepted serial %d", result.netmap.serial)
        return not errors

    def accepts_routes(self) -> bool:
        """Whether this node uses subnet routes (prefs.json, read on each pass)."""
        return self._accept_routes

    def _after_signalling(self, result: PassResult, fetched: bool) -> None:
        """Endpoint records to the path finder; whether to look for records sooner (record_poll)."""
        if self.signalling is None:
            return
        news: frozenset[str] = frozenset()
        if result.endpoints is not None:
            news = self.signalling.update_endpoints(result.endpoints.records)
        pub = result.published
        if pub is not None and pub.tried_at is not None and pub.tried_at >= self._started_wall:
            self._published_since_start = True
        now = asyncio.get_running_loop().time()
        if fetched:
            self._poll.fetched(now)
        pathless = self.signalling.pathless()
        self._poll.update(pathless, bool(news & pathless), now)

    def _publish_request(self, view: EndpointView | None) -> PublishRequest | None:
        """On the loop: what our endpoint record would say now (asked by the pass when it gets
        there: the first netcheck often settles while the first pass starts wireguard-go)."""
        request = self.signalling.publish_request() if self.signalling is not None else None
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

    def _pass_blocking(self, fetch: bool) -> PassResult:
        from meshctl.agent.prefs import load_prefs

        overrides: dict[str, str | None] = {}
        choices: dict[Prefix, str] = {}
        for ext in self.extensions:
            overrides.update(ext.endpoint_overrides())
            choices.update(ext.route_choices())
        prefs = load_prefs(self.settings.state_dir)
        self._accept_routes = prefs.accept_routes
        with state_lock(self.settings.state_dir, LOCK_WAIT_S):
            result = run_pass(self.settings, int(time.time()), reconciler=self.reconciler,
                              endpoint_overrides=overrides, fetch=fetch,
                              extra_addresses=(MAGIC_INTERFACE_ADDRESS,) if self.accept_dns else (),
                              known_netmap=self.last.netmap if self.last else None,
                              prefs=prefs, route_choices=choices,
                              publish=lambda view: self._on_loop(lambda: self._publish_request(view)))
            result.netmap  # noqa: B018 - a no-op pass loads its map lazily: here, where errors are caught
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
        for ext in self.extensions:
            try:
                await ext.stop()
            except Exception:  # noqa: BLE001 - restarting: log and go on
                log.exception("unexpected: stopping %s failed", type(ext).__name__)
        self.extensions, self.signalling, self._extensions_started = [], None, False
        self._published_since_start = False
        return reply

    def _fetch_due(self) -> bool:
        """Fetch on the sync timer and on request; a path change only re-applies the last map."""
        due = self._fetch_next
        self._fetch_next = False
        return due or self.last is None

    def request_pass(self, fetch: bool = False) -> None:
        """Thread-safe: run a pass soon (e.g. a path changed); `fetch` also pulls the repository."""
        def trigger() -> None:
            self._fetch_next = self._fetch_next or fetch
            self._trigger.set()

        if self._loop is not None:
            self._loop.call_soon_threadsafe(trigger)

    async def _prime_extensions(self) -> None:
        """Start the extensions and show them the map before WireGuard is first configured.

        NAT traversal must punch from WireGuard's port before WireGuard sends to a peer
        (DESIGN.md: conntrack poisoning), and decides which endpoints WireGuard may use.
        """
        self._extensions_started = True
        try:
            peek = await asyncio.to_thread(self._peek_blocking)
        except MeshctlError:
            peek = None  # the real pass reports the reason
        await self._start_extensions()
        if peek is not None:
            for ext in self.extensions:
                ext.update_netmap(peek.netmap)
            if self.signalling is not None and peek.endpoints is not None:
                self.signalling.update_endpoints(peek.endpoints.records)

    def _peek_blocking(self) -> PassResult:
        """The newest map, fetched: the extensions (relay clients above all) start from it."""
        with state_lock(self.settings.state_dir, LOCK_WAIT_S):
            result = run_pass(self.settings, int(time.time()), dry_run=True, reconciler=self.reconciler)
            result.netmap  # noqa: B018 - loaded here, where its errors are caught
            return result

    async def _start_extensions(self) -> None:
        for ext in default_extensions(self):
            try:
                await ext.start()
            except MeshctlError as exc:
                log.error("%s could not start: %s", type(ext).__name__, exc.message)
                continue
            self.extensions.append(ext)
            if callable(getattr(ext, "publish_request", None)):
                self.signalling = ext  # type: ignore[assignment]

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
    asyncio.run(Agent(settings, sync_interval_s, accept_dns).run())
