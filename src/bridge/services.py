"""The process-wide services every call uses, started once in the bridge's nursery.

`bridge_services(context)` is the `Services` factory that `bridge.app.run_bridge` enters before the
WSS listener starts. In one nursery it starts:

* the SIP transport (UDP+TCP on `listen:sip_port`) and the `SipUA` on it; without an upstream, the UA
  is also the embedded registrar (digest against the extensions' HA1, realm `config.realm`), whose
  bindings are loaded from `<data_dir>/bindings.json` and saved there on change (`bridge.bindings`);
* as worker I of N (`bridge.workers`): SIP on `sip_port + I`, media on slice I of `rtp_ports`; only
  worker 0 answers REGISTER, the others route calls from `bindings.json` (re-read when it changed);
* the echo extension (`config.echo_extension`, on its own loopback SIP port), when there is no upstream;
* the media port allocator over `config.rtp_ports`, and the DTLS certificate (one per process);
* the media plane (`rtp.plane`): one epoll and one task that read every call's media sockets;
* with `rtp_browser_port` set, the worker's shared browser port (`rtp.browser_port`, UDP
  `rtp_browser_port + I`): the browser legs of all its calls on it (docs/media-ports.md);
* the process's Prometheus metrics (`bridge.metrics`), served at `/metrics` on the HTTPS port.

It yields the call handler (`bridge.call.run_call` bound to these services); calls are routed by
`bridge.routing`. Leaving it cancels the services.
"""

from __future__ import annotations

import logging
import platform
import socket
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio
from bridge.bindings import BINDINGS_FILE_NAME, BindingsFile, run_bindings_writer
from bridge.call import run_call
from bridge.config import Config
from bridge.echo import EchoExtension, run_echo_extension
from bridge.metrics import BridgeMetrics
from bridge.openssl_thread import OpenSslThread
from bridge.routing import NoRoute, Route, route_call
from bridge.workers import split_port_range, worker_sip_port
from rtp.browser_port import SharedBrowserPort, kernel_hashes_connected_udp
from rtp.dtls import DtlsCertificate, warm_up
from rtp.media import HANDSHAKE_TIMEOUT, STEADY_IN_C
from rtp.plane import MediaPlane
from rtp.ports import PortAllocator
from sip.registrar import Registrar
from sip.transport import SipTransport
from sip.ua import T1, SipUA

if TYPE_CHECKING:
    from bridge.app import AuthenticatedCall, BridgeContext, CallHandler
    from mccp.server import MccpConnection

log = logging.getLogger("bridge.services")


def _is_loopback(host: str) -> bool:
    return host.startswith("127.") or host == "::1" or host == "localhost"


# RFC 5737 TEST-NET-1: asking the kernel for the route to it picks the host's outgoing address.
# `connect()` on a UDP socket sends nothing; it only consults the routing table.
_ROUTE_PROBE = ("192.0.2.1", 9)


def local_addresses() -> list[str]:
    """The host's own non-loopback IPv4 addresses (best effort, no traffic sent): the source address
    of its default route first, then what its host name resolves to (Debian maps the host name to
    127.0.1.1, so the route is the reliable one)."""
    found: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(_ROUTE_PROBE)
            found.append(str(probe.getsockname()[0]))
        except OSError:  # no route (e.g. a loopback-only network namespace)
            pass
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        infos = []
    for info in infos:
        address = str(info[4][0])
        if address not in found:
            found.append(address)
    return [address for address in found if not _is_loopback(address) and address != "0.0.0.0"]


def media_addresses(config: Config) -> tuple[list[str], str]:
    """(addresses advertised to the browser as ICE candidates, address for SIP's SDP c= line).

    The configured public address wins for both; a bridge bound to one address advertises it; a
    bridge bound to the wildcard advertises the host's addresses (loopback when it has no other).
    """
    if config.public_address:
        return [config.public_address], config.public_address
    if config.listen not in ("0.0.0.0", "::"):
        return [config.listen], config.listen
    hosts = local_addresses()
    if not hosts:
        log.warning(
            "no address but loopback found: only browsers on this host can reach the media; "
            "set --public-address (or --listen) to the address browsers and phones should use"
        )
        hosts = ["127.0.0.1"]
    return hosts, hosts[0]


@dataclass(slots=True)
class CallServices:
    """What a call needs from the process: config, SIP UA, ports, certificate, media plane, routing."""

    context: BridgeContext
    ua: SipUA
    registrar: Registrar | None
    ports: PortAllocator
    certificate: DtlsCertificate
    plane: MediaPlane
    echo: EchoExtension | None
    advertise_hosts: list[str]
    sip_media_host: str
    metrics: BridgeMetrics
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    # Set in workers that do not answer REGISTER: the file `registrar` is refreshed from.
    shared_bindings: BindingsFile | None = None
    # Set in the single-port mode (`rtp_browser_port`): the browser legs of all calls on it.
    browser_port: SharedBrowserPort | None = None

    async def refresh_bindings(self) -> None:
        """In a worker that does not answer REGISTER: re-read bindings.json if it changed."""
        store, registrar = self.shared_bindings, self.registrar
        if store is None or registrar is None:
            return
        if await trio.to_thread.run_sync(store.changed):
            store.refresh(registrar, now=trio.current_time(), wall_now=time.time())

    @property
    def config(self) -> Config:
        return self.context.config

    def route(self, callee: str, *, caller: str, password: str) -> Route | NoRoute:
        """Where a call from `caller` to `callee` goes (`bridge.routing`)."""
        return route_call(
            callee,
            caller=caller,
            password=password,
            upstream=self.config.upstream,
            echo=(self.echo.number, self.echo.uri) if self.echo is not None else None,
            registrar=self.registrar,
            now=trio.current_time(),
        )


def _open_browser_port(
    config: Config, plane: MediaPlane, host: str, index: int, count: int
) -> SharedBrowserPort | None:
    """The single-port mode: worker `index`'s shared browser port, `rtp_browser_port + index`
    (None when the setting is 0: a port per call). OSError, naming the setting, if it is taken."""
    if not config.rtp_browser_port:
        return None
    port = config.rtp_browser_port + index
    try:
        shared = SharedBrowserPort(plane, host, port)
    except OSError as exc:
        raise OSError(exc.errno, f"rtp_browser_port: cannot bind UDP {host}:{port}: {exc.strerror}") from exc
    span = f"{config.rtp_browser_port}-{config.rtp_browser_port + count - 1}" if count > 1 else str(port)
    log.info(
        "browser media on UDP %s:%d (single port%s); SIP media on per-call ports",
        host, port, f", worker {index} of {span}" if count > 1 else "",
    )  # fmt: skip
    release = platform.release()
    if index == 0 and shared.twins and not kernel_hashes_connected_udp(release):
        log.warning(
            "kernel %s is older than Linux 6.13 and the media relay is not in C: with rtp_browser_port "
            "every datagram's socket lookup walks all the calls' sockets on the shared port "
            "(docs/media-ports.md)",
            release,
        )
    return shared


@asynccontextmanager
async def bridge_services(
    context: BridgeContext,
    *,
    sip_t1: float = T1,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
) -> AsyncIterator[CallHandler]:
    """Start the SIP UA (+ registrar), the echo extension, ports and certificate; yield the handler.

    `sip_t1` (RFC 3261 T1, Timer B = 64*T1) and `handshake_timeout` (ICE+DTLS) are the protocol
    constants tests shorten with `functools.partial`; the config does not expose them.
    """
    config = context.config
    worker = context.worker
    advertise, sip_media_host = media_addresses(config)
    signalling_host = config.public_address or sip_media_host
    sip_port = worker_sip_port(config.sip_port, worker.index)
    low, high = split_port_range(*config.rtp_ports, worker.count)[worker.index]
    async with trio.open_nursery() as nursery:
        transport = SipTransport(
            config.listen,
            sip_port,
            public_host=signalling_host,
            max_tcp_connections=config.sip_tcp_max_connections,
            max_tcp_per_address=config.sip_tcp_max_per_address,
            tcp_head_timeout=config.sip_tcp_head_timeout,
        )
        await nursery.start(transport.run)
        registrar: Registrar | None = None
        bindings = BindingsFile(config.data_dir / BINDINGS_FILE_NAME)
        shared_bindings: BindingsFile | None = None
        if config.upstream is None:
            registrar = Registrar(known=lambda user: user in context.authenticator.table)
            if worker.answers_register:
                loaded = bindings.load(registrar, now=trio.current_time(), wall_now=time.time())
                log.info("registrar: %d live binding(s) loaded from %s", loaded, bindings.path)
                await nursery.start(run_bindings_writer, registrar, bindings)
            else:
                shared_bindings = bindings

        def ha1(user: str, realm: str, algorithm: str) -> str | None:
            extension = context.authenticator.table.get(user)
            if extension is None or realm != extension.realm:
                return None
            match algorithm.upper():
                case "MD5":
                    return extension.ha1_md5
                case "SHA-256":
                    return extension.ha1_sha256
                case _:
                    return None

        ua_registrar = registrar if worker.answers_register else None
        ua = SipUA(
            transport,
            public_host=signalling_host,
            registrar=ua_registrar,
            ha1_lookup=ha1 if ua_registrar is not None else None,
            realm=config.realm,
            t1=sip_t1,
            # One brute-force throttle for both doors: the page's password and a phone's REGISTER
            # digest are the same secret, so their failures count together (per source, per extension).
            auth_guard=context.authenticator,
        )
        await nursery.start(ua.run)
        log.info(
            "SIP on %s:%d (UDP+TCP), contact %s; %s",
            config.listen,
            transport.port,
            signalling_host,
            f"upstream {config.upstream.uri()}"
            if config.upstream
            else "embedded registrar"
            if ua_registrar is not None
            else f"routing to the phones registered with worker 0 ({bindings.path})",
        )
        echo: EchoExtension | None = None
        if config.upstream is None and config.echo_extension:
            echo = await nursery.start(run_echo_extension, config.echo_extension)
        plane = MediaPlane(coalesce=config.media_coalesce, steady=config.media_c_relay)
        browser_port: SharedBrowserPort | None = None
        metrics = BridgeMetrics(
            active_calls=lambda: context.active_calls,
            stats=lambda: context.stats,
            sip_stats=lambda: transport.stats,
            worker=(worker.index, worker.count),
            plane=lambda: plane.counters,
            # Single-port mode: the shared port opened below (None until then, and without the mode).
            browser_port=lambda: browser_port.counters if browser_port is not None else None,
        )
        context.routes["/metrics"] = metrics.scrape
        media_bind = config.listen
        ports = PortAllocator(low, high, media_bind)
        await nursery.start(plane.run)
        share = (
            f" (slice {worker.index + 1} of {worker.count} of {config.rtp_ports[0]}-{config.rtp_ports[1]})"
        )
        log.info(
            "media ports %d-%d%s on %s, advertised to browsers as %s; steady stream relayed in %s",
            low,
            high,
            share if worker.count > 1 else "",
            media_bind,
            advertise,
            "C (rtp._steady, the media plane's passes too)"
            if plane.passes_in_c
            else "Python (media_c_relay is off)"
            if STEADY_IN_C
            else "Python (rtp._steady was not built: no C compiler at install)",
        )
        # The DTLS handshakes' OpenSSL work, in a thread whose malloc arena it keeps to itself.
        openssl = OpenSslThread()
        try:
            browser_port = _open_browser_port(config, plane, media_bind, worker.index, worker.count)
            certificate = DtlsCertificate.generate(run_openssl=openssl)
            # The first handshake's one-time cost (OpenSSL code paged in, ~1 MiB) now, not in a call.
            if not warm_up(certificate):
                log.warning("DTLS warm-up handshake did not connect")
            services = CallServices(
                context=context,
                ua=ua,
                registrar=registrar,
                ports=ports,
                certificate=certificate,
                plane=plane,
                echo=echo,
                advertise_hosts=advertise,
                sip_media_host=sip_media_host,
                metrics=metrics,
                handshake_timeout=handshake_timeout,
                shared_bindings=shared_bindings,
                browser_port=browser_port,
            )

            def handler(conn: MccpConnection, call: AuthenticatedCall) -> Awaitable[object]:
                # run_call's own coroutine: no frame of ours is kept for the call's life.
                return run_call(conn, call, services)

            yield handler
        finally:
            openssl.close()
            if browser_port is not None:
                browser_port.close()
        nursery.cancel_scope.cancel()
