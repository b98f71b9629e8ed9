"""Errors of the SIP core.

* `SipParseError` — the peer sent something we cannot parse. It is the *only* exception the
  `*_untrusted` parsers may raise. `status_hint` is the response a UAS should send (400 Bad
  Request, 505 Version Not Supported, 513 Message Too Large, ...). When the request line and the
  headers were readable, `head` holds them so that the edge can still answer (see
  `sip.message.error_response`).
* `LocalProtocolError` — our own code misused the API (e.g. sending a response on a transaction
  that already sent a final one). Never caused by network input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sip.headers import Headers


class SipParseError(ValueError):
    """A SIP message, header or URI from the network could not be parsed.

    `status_hint` is the SIP status to answer with when the bad message was a request;
    `head` is `(method, request_uri_text, headers)` when the request head was readable.
    """

    def __init__(
        self,
        message: str,
        status_hint: int = 400,
        head: tuple[str, str, Headers] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_hint = status_hint
        self.head = head

    def with_head(self, head: tuple[str, str, Headers]) -> SipParseError:
        """Return a copy of this error that also carries the readable request head."""
        return SipParseError(str(self), self.status_hint, head)


ParseError = SipParseError
"""Alias: the package-wide name STYLE.md gives the parse error."""


class LocalProtocolError(RuntimeError):
    """Our side misused the SIP core API (a bug in the caller, never a network condition)."""
