"""`serve`: the bridge process. One Trio nursery holds the MCCP server, the call services and signals.

Theory of operation
-------------------
`run_bridge(config, services=...)` loads the certificate and the extension table, opens the *services*,
starts `mccp.server.serve_mccp` on the TLS listener, and reports a `BridgeContext` via `task_status`.
Every WSS connection goes through `BridgeContext.handle_connection`:

0. The MCCP front (`mccp.server`) has already applied the front door's settings (`front_settings`):
   connections per address and in handshake (closed at accept), `handshake_timeout`, the `Origin`
   allow-list (`allowed_origins`; 403 at the upgrade), `/metrics` access (`metrics_allow`,
   `metrics_token`; 403), message size and rate, `call_timeout`, keep-alive.
1. If the page was opened from `file://` (`Origin: null`) and `allow_file_origin` is off, the page gets
   `hangup` 403 and the connection is closed.
2. The first message must be a `call` (the MCCP server itself answers `ping` and enforces its call
   timeout with `hangup` 408; `call_timeout` + `FIRST_MESSAGE_SLACK` is a backstop).
3. The caller is checked by `bridge.auth.Authenticator`: scrypt runs in a worker thread and the
   throttle delay is waited. A refusal gets `hangup` 403 (wrong credentials) or 429 (locked out), the
   connection is closed and nothing else happens.
4. An accepted call goes to the `CallHandler` (with an `AuthenticatedCall`). Each connection runs in
   its own cancel scope, so a graceful stop can cancel calls (and pages that have not called yet)
   before the listener.

The seam for the per-call code is `services`: an async context manager factory
`(BridgeContext) -> AsyncContextManager[CallHandler]`. It is entered once, before the listener starts,
inside the bridge's nursery. It is the place to start the SIP UA, the registrar and the echo extension
and to yield the handler that runs one call: `bridge.services.bridge_services` yields `bridge.call.run_call`
(`serve` passes it; tests pass scripted services).

Signals (trio.open_signal_receiver): SIGHUP re-reads extensions.toml and the certificate (reloaded into
the same SSLContext, so new connections get it). SIGTERM/SIGINT stop gracefully: new connections are
refused with 503, live calls are cancelled, and they get `shutdown_grace` seconds for their own bounded
clean-up before the listener and the services are cancelled, and `run_bridge` returns. A second
SIGTERM/SIGINT during that time exits the process at once with status 128+signal.

With `plain_ws_port` set, a second listener (plain HTTP/WS on `plain_ws_listen`) serves a TLS-terminating
proxy: the same front and caps, connections only from `trusted_proxies`, the page's address taken from
their `X-Forwarded-For`.

Worker processes (`serve --workers N`, `bridge.workers`): `run_bridge(..., worker=WorkerSlot(i, N, fd))`
binds the WSS port with SO_REUSEPORT (every worker listens on the same port and the kernel spreads the
connections), says `ready` on the control socket `fd` once it listens, and stops gracefully when the
supervisor goes away (EOF on that socket). The services read `context.worker` for their share.

Memory: a burst of calls set up or ended leaves free memory in malloc's heaps (TLS records and parsing
buffers between the long-lived objects of the calls that stay; the DTLS handshakes' state, freed 2 s
after each handshake, in the arena of the thread that does their OpenSSL work, `bridge.openssl_thread`,
where it leaves no holes between live objects), which nothing reuses until the next burst.
`BridgeContext.trim_heap` gives those pages back to the OS (glibc `malloc_trim`, every arena) once
connections have neither opened nor closed for `HEAP_QUIET` seconds (at the latest `HEAP_MAX_DELAY`
after the first change, under a steady stream of calls).
"""

from __future__ import annotations

import ctypes
import datetime as dt
import importlib.resources
import logging
import os
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, NoReturn, assert_never

import trio
from bridge.auth import (
    Authenticator,
    AuthOutcome,
    AuthResult,
    CredentialsCache,
    KdfGate,
    ThrottlePolicy,
    authenticate,
)
from bridge.certs import (
    CertError,
    CertInfo,
    cert_paths,
    ensure_certificate,
    host_names,
    load_into,
    new_server_context,
)
from bridge.config import Config
from bridge.extensions import ExtensionsError, ExtensionTable, load_extensions
from bridge.workers import SINGLE, WorkerSlot
from mccp.access import AddressSet, OriginPolicy, RouteAccess
from mccp.messages import Call, Dtmf, Hangup, HangupRequest, Ping
from mccp.server import (
    MccpConnection,
    MccpFront,
    PageGone,
    RouteHandler,
    ServerLimits,
    ServerStats,
    open_mccp_listeners,
    serve_front,
)
from mccp.session import SessionState

log = logging.getLogger("bridge.app")

FIRST_MESSAGE_SLACK = 5.0  # seconds past `call_timeout` before the backstop gives up on a `call`
CLOSE_TIMEOUT = 2.0  # bound on closing a refused connection

# Heap trimming after call churn (see the module docstring): 200 calls set up at once left ~45 KiB per
# call of free heap in RSS, given back in 2-3 ms (35 MB heap).
HEAP_QUIET = 3.0
HEAP_MAX_DELAY = 30.0

REASONS = {403: "Forbidden", 429: "Too Many Requests", 503: "Service Unavailable"}


class StartupError(Exception):
    """The bridge cannot start (certificate, extensions, page); `str()` is one line for the user."""


# What an `AuthenticatedCall.call` holds as its SDP once the offer was taken (an empty description).
OFFER_TAKEN = "v=0"


@dataclass(slots=True)
class AuthenticatedCall:
    """A `call` that passed authentication, handed to the `CallHandler`.

    `auth.outcome` is `ACCEPTED` (a local extension, password checked here) or `UPSTREAM` (not checked
    here: use `call.clr` / `call.pwd` to answer the upstream's digest challenge, and report a refusal
    with `BridgeContext.upstream_rejected`). The handler takes the page's SDP offer with `take_offer`.
    """

    call: Call
    remote: tuple[str, int]
    auth: AuthResult
    log: logging.LoggerAdapter[logging.Logger] = field(repr=False, compare=False)

    def take_offer(self) -> str:
        """The page's SDP offer, handed over once: `call` keeps its other fields, and `OFFER_TAKEN`
        as its SDP (the offer, ~5 KB from a browser, is not kept for the call's life; memory per
        call, issue 6)."""
        offer = self.call.sdp
        self.call = replace(self.call, sdp=OFFER_TAKEN)
        return offer

    @property
    def caller(self) -> str:
        """The calling extension (`clr`)."""
        return self.call.clr

    @property
    def callee(self) -> str:
        """The called number (`cld`)."""
        return self.call.cld


CallHandler = Callable[[MccpConnection, AuthenticatedCall], Awaitable[object]]
Services = Callable[["BridgeContext"], AbstractAsyncContextManager[CallHandler]]


@dataclass(slots=True)
class BridgeStats:
    """Counters of the front door (for logs and metrics)."""

    connections: int = 0
    calls_accepted: int = 0
    refused_credentials: int = 0  # 403: unknown extension or wrong password
    refused_locked_out: int = 0  # 429
    refused_file_origin: int = 0  # 403: Origin null with allow_file_origin off
    refused_stopping: int = 0  # 503 during a graceful stop
    refused_busy: int = 0  # 503: the login budget (KdfGate) was spent
    logins_cached: int = 0  # logins accepted from the credentials cache (no scrypt)
    no_call: int = 0  # closed or hung up before sending a call
    server: ServerStats = field(default_factory=ServerStats)  # the MCCP front's own counters


class ConnectionLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line with the connection's remote address."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return f"[{self.extra['remote'] if self.extra else '?'}] {msg}", kwargs


def malloc_trim() -> Callable[[], object] | None:
    """glibc's `malloc_trim(0)` (free heap pages back to the OS), or None with another C library."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return partial(trim, 0)


def _hard_exit(status: int) -> NoReturn:
    logging.shutdown()
    os._exit(status)


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def server_limits(config: Config) -> ServerLimits:
    """The MCCP front's caps from the config."""
    return ServerLimits(
        max_frame_bytes=config.max_message_bytes,
        max_messages_per_second=config.message_rate,
        message_burst=float(config.message_burst),
        max_connections_per_address=config.max_connections_per_address,
        max_handshakes=config.max_handshakes,
        call_timeout=config.call_timeout,
        ping_interval=config.ping_interval,
        pong_timeout=config.pong_timeout,
        handshake_timeout=config.handshake_timeout,
    )


def front_settings(config: Config) -> tuple[OriginPolicy, RouteAccess, AddressSet]:
    """The front's origin policy, `/metrics` access and trusted proxies from the config.

    `Origin: null` (file://) passes the front whenever a list is set; `allow_file_origin` is applied
    by `BridgeContext` (the page then gets `hangup` 403 and can say why).
    """
    origins = OriginPolicy.from_list((*config.allowed_origins, "null") if config.allowed_origins else ())
    access = RouteAccess(AddressSet.parse(config.metrics_allow), config.metrics_token or None)
    return origins, access, AddressSet.parse(config.trusted_proxies)


def _warn_open_front(config: Config) -> None:
    if not config.allowed_origins:
        log.warning(
            "allowed_origins is empty: any web site may open the WebSocket from its visitors' browsers "
            "(a login still needs an extension's password); list the origins of your pages to restrict it"
        )
    if config.plain_ws_port is not None and not config.trusted_proxies:
        log.warning("plain_ws_port is set but trusted_proxies is empty: the plain listener refuses everyone")


def load_page() -> bytes:
    """The MCCP web page shipped in the `mccp` package (static/lite.html)."""
    try:
        return importlib.resources.files("mccp").joinpath("static/lite.html").read_bytes()
    except OSError as exc:
        raise StartupError(
            f"the web page mccp/static/lite.html is missing from the installation: {exc}"
        ) from None


def prepare_certificate(
    config: Config, context: ssl.SSLContext, *, now: dt.datetime
) -> tuple[CertInfo, bool]:
    """Make sure the certificate exists (self-signed if missing) and load it into `context`.

    Returns the info and whether it was generated; raises `CertError`.
    """
    _, generated = ensure_certificate(config.cert_dir, host_names(config.public_address), now=now)
    cert_file, key_file = cert_paths(config.cert_dir)
    return load_into(context, cert_file, key_file, now=now), generated


def _warn_other_realm(table: ExtensionTable, realm: str) -> None:
    other = [entry.number for entry in table if entry.realm != realm]
    if other:
        log.warning(
            "extensions %s were hashed for another realm than %r: SIP phones cannot register as them "
            "until they are added again (`mccp-bridge extension add`); MCCP logins are not affected",
            ", ".join(other),
            realm,
        )


class BridgeContext:
    """The running bridge: config, TLS context, authenticator, bound addresses; `reload()` and `stop()`.

    `run_bridge` passes it to `task_status.started()` and to the services factory.
    """

    def __init__(
        self,
        config: Config,
        ssl_context: ssl.SSLContext,
        authenticator: Authenticator,
        *,
        nursery: trio.Nursery,
        force_exit: Callable[[int], object],
        worker: WorkerSlot = SINGLE,
    ) -> None:
        self.config = config
        self.worker = worker
        self.ssl_context = ssl_context
        self.authenticator = authenticator
        self.wss_addresses: list[tuple[str, int]] = []
        self.plain_ws_addresses: list[tuple[str, int]] = []  # with plain_ws_port
        self.stopping = False
        self.stats = BridgeStats()
        self._nursery = nursery
        self._force_exit = force_exit
        self._serve_scope = trio.CancelScope()
        self._scopes: set[trio.CancelScope] = set()  # one per connection being handled
        self._calls = 0
        self._connections = 0
        self._no_connections = trio.Event()
        self._churn = trio.Event()  # set when a connection opens or closes; `trim_heap` waits on it
        self.kdf_gate = KdfGate(
            concurrency=config.auth_kdf_concurrency,
            max_waiting=config.auth_kdf_queue,
            max_wait=config.auth_kdf_wait,
        )
        self._call_handler: CallHandler | None = None  # the services' handler, set before listening
        # Extra GET paths on the HTTPS port (e.g. /metrics), filled by the services before listening.
        self.routes: dict[str, RouteHandler] = {}

    @property
    def active_calls(self) -> int:
        """Calls being handled right now."""
        return self._calls

    # -- control -----------------------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read extensions.toml and the certificate; on an error keep the old ones and log it."""
        path = self.config.extensions_file
        try:
            table = load_extensions(path)
        except ExtensionsError as exc:
            log.error("reload: extensions not reloaded, keeping %d: %s", len(self.authenticator.table), exc)
        else:
            self.authenticator.replace_table(table)
            log.info("reload: %d extensions loaded from %s", len(table), path)
            _warn_other_realm(table, self.config.realm)
        cert_file, key_file = cert_paths(self.config.cert_dir)
        try:
            info = load_into(self.ssl_context, cert_file, key_file, now=dt.datetime.now(dt.UTC))
        except CertError as exc:
            log.error("reload: certificate not reloaded, keeping the old one: %s", exc)
        else:
            log.info("reload: certificate %s loaded, SHA-256 %s", cert_file, info.fingerprint)

    def stop(self) -> None:
        """Start a graceful stop (idempotent): refuse new calls, cancel live ones, then the listener."""
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping: %d active call(s), grace %gs", self._calls, self.config.shutdown_grace)
        self._nursery.start_soon(self._shutdown)

    async def _shutdown(self) -> None:
        for scope in list(self._scopes):
            scope.cancel()
        # Wait for the calls' own clean-up and for their connections to close (WebSocket close
        # handshake), bounded by the grace period; then the listener and the rest are cancelled.
        if self._connections:
            with trio.move_on_after(self.config.shutdown_grace) as grace:
                await self._no_connections.wait()
            if grace.cancelled_caught:
                log.warning(
                    "stopping: %d call(s), %d connection(s) left after the grace period",
                    self._calls,
                    self._connections,
                )
        self._serve_scope.cancel()

    async def watch_signals(self) -> None:
        """SIGHUP: reload. SIGTERM/SIGINT: graceful stop; the second one exits at once."""
        with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    log.info("%s: reloading", name)
                    self.reload()
                elif self.stopping:
                    log.warning("%s again: exiting now", name)
                    self._force_exit(128 + signum)
                else:
                    log.info("%s: graceful stop", name)
                    self.stop()

    def upstream_rejected(self, call: AuthenticatedCall) -> AuthResult:
        """Count an upstream's refusal of the caller's credentials (401/403 after the digest challenge)."""
        result = self.authenticator.record_failure(
            source=call.remote[0], extension=call.caller, now=trio.current_time()
        )
        self._log_lockout(result, call.log)
        return result

    # -- connections -------------------------------------------------------------------------------

    async def handle_connection(self, conn: MccpConnection) -> None:
        """Serve one WSS connection: first `call`, authentication, then the call handler."""
        conn_log = ConnectionLog(log, {"remote": _format_address(*conn.remote[:2])})
        self._note_churn()
        self._connections += 1
        self.stats.connections += 1
        try:
            with trio.CancelScope() as scope:
                self._scopes.add(scope)
                try:
                    accepted = await self._admit(conn, conn_log)
                    if accepted is not None:  # run from here: `_admit`'s frame is not kept for the call
                        self._calls += 1
                        try:
                            assert self._call_handler is not None, "served only after the services start"
                            await self._call_handler(conn, accepted)
                        finally:
                            self._calls -= 1
                finally:
                    self._scopes.discard(scope)
            if scope.cancelled_caught:
                conn_log.info("connection ended: the bridge is stopping")
                if conn.state is not SessionState.ENDED:  # the call handler did not say goodbye
                    await self._refuse(conn, 503, "bridge is shutting down")
        except PageGone:
            conn_log.info("page gone")
        finally:
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await conn.aclose()
            self._connections -= 1
            self._note_churn()
            if not self._connections:
                self._no_connections.set()
                self._no_connections = trio.Event()

    def _note_churn(self) -> None:
        self._churn.set()

    async def trim_heap(self, trim: Callable[[], object] | None = None) -> None:
        """Trim the heap after call churn, for ever (see the module docstring); `trim` defaults
        to `malloc_trim()` (nothing to do without it)."""
        trim = trim or malloc_trim()
        if trim is None:
            return
        while True:
            await self._churn.wait()
            latest = trio.current_time() + HEAP_MAX_DELAY
            while True:  # until HEAP_QUIET seconds without churn, or `latest`
                self._churn = trio.Event()
                with trio.move_on_at(min(trio.current_time() + HEAP_QUIET, latest)) as quiet:
                    await self._churn.wait()
                if quiet.cancelled_caught or trio.current_time() >= latest:
                    break
            # In a worker thread (ctypes lets go of the GIL): the event loop and the media plane
            # do not stall while a large heap is walked (2-3 ms for 35 MB).
            await trio.to_thread.run_sync(trim)

    def _still_stopping(self) -> bool:
        # a method, so that mypy does not carry the earlier `if self.stopping` narrowing across awaits
        return self.stopping

    async def _refuse(self, conn: MccpConnection, code: int, reason: str) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT):
            await conn.send(Hangup(code, reason))

    async def _admit(self, conn: MccpConnection, conn_log: ConnectionLog) -> AuthenticatedCall | None:
        """The page's first `call`, authenticated, or None (refused, or no call)."""
        if self.stopping:
            conn_log.info("refused: the bridge is stopping")
            self.stats.refused_stopping += 1
            await self._refuse(conn, 503, "bridge is shutting down")
            return None
        if conn.origin == "null" and not self.config.allow_file_origin:
            conn_log.info("refused: page opened from file:// and allow_file_origin is off")
            self.stats.refused_file_origin += 1
            await self._refuse(conn, 403, "pages opened from file:// are not allowed")
            return None
        call = await self._first_call(conn, conn_log)
        if call is None:
            self.stats.no_call += 1
            return None
        result = await self._authenticate(conn.remote[0], call)
        if result.delay:
            await trio.sleep(result.delay)
        self._log_lockout(result, conn_log)
        code = result.mccp_code
        if code is not None:
            conn_log.info("call from %s to %s refused: %d %s", call.clr, call.cld, code, result.outcome.value)
            if code == 429:
                self.stats.refused_locked_out += 1
            elif code == 503:
                self.stats.refused_busy += 1
            else:
                self.stats.refused_credentials += 1
            await self._refuse(conn, code, REASONS[code])
            return None
        mode = "upstream" if result.outcome is AuthOutcome.UPSTREAM else "local"
        conn_log.info("call from %s to %s authenticated (%s)", call.clr, call.cld, mode)
        accepted = AuthenticatedCall(call, (conn.remote[0], conn.remote[1]), result, conn_log)
        conn.release_call()  # the call is `accepted`'s now (and its offer the handler's)
        if self._still_stopping():  # stop() came while this call was being authenticated
            self.stats.refused_stopping += 1
            await self._refuse(conn, 503, "bridge is shutting down")
            return None
        self.stats.calls_accepted += 1
        return accepted

    async def _first_call(self, conn: MccpConnection, conn_log: ConnectionLog) -> Call | None:
        backstop = self.config.call_timeout + FIRST_MESSAGE_SLACK
        with trio.move_on_after(backstop):
            while True:
                message = await conn.receive()
                match message:
                    case Call():
                        return message
                    case HangupRequest():
                        conn_log.info("page hung up before calling")
                        return None
                    case Dtmf() | Ping():
                        continue  # the server answers these itself before a call
                    case _:
                        assert_never(message)
        conn_log.info("no call message within %gs", backstop)
        return None

    async def _authenticate(self, source: str, call: Call) -> AuthResult:
        result = await authenticate(
            self.authenticator, self.kdf_gate, source=source, extension=call.clr, password=call.pwd
        )
        if result.cached:
            self.stats.logins_cached += 1
        return result

    def _log_lockout(self, result: AuthResult, conn_log: logging.LoggerAdapter[logging.Logger]) -> None:
        for key in result.lockout_started:
            conn_log.warning(
                "locked out %s for %gs after %d failed logins",
                key,
                self.authenticator.policy.lockout,
                self.authenticator.policy.lockout_failures,
            )

    # -- serving -----------------------------------------------------------------------------------

    async def serve(
        self, services: Services, page: bytes, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Open the services, start the listener, log `start WSS service`, run until stopped."""
        with self._serve_scope:
            async with services(self) as handler, trio.open_nursery() as nursery:
                self._call_handler = handler
                config, shared = self.config, self.worker.count > 1
                origins, access, proxies = front_settings(config)
                front = MccpFront(
                    self.handle_connection,
                    page,
                    server_limits(config),
                    self.routes,
                    self.stats.server,
                    origins,
                    access,
                    proxies,
                )
                listeners = await open_mccp_listeners(config.listen, config.wss_port, reuse_port=shared)
                bound: list[tuple[str, int]] = await nursery.start(
                    partial(serve_front, front, listeners, ssl_context=self.ssl_context)
                )
                self.wss_addresses = [(host, port) for host, port, *_ in bound]
                for host, port in self.wss_addresses:
                    address = _format_address(host, port)
                    log.info(
                        "start WSS service on wss://%s/mccp (page https://%s/lite.html)", address, address
                    )
                if config.plain_ws_port is not None:
                    plain = await open_mccp_listeners(
                        config.plain_ws_listen, config.plain_ws_port, reuse_port=shared
                    )
                    bound = await nursery.start(
                        partial(serve_front, front, plain, ssl_context=None, proxied=True)
                    )
                    self.plain_ws_addresses = [(host, port) for host, port, *_ in bound]
                    for host, port in self.plain_ws_addresses:
                        log.info(
                            "start plain WS service on ws://%s/mccp for a TLS-terminating proxy "
                            "(trusted proxies: %s)",
                            _format_address(host, port),
                            proxies,
                        )
                _warn_open_front(config)
                task_status.started()


async def _report_to_supervisor(context: BridgeContext, fd: int) -> None:
    """Say `ready` on the control socket, then stop gracefully when the supervisor goes (EOF)."""
    control = trio.socket.from_stdlib_socket(socket.socket(fileno=os.dup(fd)))
    with control:
        try:
            await control.send(b"ready\n")
            while await control.recv(4096):
                pass
        except OSError:  # the supervisor's end is gone (BrokenPipe, ConnectionReset)
            pass
    log.warning("the supervisor is gone: stopping")
    context.stop()


def serve_blocking(
    config: Config,
    *,
    on_started: Callable[[BridgeContext], None],
    services: Services,
    worker: WorkerSlot = SINGLE,
) -> None:
    """`trio.run` the bridge (with signal handling) until it stops; `on_started` once it listens.

    Raises `StartupError` / `OSError` (inside an ExceptionGroup, as Trio nurseries do).
    """

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            context: BridgeContext = await nursery.start(
                partial(run_bridge, config, services=services, worker=worker)
            )
            on_started(context)

    trio.run(main)


async def run_bridge(
    config: Config,
    *,
    services: Services,
    handle_signals: bool = True,
    force_exit: Callable[[int], object] = _hard_exit,
    worker: WorkerSlot = SINGLE,
    task_status: trio.TaskStatus[BridgeContext] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the bridge until stopped (SIGTERM/SIGINT, or `BridgeContext.stop()`), then return.

    Raises `StartupError` (certificate, extensions, page) before anything listens; `OSError` if the
    port cannot be bound. `task_status.started(context)` once the listener is up and logged.
    """
    page = load_page()
    ssl_context = new_server_context()
    try:
        info, generated = prepare_certificate(config, ssl_context, now=dt.datetime.now(dt.UTC))
    except CertError as exc:
        raise StartupError(f"certificate error: {exc}") from None
    if generated:
        log.info(
            "created a self-signed certificate %s for %s, SHA-256 %s; to use a real one, put its chain in "
            "server.crt and its key in server.key there, or run `mccp-bridge cert --force` to renew",
            info.cert_file,
            ", ".join(info.names),
            info.fingerprint,
        )
    else:
        log.info(
            "certificate %s loaded, SHA-256 %s, valid until %s",
            info.cert_file,
            info.fingerprint,
            info.not_after,
        )
    try:
        table = load_extensions(config.extensions_file)
    except ExtensionsError as exc:
        raise StartupError(f"config error: {exc}") from None
    authenticator = Authenticator(
        table,
        policy=ThrottlePolicy.from_config(config),
        realm=config.realm,
        upstream=config.upstream is not None,
        cache=CredentialsCache(ttl=config.auth_cache_ttl),
    )
    if config.upstream is not None:
        log.info("upstream %s: passwords are checked by its digest challenge", config.upstream.uri())
    log.info("%d extensions loaded from %s", len(table), config.extensions_file)
    _warn_other_realm(table, config.realm)
    async with trio.open_nursery() as nursery:
        context = BridgeContext(
            config, ssl_context, authenticator, nursery=nursery, force_exit=force_exit, worker=worker
        )
        if handle_signals:
            nursery.start_soon(context.watch_signals)
        nursery.start_soon(context.trim_heap)

        async def serve_until_stopped(task_status: trio.TaskStatus[None]) -> None:
            try:
                await context.serve(services, page, task_status=task_status)
            finally:
                nursery.cancel_scope.cancel()  # the signal watcher

        await nursery.start(serve_until_stopped)
        if worker.control_fd is not None:
            nursery.start_soon(_report_to_supervisor, context, worker.control_fd)
        task_status.started(context)
    log.info("stopped")
