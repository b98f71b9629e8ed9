"""Where a browser call goes: the called number (`cld`) to a SIP target, or a SIP-style refusal.

* Upstream mode: every call goes to `sip:CLD@UPSTREAM` through the upstream as the outbound proxy, and
  the caller's extension and password answer its digest challenge (so the upstream decides who may call).
* Otherwise: the echo extension's number goes to the echo extension; a number with live registrations
  goes to its first contact (highest q, most recent), reached through the address its REGISTER came
  from (phones behind NAT); a known extension with none is 480, an unknown number 404;
  `user@host[:port]` calls an IP phone directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.config import Upstream
from sip.registrar import Registrar


@dataclass(frozen=True, slots=True)
class Route:
    """The INVITE's Request-URI, its first hop (host, port, transport) and digest credentials."""

    target: str
    outbound_proxy: tuple[str, int, str] | None = None
    credentials: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class NoRoute:
    """The called number cannot be reached; `code` follows SIP (404 unknown, 480 not registered)."""

    code: int
    reason: str


def route_call(
    callee: str,
    *,
    caller: str,
    password: str,
    upstream: Upstream | None,
    echo: tuple[str, str] | None,
    registrar: Registrar | None,
    now: float,
) -> Route | NoRoute:
    """Route a call from `caller` to `callee`; `echo` is (number, SIP URI) of the echo extension."""
    if upstream is not None:
        host = f"[{upstream.host}]" if ":" in upstream.host else upstream.host
        target = f"sip:{callee}" if "@" in callee else f"sip:{callee}@{host}"
        return Route(
            target,
            outbound_proxy=(upstream.host, upstream.port, upstream.transport.value.lower()),
            credentials=(caller, password),
        )
    if echo is not None and callee == echo[0]:
        return Route(echo[1])
    if "@" in callee:
        return Route(callee if callee.startswith(("sip:", "sips:")) else f"sip:{callee}")
    if registrar is None:
        return NoRoute(404, "Not Found")
    code, bindings = registrar.resolve(callee, now)
    if code == 404 or (not bindings and code != 480):
        return NoRoute(404, "Not Found")
    if not bindings:
        return NoRoute(480, "Temporarily Unavailable")
    binding = bindings[0]
    proxy = None
    if binding.source is not None:
        source_host, source_port, source_transport = binding.source
        proxy = (source_host, source_port, source_transport.lower())
    return Route(binding.contact, outbound_proxy=proxy)
