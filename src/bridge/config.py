"""The bridge's settings: one frozen `Config`, loaded from four layers.

Precedence, lowest first: built-in defaults < the TOML file (`--config`, else `MCCP_BRIDGE_CONFIG`, else
`<data_dir>/config.toml`) < the environment (`MCCP_BRIDGE_<KEY>`, e.g. `MCCP_BRIDGE_WSS_PORT=5063`) <
command-line flags (`--wss-port 5063`). Every setting is described once, in `SETTINGS`; the CLI builds its
flags and `--help` text from that table, and `default_config_text()` writes the commented template.

Every bad value raises `ConfigError`, whose `str()` is one line naming the key, what is wrong, the value
seen and where it came from, e.g. ``wss_port: must be an integer 0-65535, got 'abc' (from /x/config.toml)``.
Values from the environment and flags arrive as strings; values from TOML keep their TOML type, and each
parser accepts both.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

ENV_PREFIX = "MCCP_BRIDGE_"
CONFIG_FILE_NAME = "config.toml"


class ConfigError(ValueError):
    """A setting could not be used. `str()` is the one-line message the CLI prints."""

    def __init__(self, key: str | None, problem: str, source: str | None = None) -> None:
        self.key = key
        self.problem = problem
        self.source = source
        text = f"{key}: {problem}" if key else problem
        if source:
            text += f" (from {source})"
        super().__init__(text)


class SipTransport(StrEnum):
    """The SIP transport the bridge listens on and uses by default."""

    UDP = "udp"
    TCP = "tcp"


class DtmfMode(StrEnum):
    """How DTMF from the page reaches the SIP side: RFC 4733 events in the media, or SIP INFO."""

    RFC4733 = "rfc4733"
    INFO = "info"


class LogLevel(StrEnum):
    """The `logging` level names accepted by `log_level`."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Upstream:
    """The SIP proxy/PBX the bridge sends calls to: `sip:HOST[:PORT][;transport=tcp]`."""

    host: str
    port: int = 5060
    transport: SipTransport = SipTransport.UDP

    def uri(self) -> str:
        """The SIP URI this upstream was written as (normalised)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = f"sip:{host}:{self.port}"
        if self.transport is not SipTransport.UDP:
            text += f";transport={self.transport.value}"
        return text


@dataclass(frozen=True, slots=True)
class Config:
    """Every setting of the bridge. Build it with `load_config`; see `SETTINGS` for the meaning of each."""

    data_dir: Path
    listen: str = "0.0.0.0"
    wss_port: int = 5062
    sip_port: int = 5060
    sip_transport: SipTransport = SipTransport.UDP
    rtp_ports: tuple[int, int] = (20000, 29999)
    rtp_browser_port: int = 0  # 0: a browser port per call; else worker I's browser legs all on this + I
    upstream: Upstream | None = None
    public_address: str | None = None
    log_level: LogLevel = LogLevel.INFO
    log_file: Path | None = None
    ring_timeout: float = 60.0
    media_timeout: float = 30.0
    media_coalesce: float = 0.001
    media_c_relay: bool = True
    echo_extension: str = "600"
    realm: str = "mccp-bridge"
    dtmf_mode: DtmfMode = DtmfMode.RFC4733
    workers: int = 0  # 0: "auto", one worker process per CPU core (see `worker_count`)
    allow_file_origin: bool = True
    allowed_origins: tuple[str, ...] = ()  # empty: any origin (logged as a warning at start)
    max_connections_per_address: int = 16
    max_handshakes: int = 256
    handshake_timeout: float = 10.0
    call_timeout: float = 10.0
    max_message_bytes: int = 65536
    message_rate: float = 20.0
    message_burst: int = 40
    ping_interval: float = 15.0
    pong_timeout: float = 10.0
    metrics_allow: tuple[str, ...] = ("127.0.0.0/8", "::1")
    metrics_token: str = field(default="", repr=False)
    plain_ws_port: int | None = None
    plain_ws_listen: str = "127.0.0.1"
    trusted_proxies: tuple[str, ...] = ("127.0.0.0/8", "::1")
    auth_max_failures: int = 5
    auth_window: float = 300.0
    auth_delay: float = 1.0
    auth_lockout_failures: int = 10
    auth_lockout: float = 900.0
    auth_cache_ttl: float = 600.0
    auth_kdf_concurrency: int = 1
    auth_kdf_queue: int = 16
    auth_kdf_wait: float = 1.0
    sip_tcp_max_connections: int = 512
    sip_tcp_max_per_address: int = 64
    sip_tcp_head_timeout: float = 30.0
    shutdown_grace: float = 5.0
    # Where the TOML layer was read from (None: no file); not a setting itself.
    config_file: Path | None = field(default=None, compare=False)

    @property
    def worker_count(self) -> int:
        """How many worker processes `serve` runs: `workers`, or one per CPU core for "auto"."""
        return self.workers or os.cpu_count() or 1

    @property
    def cert_dir(self) -> Path:
        """`<data_dir>/wrtcCert`, holding `server.crt` and `server.key`."""
        return self.data_dir / "wrtcCert"

    @property
    def extensions_file(self) -> Path:
        """`<data_dir>/extensions.toml`, the extension table (hashed passwords only)."""
        return self.data_dir / "extensions.toml"


# ---------------------------------------------------------------------------------------------------------
# Value parsers: each takes a string (environment, flag) or a TOML value, returns the typed value, or
# raises _Bad(problem) which the loader turns into a ConfigError naming the key and the source.


class _Bad(ValueError):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def _got(value: object) -> str:
    return f"got {value!r}"


def _int_in(low: int, high: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        problem = f"must be an integer {low}-{high}, {_got(value)}"
        if isinstance(value, bool):
            raise _Bad(problem)
        if isinstance(value, str):
            if not re.fullmatch(r"[+-]?[0-9]{1,10}", value.strip()):
                raise _Bad(problem)
            value = int(value.strip())
        if not isinstance(value, int) or not low <= value <= high:
            raise _Bad(problem)
        return value

    return parse


def _float_in(low: float, high: float, expected: str) -> Callable[[object], float]:
    """A parser of a number in `low..high` (a TOML number, or a decimal string); `expected` says
    what a bad value should have been."""

    def parse(value: object) -> float:
        problem = f"{expected}, {_got(value)}"
        if isinstance(value, bool):
            raise _Bad(problem)
        if isinstance(value, str):
            if not re.fullmatch(r"[0-9]{1,9}(\.[0-9]{1,9})?", value.strip()):
                raise _Bad(problem)
            value = float(value.strip())
        if not isinstance(value, int | float) or not low <= value <= high:
            raise _Bad(problem)
        return float(value)

    return parse


def _seconds(low: float, high: float) -> Callable[[object], float]:
    return _float_in(low, high, f"must be a number of seconds {low:g}-{high:g}")


def _number(low: float, high: float, unit: str) -> Callable[[object], float]:
    return _float_in(low, high, f"must be a number {low:g}-{high:g} ({unit})")


def _optional_port(value: object) -> int | None:
    if isinstance(value, str) and value.strip().lower() in ("", "off"):
        return None
    try:
        return _int_in(0, 65535)(value)
    except _Bad:
        raise _Bad(f'must be an integer 0-65535, or "" / "off" for none, {_got(value)}') from None


_T = TypeVar("_T")


def _list_of(item: Callable[[str], _T], what: str) -> Callable[[object], tuple[_T, ...]]:
    """A TOML array of strings, or one comma-separated string (environment, flags); empty is allowed."""

    def parse(value: object) -> tuple[_T, ...]:
        if isinstance(value, str):
            entries = [part.strip() for part in value.split(",") if part.strip()]
        elif isinstance(value, list) and all(isinstance(part, str) for part in value):
            entries = [part.strip() for part in value]
        else:
            raise _Bad(f"must be a list of {what} (TOML array, or comma-separated), {_got(value)}")
        out = []
        for entry in entries:
            try:
                out.append(item(entry))
            except ValueError:
                raise _Bad(f"must be a list of {what}, {_got(entry)} is not one") from None
        return tuple(out)

    return parse


_ORIGIN = re.compile(r"null|https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?/?", re.ASCII)


def _origin(text: str) -> str:
    if not _ORIGIN.fullmatch(text):
        raise ValueError(text)
    return text.rstrip("/").lower()


def _network(text: str) -> str:
    net = ipaddress.ip_network(text, strict=False)
    return str(net.network_address) if net.num_addresses == 1 else str(net)


def _token(value: object) -> str:
    text = _text(value).strip()
    # RFC 6750 section 2.1: b64token characters; long enough not to be guessed.
    if text and not re.fullmatch(r"[A-Za-z0-9._~+/-]{16,256}=*", text):
        raise _Bad("must be empty or 16-256 characters of letters, digits and ._~+/- (RFC 6750 b64token)")
    return text


_E = TypeVar("_E", bound=StrEnum)


def _choice(enum: type[_E]) -> Callable[[object], _E]:
    def parse(value: object) -> _E:
        names = ", ".join(repr(member.value) for member in enum)
        if isinstance(value, str):
            try:
                return enum(value.strip().lower())
            except ValueError:
                pass
        raise _Bad(f"must be one of {names}, {_got(value)}")

    return parse


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("true", "yes", "on", "1"):
            return True
        if word in ("false", "no", "off", "0"):
            return False
    raise _Bad(f"must be true or false, {_got(value)}")


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise _Bad(f"must be a string, {_got(value)}")
    return value


def _expanded(text: str, value: object) -> Path:
    try:
        return Path(text).expanduser()
    except RuntimeError:  # "~name" of a user who does not exist
        raise _Bad(f"names an unknown user's home directory, {_got(value)}") from None


def _path(value: object) -> Path:
    text = _text(value)
    if not text.strip():
        raise _Bad(f"must be a directory path, {_got(value)}")
    return _expanded(text, value)


def _optional_file(value: object) -> Path | None:
    text = _text(value)
    if not text.strip():
        return None
    return _expanded(text, value)


def _ip_address(value: object) -> str:
    text = _text(value).strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise _Bad(f"must be an IPv4 or IPv6 address, {_got(value)}") from None


_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*\.?"
)


def _host(value: object) -> str:
    text = _text(value).strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        if _HOSTNAME.fullmatch(text) and not text.replace(".", "").isdigit():
            return text
    raise _Bad(f"must be a hostname or an IP address, {_got(value)}")


def _optional_host(value: object) -> str | None:
    if isinstance(value, str) and not value.strip():
        return None
    return _host(value)


def _port_range(value: object) -> tuple[int, int]:
    problem = f"must be LOW-HIGH with 1024 <= LOW < HIGH <= 65535, {_got(value)}"
    if not isinstance(value, str):
        raise _Bad(problem)
    match = re.fullmatch(r"\s*([0-9]{1,5})\s*-\s*([0-9]{1,5})\s*", value)
    if not match:
        raise _Bad(problem)
    low, high = int(match[1]), int(match[2])
    if not 1024 <= low < high <= 65535:
        raise _Bad(problem)
    return low, high


_UPSTREAM = re.compile(
    r"sip:(\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:;\[\]/@\s]+))(:(?P<port>[0-9]{1,5}))?(?P<params>(;[^;\s]+)*)"
)


def _upstream(value: object) -> Upstream | None:
    text = _text(value).strip()
    if not text:
        return None
    problem = f"must be a SIP URI sip:HOST[:PORT][;transport=udp|tcp], {_got(value)}"
    match = _UPSTREAM.fullmatch(text)
    if not match:
        raise _Bad(problem)
    try:
        host = _host(match["v6"] or match["host"])
    except _Bad:
        raise _Bad(problem) from None
    port = int(match["port"]) if match["port"] else 5060
    if not 1 <= port <= 65535:
        raise _Bad(problem)
    transport = SipTransport.UDP
    for param in filter(None, match["params"].split(";")):
        name, _, val = param.partition("=")
        if name.lower() == "transport" and val.lower() in ("udp", "tcp"):
            transport = SipTransport(val.lower())
        elif name.lower() != "lr":
            raise _Bad(problem)
    return Upstream(host, port, transport)


_EXTENSION = re.compile(r"[0-9A-Za-z*#+._-]{1,32}")


def extension_number(value: object) -> str:
    """Validate an extension number (1-32 of digits, letters, `*#+._-`)."""
    text = _text(value).strip()
    if not _EXTENSION.fullmatch(text):
        raise _Bad(f"must be 1-32 characters of digits, letters or *#+._-, {_got(value)}")
    return text


def _realm(value: object) -> str:
    text = _text(value)
    if not re.fullmatch(
        r"[\x21\x23-\x5b\x5d-\x7e]([\x20\x21\x23-\x5b\x5d-\x7e]{0,62}[\x21\x23-\x5b\x5d-\x7e])?", text
    ):
        raise _Bad(f"must be 1-64 printable ASCII characters without quotes or backslashes, {_got(value)}")
    return text


def _workers(value: object) -> int:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return 0
    try:
        return _int_in(1, 64)(value)
    except _Bad:
        raise _Bad(f'must be "auto" (one per CPU core) or an integer 1-64, {_got(value)}') from None


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: its key (TOML key, `--key-with-dashes` flag, `MCCP_BRIDGE_KEY` variable) and help."""

    key: str
    parse: Callable[[object], object]
    help: str
    metavar: str

    @property
    def flag(self) -> str:
        """The command-line flag of this setting."""
        return "--" + self.key.replace("_", "-")

    @property
    def env(self) -> str:
        """The environment variable of this setting."""
        return ENV_PREFIX + self.key.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("data_dir", _path, "data directory: config.toml, extensions.toml, wrtcCert/", "DIR"),
    Setting("listen", _ip_address, "address the WSS and SIP listeners bind", "ADDR"),
    Setting(
        "wss_port", _int_in(0, 65535), "TCP port of the HTTPS page and WSS (MCCP); 0 picks a free one", "PORT"
    ),
    Setting("sip_port", _int_in(0, 65535), "SIP port (UDP and TCP); 0 picks a free one", "PORT"),
    Setting("sip_transport", _choice(SipTransport), "default SIP transport: udp or tcp", "udp|tcp"),
    Setting("rtp_ports", _port_range, "UDP port range for media", "LOW-HIGH"),
    Setting(
        "rtp_browser_port",
        _int_in(0, 65535),
        "single-port mode: worker I serves the browser side of all its calls on UDP port "
        "rtp_browser_port+I (outside rtp_ports; SIP keeps per-call ports); 0: a port per call "
        "(docs/media-ports.md)",
        "PORT",
    ),
    Setting(
        "upstream", _upstream, "SIP proxy/PBX for outgoing calls (empty: none, local registrar)", "SIP-URI"
    ),
    Setting(
        "public_address", _optional_host, "address announced in SDP/SIP and put in the certificate", "HOST"
    ),
    Setting("log_level", _choice(LogLevel), "debug, info, warning or error", "LEVEL"),
    Setting(
        "log_file",
        _optional_file,
        "append the log to this file (empty: stderr); reopened after logrotate",
        "FILE",
    ),
    Setting("ring_timeout", _seconds(1, 3600), "seconds a call may ring before it is given up", "SECONDS"),
    Setting("media_timeout", _seconds(1, 3600), "seconds without media before a call is ended", "SECONDS"),
    Setting(
        "media_coalesce",
        _seconds(0, 0.02),
        "at high packet rates, serve the media sockets at most once per this many seconds "
        "(a datagram waits at most that long; 0: wake up for every datagram)",
        "SECONDS",
    ),
    Setting(
        "media_c_relay",
        _boolean,
        "relay each call's steady media stream in C (rtp._steady) when it was built; false: all in Python",
        "BOOL",
    ),
    Setting("echo_extension", extension_number, "number of the built-in echo extension", "NUMBER"),
    Setting("realm", _realm, "SIP digest realm of the local extensions", "REALM"),
    Setting("dtmf_mode", _choice(DtmfMode), "DTMF towards SIP: rfc4733 or info", "MODE"),
    Setting(
        "workers",
        _workers,
        "worker processes sharing the WSS port (SO_REUSEPORT); worker I uses SIP port sip_port+I and "
        "slice I of rtp_ports; auto: one per CPU core",
        "N|auto",
    ),
    Setting("allow_file_origin", _boolean, "accept pages opened from file:// (Origin: null)", "BOOL"),
    Setting(
        "allowed_origins",
        _list_of(_origin, "origins like https://example.com:8443"),
        "web origins whose pages may open the WebSocket, besides the bridge's own page (and null, see "
        "allow_file_origin); empty: any web site (a warning at start)",
        "ORIGIN,...",
    ),
    Setting(
        "max_connections_per_address",
        _int_in(1, 100000),
        "open WSS/HTTPS connections from one IP address; more are closed at accept (raise it for "
        "many callers behind one NAT)",
        "N",
    ),
    Setting(
        "max_handshakes",
        _int_in(1, 100000),
        "connections in their TLS handshake or request head at once (all addresses); more are closed",
        "N",
    ),
    Setting(
        "handshake_timeout",
        _seconds(1, 300),
        "seconds for the TLS handshake, request head and WebSocket upgrade (slow clients are cut)",
        "SECONDS",
    ),
    Setting(
        "call_timeout",
        _seconds(1, 600),
        "seconds a page has to send its call after the WebSocket opens (then hangup 408)",
        "SECONDS",
    ),
    Setting(
        "max_message_bytes",
        _int_in(1024, 65536),
        "largest MCCP message (characters): bigger gets error 413, twice that closes (1009)",
        "N",
    ),
    Setting(
        "message_rate",
        _number(0.1, 1000, "messages per second"),
        "sustained MCCP messages per second per connection; excess dropped, one error 429 a second",
        "N",
    ),
    Setting("message_burst", _int_in(1, 10000), "MCCP messages a connection may send at once", "N"),
    Setting("ping_interval", _seconds(1, 3600), "seconds between WebSocket pings to the page", "SECONDS"),
    Setting(
        "pong_timeout", _seconds(1, 3600), "seconds to wait for the pong before the page is gone", "SECONDS"
    ),
    Setting(
        "metrics_allow",
        _list_of(_network, "IP addresses or networks"),
        "addresses/CIDRs that may read /metrics (others get 403 unless they send metrics_token); empty: none",
        "CIDR,...",
    ),
    Setting(
        "metrics_token",
        _token,
        "bearer token that opens /metrics from any address (Authorization: Bearer TOKEN); empty: none. "
        "A secret: prefer config.toml (0600) to a flag",
        "TOKEN",
    ),
    Setting(
        "plain_ws_port",
        _optional_port,
        "TCP port of a plain HTTP/WS listener for a TLS-terminating proxy in front (empty: off); it "
        "serves only trusted_proxies",
        "PORT",
    ),
    Setting("plain_ws_listen", _ip_address, "address the plain HTTP/WS listener binds", "ADDR"),
    Setting(
        "trusted_proxies",
        _list_of(_network, "IP addresses or networks"),
        "proxies allowed on plain_ws_port; their X-Forwarded-For gives the page's address (for the "
        "per-address cap, the login throttle, /metrics and the logs)",
        "CIDR,...",
    ),
    Setting(
        "auth_max_failures",
        _int_in(1, 1000),
        "failed logins (per source and per extension) before delays",
        "N",
    ),
    Setting("auth_window", _seconds(1, 86400), "seconds a failed login is remembered", "SECONDS"),
    Setting(
        "auth_delay", _seconds(0, 60), "first delay after auth_max_failures; doubles per failure", "SECONDS"
    ),
    Setting("auth_lockout_failures", _int_in(1, 1000), "failed logins in the window that lock out", "N"),
    Setting("auth_lockout", _seconds(1, 86400), "seconds a lock-out lasts", "SECONDS"),
    Setting(
        "auth_cache_ttl",
        _seconds(0, 86400),
        "seconds a verified password is accepted again without scrypt (0: no cache)",
        "SECONDS",
    ),
    Setting("auth_kdf_concurrency", _int_in(1, 64), "scrypt password checks at once per worker", "N"),
    Setting("auth_kdf_queue", _int_in(0, 10000), "logins that may wait for a password check (then 503)", "N"),
    Setting("auth_kdf_wait", _seconds(0, 60), "seconds a login may wait for a password check", "SECONDS"),
    Setting("sip_tcp_max_connections", _int_in(1, 100000), "SIP TCP/TLS connections at once per worker", "N"),
    Setting("sip_tcp_max_per_address", _int_in(1, 100000), "SIP TCP/TLS connections per source address", "N"),
    Setting(
        "sip_tcp_head_timeout",
        _seconds(1, 3600),
        "seconds a SIP TCP connection has to complete a message once it started one (and its first)",
        "SECONDS",
    ),
    Setting("shutdown_grace", _seconds(0, 300), "seconds calls get to hang up cleanly on SIGTERM", "SECONDS"),
)
SETTINGS_BY_KEY: Mapping[str, Setting] = {s.key: s for s in SETTINGS}
assert set(SETTINGS_BY_KEY) == {f.name for f in fields(Config)} - {"config_file"}


def default_data_dir(home: Path) -> Path:
    """`$HOME/.mccp-bridge`."""
    return home / ".mccp-bridge"


def default_value_text(key: str) -> str:
    """The default of a setting as written in TOML (for --help and the config template)."""
    if key == "data_dir":
        return '"$HOME/.mccp-bridge"'
    if key == "workers":
        return '"auto"'
    value = {f.name: f.default for f in fields(Config)}.get(key)
    match value:
        case None:
            return '""'
        case bool():
            return "true" if value else "false"
        case StrEnum():
            return f'"{value.value}"'
        case str():
            return f'"{value}"'
        case (int(low), int(high)):
            return f'"{low}-{high}"'
        case tuple():
            return "[" + ", ".join(f'"{item}"' for item in value) + "]"
        case int() | float():
            return f"{value:g}" if isinstance(value, float) else str(value)
        case _:
            return repr(value)


def _check_cross(values: Mapping[str, object], sources: Mapping[str, str]) -> None:
    _check_browser_port(values, sources)
    plain, wss = values["plain_ws_port"], values["wss_port"]
    if plain is not None and plain != 0 and plain == wss and values["plain_ws_listen"] == values["listen"]:
        raise ConfigError(
            "plain_ws_port", f"must differ from wss_port ({wss}), got {plain!r}", sources.get("plain_ws_port")
        )
    failures = values["auth_max_failures"]
    lockout = values["auth_lockout_failures"]
    assert isinstance(failures, int)
    assert isinstance(lockout, int)
    if lockout < failures:
        raise ConfigError(
            "auth_lockout_failures",
            f"must be at least auth_max_failures ({failures}), got {lockout!r}",
            sources.get("auth_lockout_failures"),
        )


def _check_browser_port(values: Mapping[str, object], sources: Mapping[str, str]) -> None:
    """`rtp_browser_port` .. + N - 1 (N workers) are real ports, none of them in `rtp_ports`."""
    port, ports, workers = values["rtp_browser_port"], values["rtp_ports"], values["workers"]
    assert isinstance(port, int)
    assert isinstance(ports, tuple)
    assert isinstance(workers, int)
    low, high = ports
    if port == 0:
        return
    count = workers or os.cpu_count() or 1  # as Config.worker_count
    last = port + count - 1
    span = f"{port}" if count == 1 else f"{port}-{last} ({count} workers)"
    if not 1024 <= port <= 65535 - count + 1:
        problem = f"must be 0 or 1024-{65535 - count + 1} (one port per worker: {count}), got {port!r}"
        raise ConfigError("rtp_browser_port", problem, sources.get("rtp_browser_port"))
    if port <= high and last >= low:
        problem = f"{span} must not fall inside rtp_ports {low}-{high}"
        raise ConfigError("rtp_browser_port", problem, sources.get("rtp_browser_port"))


def _read_toml(path: Path) -> dict[str, object]:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(None, f"cannot read config file: {exc.strerror or exc}", str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError(None, "config file is not UTF-8 text", str(path)) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(None, f"invalid TOML: {exc}", str(path)) from None


def load_config(
    *,
    flags: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    config_path: Path | None = None,
    home: Path,
) -> Config:
    """Build the `Config` from defaults < TOML < environment < flags.

    `flags` maps setting keys to the strings given on the command line; `env` is the environment (only
    `MCCP_BRIDGE_*` names are looked at; an unknown one is an error); `config_path` is `--config` if given.
    The TOML file is `config_path`, else `$MCCP_BRIDGE_CONFIG`, else `<data_dir>/config.toml`; an explicit
    file must exist, the default one may be missing (first start). Raises `ConfigError`.
    """
    flags = dict(flags or {})
    env_layer: dict[str, str] = {}
    explicit: tuple[Path, str] | None = (config_path, "--config") if config_path is not None else None
    for name, raw in (env or {}).items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key == "config":
            if explicit is None and raw.strip():
                explicit = (Path(raw).expanduser(), name)
            continue
        if key not in SETTINGS_BY_KEY:
            raise ConfigError(name, "unknown setting (see mccp-bridge --help)", "environment")
        env_layer[key] = raw
    for key in flags:
        if key not in SETTINGS_BY_KEY:
            raise ConfigError(key, "unknown setting", "command line")

    values: dict[str, object] = {}
    sources: dict[str, str] = {}

    def take(key: str, raw: object, source: str) -> None:
        try:
            values[key] = SETTINGS_BY_KEY[key].parse(raw)
        except _Bad as bad:
            raise ConfigError(key, bad.problem, source) from None
        sources[key] = source

    # data_dir decides where the default config file is, so resolve it from the upper layers first.
    data_dir = default_data_dir(home)
    if "data_dir" in flags:
        take("data_dir", flags["data_dir"], SETTINGS_BY_KEY["data_dir"].flag)
    elif "data_dir" in env_layer:
        take("data_dir", env_layer["data_dir"], SETTINGS_BY_KEY["data_dir"].env)
    if isinstance(chosen := values.get("data_dir"), Path):
        data_dir = chosen

    if explicit is not None:
        path, how = explicit
        if not path.is_file():
            raise ConfigError(None, "config file not found", f"{how} {path}")
    else:
        path = data_dir / CONFIG_FILE_NAME
    file_used: Path | None = None
    if path.is_file():
        file_used = path
        for key, toml_value in _read_toml(path).items():
            if key not in SETTINGS_BY_KEY:
                raise ConfigError(key, "unknown setting (see mccp-bridge --help)", str(path))
            if key == "data_dir" and "data_dir" in values:
                continue  # the upper layer already chose it
            take(key, toml_value, str(path))
    for key, raw in env_layer.items():
        take(key, raw, SETTINGS_BY_KEY[key].env)
    for key, raw in flags.items():
        take(key, raw, SETTINGS_BY_KEY[key].flag)

    values.setdefault("data_dir", data_dir)
    defaults = {f.name: f.default for f in fields(Config) if f.name not in ("data_dir", "config_file")}
    merged = {**defaults, **values}
    _check_cross(merged, sources)
    return Config(config_file=file_used, **merged)  # type: ignore[arg-type]


def default_config_text() -> str:
    """The commented config.toml written on first start: every setting, commented out, at its default."""
    lines = [
        "# mccp-bridge configuration. Every setting is shown at its default, commented out.",
        "# Precedence: these values < environment MCCP_BRIDGE_<KEY> < command-line flags --<key>.",
        "# Extensions (numbers and hashed passwords) live in extensions.toml beside this file;",
        "# manage them with `mccp-bridge extension add|list|remove`.",
        "",
    ]
    for setting in SETTINGS:
        if setting.key == "data_dir":
            continue
        lines.append(f"# {setting.help}")
        lines.append(f"# {setting.key} = {default_value_text(setting.key)}")
        lines.append("")
    return "\n".join(lines)
