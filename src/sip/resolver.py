"""Locating a SIP server by name (RFC 3263 §4, without NAPTR) on Trio, with dnspython.

`SipResolver.locate(uri, default_transport)` returns the addresses to try, in order:

* an IP literal host is used as is (port from the URI, else 5060/5061);
* a host with an explicit port is resolved with A/AAAA only (§4.2);
* otherwise SRV records are looked up (§4.2: `_sip._udp` / `_sip._tcp`, only the URI's
  `transport` if it has one), ordered by priority then weight (RFC 2782; the weighted random
  choice is replaced by a stable order, highest weight first), and each target is resolved to
  A/AAAA records; without SRV records the host itself is resolved, port 5060 (§4.2).

Every failure (NXDOMAIN, no answer, timeout, no nameserver reachable) ends as `TransportError`
("unresolvable"), which the UA turns into 503. `nameservers`/`port` let tests and odd setups
point the resolver at a given server; by default the system configuration is used.
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

__all__ = ["SipResolver", "is_ip_literal"]

log = logging.getLogger("sip.resolver")

_SRV_PREFIX = {Transport.UDP: "_sip._udp.", Transport.TCP: "_sip._tcp.", Transport.TLS: "_sips._tcp."}


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
        with trio.move_on_after(self.timeout * 2) as scope:
            if uri.port is not None:
                found = [Address(ip, uri.port, transport) for ip in await self._addresses(host)]
            else:
                candidates = (
                    [transport] if forced else [transport, *(t for t in Transport if t is not transport)]
                )
                found = []
                for t in candidates:
                    found = await self._srv(host, t)
                    if found:
                        break
                if not found:
                    found = [Address(ip, default_port, transport) for ip in await self._addresses(host)]
        if scope.cancelled_caught or not found:
            raise TransportError(f"cannot resolve {host}")
        log.debug("%s -> %s", uri, ", ".join(map(str, found)))
        return found

    async def _srv(self, host: str, transport: Transport) -> list[Address]:
        answer = await self._query(_SRV_PREFIX[transport] + host, "SRV")
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
            for ip in await self._addresses(target):
                out.append(Address(ip, port, transport))
        return out

    async def _addresses(self, host: str) -> list[str]:
        out: list[str] = []
        for rdtype in ("A", "AAAA"):
            out += [str(r.address) for r in await self._query(host, rdtype) if isinstance(r, A | AAAA)]
        return out

    async def _query(self, name: str, rdtype: str) -> list[dns.rdata.Rdata]:
        try:
            answer = await self._resolver.resolve(name, rdtype, raise_on_no_answer=False, search=False)
        except (dns.exception.DNSException, OSError) as exc:
            log.debug("DNS %s %s: %s", rdtype, name, exc)
            return []
        return list(answer.rrset) if answer.rrset is not None else []
