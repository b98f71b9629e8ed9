"""Locating a SIP server by name (RFC 3263 §4, without NAPTR) on Trio, with dnspython.

`SipResolver.locate(uri, default_transport)` returns the addresses to try, in order:

* an IP literal host is used as is (port from the URI, else 5060/5061);
* a host with an explicit port is resolved with A/AAAA only (§4.2);
* otherwise SRV records are looked up (§4.2: `_sip._udp` / `_sip._tcp`, only the URI's
  `transport` if it has one), ordered by priority then weight (RFC 2782; the weighted random
  choice is replaced by a stable order, highest weight first), and each target is resolved to
  A/AAAA records; without SRV records the host itself is resolved, port 5060 (§4.2).

Every failure (NXDOMAIN, no answer, timeout, no nameserver reachable) ends as `ResolveError`, a
`TransportError` whose text says what failed ("DNS lookup of pbx.example.com failed: no such
domain"), which the UA turns into 503 (RFC 3261 §8.1.3.1: a transport failure is treated as a
503). A failed query is logged at debug level only: the error is logged once, by the caller that
handles it (the call that could not be placed, with its Call-ID). Nothing is cached: the
next call looks the name up again, so a DNS outage ends with the outage. The whole lookup is
bounded by twice the per-query `timeout`. `nameservers`/`port` let tests and odd setups point the
resolver at a given server; by default the system configuration is used (with none, or an
unreadable one, lookups fail as above and the bridge still starts).
"""

from __future__ import annotations

import ipaddress
import logging

import dns.asyncresolver
import dns.exception
import dns.rdata
import dns.rdatatype
import dns.resolver
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA
from dns.rdtypes.IN.SRV import SRV

import trio
from sip.transport import Address, Transport, TransportError
from sip.uri import SipUri

__all__ = ["ResolveError", "SipResolver", "is_ip_literal"]

log = logging.getLogger("sip.resolver")

_SRV_PREFIX = {Transport.UDP: "_sip._udp.", Transport.TCP: "_sip._tcp.", Transport.TLS: "_sips._tcp."}


class ResolveError(TransportError):
    """A SIP server's name could not be resolved; `str()` is one line naming the host and why."""

    def __init__(self, host: str, why: str) -> None:
        super().__init__(f"DNS lookup of {host} failed: {why}")
        self.host = host
        self.why = why


def _why(exc: Exception) -> str:
    """A short reason for one failed query."""
    match exc:
        case dns.resolver.NXDOMAIN():
            return "no such domain"
        case dns.exception.Timeout():
            return "timed out"
        case dns.resolver.NoNameservers():
            return "no name server answered"
        case dns.resolver.NoResolverConfiguration():
            return "no name server configured"
        case OSError():
            return f"name server unreachable ({exc.strerror or exc})"
        case _:
            return str(exc) or type(exc).__name__


def is_ip_literal(host: str) -> bool:
    """True for an IPv4 address or an IPv6 address (bracketed or not)."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class SipResolver:
    """RFC 3263 server location (SRV, then A/AAAA) through dnspython's Trio backend."""

    def __init__(self, *, nameservers: list[str] | None = None, port: int = 53, timeout: float = 3.0) -> None:
        configure = nameservers is None
        try:
            self._resolver = dns.asyncresolver.Resolver(configure=configure)
        except dns.resolver.NoResolverConfiguration:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
        if nameservers is not None:
            self._resolver.nameservers = nameservers
            self._resolver.port = port
        self._resolver.lifetime = timeout
        self.timeout = timeout

    async def locate(self, uri: SipUri, default: Transport = Transport.UDP) -> list[Address]:
        """The addresses to send a request for `uri` to, best first; TransportError if none."""
        host = uri.params.get("maddr") or uri.host_no_brackets
        forced = uri.transport
        try:
            transport = Transport.from_token(forced) if forced else default
        except ValueError as exc:
            raise TransportError(str(exc)) from None
        if uri.scheme == "sips":
            transport = Transport.TLS  # RFC 3261 §26.2
        default_port = 5061 if transport is Transport.TLS else 5060
        if is_ip_literal(host):
            return [Address(host.strip("[]"), uri.port or default_port, transport)]
        errors: list[str] = []  # why the address queries failed, in order
        found: list[Address] = []
        with trio.move_on_after(self.timeout * 2) as scope:
            if uri.port is not None:
                found = [Address(ip, uri.port, transport) for ip in await self._addresses(host, errors)]
            else:
                candidates = (
                    [transport] if forced else [transport, *(t for t in Transport if t is not transport)]
                )
                for t in candidates:
                    found = await self._srv(host, t, errors)
                    if found:
                        break
                if not found:
                    errors.clear()  # a missing SRV record is no failure: the A/AAAA lookup says why
                    found = [
                        Address(ip, default_port, transport) for ip in await self._addresses(host, errors)
                    ]
        if not found:
            if scope.cancelled_caught:
                why = f"timed out after {self.timeout * 2:g} s"
            else:
                why = errors[-1] if errors else "no address (A/AAAA) record"
            raise ResolveError(host, why)  # logged by whoever handles it (once, with the call)
        log.debug("%s -> %s", uri, ", ".join(map(str, found)))
        return found

    async def _srv(self, host: str, transport: Transport, errors: list[str]) -> list[Address]:
        answer = await self._query(_SRV_PREFIX[transport] + host, "SRV", [])
        records = sorted(
            (
                (r.priority, -r.weight, str(r.target).rstrip("."), r.port)
                for r in answer
                if isinstance(r, SRV)
            ),
            key=lambda rec: (rec[0], rec[1]),
        )
        out: list[Address] = []
        for _prio, _weight, target, port in records:
            if target == "":  # RFC 2782: "." means the service is not available here
                continue
            for ip in await self._addresses(target, errors):
                out.append(Address(ip, port, transport))
        return out

    async def _addresses(self, host: str, errors: list[str]) -> list[str]:
        out: list[str] = []
        for rdtype in ("A", "AAAA"):
            records = await self._query(host, rdtype, errors)
            out += [str(r.address) for r in records if isinstance(r, A | AAAA)]
        return out

    async def _query(self, name: str, rdtype: str, errors: list[str]) -> list[dns.rdata.Rdata]:
        """The records of one query; a failure is noted in `errors` and gives none."""
        try:
            answer = await self._resolver.resolve(name, rdtype, raise_on_no_answer=False, search=False)
        except (dns.exception.DNSException, OSError) as exc:
            log.debug("DNS %s %s: %s", rdtype, name, exc)
            errors.append(_why(exc))
            return []
        return list(answer.rrset) if answer.rrset is not None else []
