"""Inputs the fuzzers found (fuzz/corpus/*/regress-*), pinned as plain unit tests."""

from __future__ import annotations

import pytest

from sip.auth import Credentials, compute_ha1, parse_credentials, verify
from sip.errors import SipParseError
from sip.parser import parse_datagram_untrusted


def test_bare_cr_in_the_status_line_is_a_parse_error() -> None:
    data = b"SIP/2.0 200 O\rK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nContent-Length: 0\r\n\r\n"
    with pytest.raises(SipParseError, match="bare CR inside the start line"):
        parse_datagram_untrusted(data)


def test_non_ascii_digest_response_is_a_mismatch_not_a_crash() -> None:
    creds = parse_credentials(
        'Digest username="100", realm="r", nonce="n", uri="sip:a@b", response="\u00e9\u00e9", algorithm=MD5'
    )
    assert isinstance(creds, Credentials)
    assert verify(creds, "INVITE", compute_ha1("100", "r", "pw")) is False
