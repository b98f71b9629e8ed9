"""Who may use the MCCP front: address sets, the ``Origin`` policy, admin routes, proxies (pure).

The Trio edge (:mod:`mccp.server`) asks these objects; they see strings and bytes only.

* :class:`AddressSet`: a set of IP networks (``127.0.0.0/8``, ``::1``, ``203.0.113.7``); an
  IPv4-mapped IPv6 peer (``::ffff:127.0.0.1``, what a dual-stack listener reports) is looked up
  as the IPv4 address it carries.
* :class:`OriginPolicy`: which ``Origin`` may open the WebSocket. Browsers always send ``Origin``
  on a WebSocket upgrade (RFC 6455 section 4.1, item 8, and 10.2: the server should check it, as
  a web page cannot forge it); a request without one is not from a browser page, so there is no
  cross-site WebSocket to fear and it passes. The bridge's own page (``Origin``'s host and port
  equal to the request's ``Host``: same origin, RFC 6454 section 5) always passes.
* :class:`RouteAccess`: who may read the extra routes (``/metrics``): an allowed address, or
  anyone presenting the bearer token (RFC 6750 section 2.1).
* :func:`client_address`: the page's address behind a trusted TLS-terminating proxy, from
  ``X-Forwarded-For``.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: The loopback networks (the default of the ``/metrics`` allow-list and of trusted proxies).
LOOPBACK = ("127.0.0.0/8", "::1")


def parse_address(text: str) -> Address | None:
    """An IP address, IPv4-mapped IPv6 unwrapped to IPv4; None if ``text`` is not an address."""
    try:
        address = ipaddress.ip_address(text.strip().removeprefix("[").removesuffix("]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True, slots=True)
class AddressSet:
    """A set of IP networks; ``address in addresses`` for a peer address string."""

    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AddressSet:
        """From addresses or CIDRs (``10.0.0.0/8``, ``::1``); raises ``ValueError`` naming the bad one."""
        networks = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                raise ValueError(f"not an IP address or network: {entry!r}") from None
        return cls(tuple(networks))

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, str):
            return False
        parsed = parse_address(address)
        return parsed is not None and any(parsed in net for net in self.networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __str__(self) -> str:
        text = (str(n.network_address) if n.num_addresses == 1 else str(n) for n in self.networks)
        return ", ".join(text) or "none"


@dataclass(frozen=True, slots=True)
class OriginPolicy:
    """``allowed`` None: any origin (a cross-site page can open the socket; it still needs a password)."""

    allowed: frozenset[str] | None = None

    @classmethod
    def from_list(cls, origins: Iterable[str]) -> OriginPolicy:
        """An empty list means any origin; entries are compared without a trailing ``/``, case-folded."""
        cleaned = frozenset(_normal(origin) for origin in origins)
        return cls(cleaned or None)

    def allows(self, origin: str | None, *, host: str | None) -> bool:
        """Whether an upgrade with this ``Origin`` (None: absent) and ``Host`` may proceed.

        Same origin is judged on host and port only (``Origin``'s authority equals ``Host``): the
        scheme seen here is plain behind a TLS-terminating proxy, and only the bridge's own page
        is served at that host and port.
        """
        if origin is None or self.allowed is None:
            return True
        normal = _normal(origin)
        if normal in self.allowed:
            return True
        scheme, sep, authority = normal.partition("://")
        return bool(sep) and scheme in ("https", "http") and host is not None and authority == _normal(host)


def _normal(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


@dataclass(frozen=True, slots=True)
class RouteAccess:
    """Access to the admin routes: from ``allow``, or with ``Authorization: Bearer <token>``."""

    allow: AddressSet = AddressSet()
    token: str | None = None

    def permits(self, address: str, authorization: bytes | None) -> bool:
        """Whether a request from ``address`` with this ``Authorization`` value may read the route."""
        if address in self.allow:
            return True
        if not self.token or authorization is None:
            return False
        scheme, _, credentials = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        # Constant-time comparison: the token must not leak byte by byte through timing.
        return hmac.compare_digest(credentials.strip(), self.token.encode())


def client_address(peer: str, forwarded_for: Sequence[bytes], trusted: AddressSet) -> str:
    """The page's address as a trusted proxy reports it (the peer's own if it is not trusted).

    ``forwarded_for`` is every ``X-Forwarded-For`` header value, in order. Each proxy appends the
    address it received from, so the list is read from the right and the first address that is not
    itself a trusted proxy is the client: entries left of it were written by the client and prove
    nothing. A malformed entry stops the walk at the last trusted hop.
    """
    if peer not in trusted:
        return peer
    hops = [part.strip() for value in forwarded_for for part in value.split(b",")]
    current = peer
    for raw in reversed(hops):
        address = parse_address(raw.decode("ascii", "replace"))
        if address is None:
            break
        current = str(address)
        if current not in trusted:
            return current
    return current


__all__ = ["LOOPBACK", "AddressSet", "OriginPolicy", "RouteAccess", "client_address", "parse_address"]
