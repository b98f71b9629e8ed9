"""Digest authentication against the RFC 2617 §3.5 and RFC 7616 §3.9.1 examples, client and server."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.unit.sip.test_sip_parser import REGISTER_401

from sip.auth import (
    Challenge,
    Credentials,
    DigestClient,
    challenges,
    compute_ha1,
    compute_response,
    make_challenge,
    parse_auth_params,
    parse_challenge,
    parse_credentials,
    supported_algorithm,
    verify,
)
from sip.errors import SipParseError
from sip.message import Request, Response
from sip.parser import parse_datagram_untrusted


def test_rfc2617_section_3_5_example() -> None:
    challenge = parse_challenge(
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    assert challenge.qop == ("auth", "auth-int")
    assert challenge.algorithm == "MD5"
    creds = DigestClient("Mufasa", "Circle Of Life").authorize(
        challenge, "GET", "/dir/index.html", "0a4f113b"
    )
    assert creds.response == "6629fae49393a05397450978507c4ef1"
    assert (creds.qop, creds.nc, creds.cnonce) == ("auth", "00000001", "0a4f113b")
    assert creds.opaque == "5ccc069c403ebaf9f0171e9517f40e41"
    assert parse_credentials(str(creds)) == creds


RFC7616 = {
    "realm": "http-auth@example.org",
    "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    "opaque": "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS",
}


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_section_3_9_1_examples(algorithm: str, expected: str) -> None:
    header = (
        f'Digest realm="{RFC7616["realm"]}", qop="auth, auth-int", algorithm={algorithm}, '
        f'nonce="{RFC7616["nonce"]}", opaque="{RFC7616["opaque"]}"'
    )
    challenge = parse_challenge(header)
    assert challenge.qop == ("auth", "auth-int")
    creds = DigestClient("Mufasa", "Circle of Life").authorize(
        challenge, "GET", "/dir/index.html", RFC7616["cnonce"]
    )
    assert creds.response == expected
    assert creds.algorithm == algorithm
    # The server side accepts it given HA1, and rejects a wrong one.
    ha1 = compute_ha1("Mufasa", RFC7616["realm"], "Circle of Life", algorithm)
    assert verify(parse_credentials(str(creds)), "GET", ha1)
    assert not verify(parse_credentials(str(creds)), "POST", ha1)
    assert not verify(creds, "GET", compute_ha1("Mufasa", RFC7616["realm"], "wrong", algorithm))


def test_nonce_count_increments_per_nonce() -> None:
    client = DigestClient("100", "pass100")
    ch = make_challenge("127.0.0.1", "n1")
    assert [client.authorize(ch, "INVITE", "sip:101@127.0.0.1", f"c{i}").nc for i in range(3)] == [
        "00000001",
        "00000002",
        "00000003",
    ]
    assert client.authorize(make_challenge("127.0.0.1", "n2"), "INVITE", "sip:x", "c").nc == "00000001"


def test_no_qop_rfc2069_style() -> None:
    challenge = parse_challenge('Digest realm="127.0.0.1", nonce="abc"', proxy=True)
    creds = DigestClient("100", "pass100").authorize(challenge, "INVITE", "sip:101@127.0.0.1", "ignored")
    assert (creds.qop, creds.nc, creds.cnonce) == (None, None, None)
    ha1 = compute_ha1("100", "127.0.0.1", "pass100")
    assert creds.response == compute_response(
        ha1=ha1, algorithm="MD5", method="INVITE", uri="sip:101@127.0.0.1", nonce="abc"
    )
    assert "qop" not in str(creds)
    assert challenge.reply_header == "Proxy-Authorization"
    assert verify(parse_credentials(str(creds)), "INVITE", ha1)


def test_auth_int_and_sess_variants_verify() -> None:
    body = b"v=0\r\n"
    for algorithm in ("MD5-sess", "SHA-256-sess", "SHA-256"):
        ch = make_challenge("r", "n", algorithm=algorithm, qop=("auth-int",))
        creds = DigestClient("u", "p").authorize(ch, "INVITE", "sip:x", "cn", body=body)
        assert creds.qop == "auth-int"
        ha1 = compute_ha1("u", "r", "p", algorithm)
        assert verify(creds, "INVITE", ha1, body=body)
        assert not verify(creds, "INVITE", ha1, body=b"v=1\r\n")


def test_sha512_256_when_available() -> None:
    if not supported_algorithm("SHA-512-256"):
        pytest.fail("hashlib on this machine lacks sha512_256")  # OpenSSL 3 on Debian 12 has it
    ch = make_challenge("r", "n", algorithm="SHA-512-256")
    creds = DigestClient("u", "p").authorize(ch, "REGISTER", "sip:r", "cn")
    assert len(creds.response) == 64
    assert verify(creds, "REGISTER", compute_ha1("u", "r", "p", "SHA-512-256"))


def test_retry_decisions_and_stale() -> None:
    client = DigestClient("100", "pass100")
    first = make_challenge("127.0.0.1", "n1")
    assert client.can_retry(first)
    client.authorize(first, "REGISTER", "sip:127.0.0.1", "c1")
    assert not client.can_retry(make_challenge("127.0.0.1", "n2"))  # rejected: wrong password
    assert client.can_retry(make_challenge("127.0.0.1", "n3", stale=True))  # only the nonce expired
    assert client.can_retry(make_challenge("other", "n4"))
    assert client.can_retry(make_challenge("127.0.0.1", "n5", proxy=True))
    assert not client.can_retry(make_challenge("x", "n", algorithm="FOO"))
    assert client.can_retry(make_challenge("x", "n", algorithm="SHA-256"))


def test_challenge_round_trip_and_headers_of_a_401() -> None:
    ch = make_challenge("127.0.0.1", "abc", opaque="o", stale=True, qop=("auth", "auth-int"))
    assert parse_challenge(str(ch)) == ch
    assert ch.header_name == "WWW-Authenticate"
    assert ch.reply_header == "Authorization"
    resp = parse_datagram_untrusted(REGISTER_401)
    assert isinstance(resp, Response)
    (found,) = challenges(resp)
    assert (found.realm, found.nonce, found.qop, found.proxy) == (
        "127.0.0.1",
        "Y2xhc3M=",
        ("auth", "auth-int"),
        False,
    )
    resp407 = Response(
        407,
        "Proxy Authentication Required",
        resp.headers.remove("WWW-Authenticate")
        .add("Proxy-Authenticate", 'Digest realm="p", nonce="1", algorithm=SHA-256')
        .add("Proxy-Authenticate", 'Basic realm="p"'),
    )
    (proxy_ch,) = challenges(resp407)
    assert proxy_ch.proxy
    assert proxy_ch.algorithm == "SHA-256"


def test_credentials_fit_into_a_request_that_parses() -> None:
    client = DigestClient("100", "pass100")
    ch = make_challenge("127.0.0.1", "nonce,with,commas")
    creds = client.authorize(ch, "REGISTER", "sip:127.0.0.1", "cn")
    data = (
        b"REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK2\r\n"
        b"From: <sip:100@127.0.0.1>;tag=a\r\nTo: <sip:100@127.0.0.1>\r\nCall-ID: c\r\nCSeq: 2 REGISTER\r\n"
        + f"{ch.reply_header}: {creds}\r\n\r\n".encode()
    )
    req = parse_datagram_untrusted(data)
    assert isinstance(req, Request)
    got = parse_credentials(req.headers.get("Authorization") or "")
    assert got == creds
    assert verify(got, "REGISTER", compute_ha1("100", "127.0.0.1", "pass100"))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('Basic realm="x"', "unsupported auth scheme 'Basic'"),
        ('Digest realm="x"', "without realm or nonce"),
        ('Digest realm="x, nonce="y"', "unterminated quoted string"),
        ("Digest realm", "invalid auth parameter"),
        ("Digest realm=", "invalid value of 'realm'"),
        ("Di gest", "invalid auth parameter"),
        ("@ realm=x", "invalid auth scheme"),
    ],
)
def test_bad_challenges(value: str, message: str) -> None:
    with pytest.raises(SipParseError, match=message):
        parse_challenge(value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('Digest username="a", realm="r", nonce="n", uri="u"', "without response"),
        (
            'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth',
            "without cnonce or nc",
        ),
        (
            'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth, cnonce="c", nc=1',
            "nonce count",
        ),
        ("NoOneKnowsThisScheme opaque-data=here", "unsupported auth scheme"),
    ],
)
def test_bad_credentials(value: str, message: str) -> None:
    with pytest.raises(SipParseError, match=message):
        parse_credentials(value)


def test_unknown_algorithm_fails_cleanly() -> None:
    creds = Credentials("u", "r", "n", "sip:x", "00", algorithm="FOO")
    assert not verify(creds, "INVITE", "00")
    with pytest.raises(SipParseError, match="unsupported digest algorithm 'FOO'"):
        DigestClient("u", "p").authorize(Challenge("r", "n", algorithm="FOO"), "INVITE", "sip:x", "c")
    with pytest.raises(SipParseError, match="no supported qop"):
        DigestClient("u", "p").authorize(Challenge("r", "n", qop=("auth-conf",)), "INVITE", "sip:x", "c")


def test_auth_params_keep_quoted_commas() -> None:
    scheme, params = parse_auth_params('Digest  a="1,2" , b=tok,, c="q\\"x"', "X")
    assert scheme == "Digest"
    assert params == [("a", "1,2"), ("b", "tok"), ("c", 'q"x')]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(max_size=300))
def test_auth_parsers_only_raise_sip_parse_error(value: str) -> None:
    for parse in (parse_challenge, parse_credentials):
        with contextlib.suppress(SipParseError):
            parse(value)
