"""mccp.access: address sets, the Origin policy, admin-route access, X-Forwarded-For (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mccp.access import LOOPBACK, AddressSet, OriginPolicy, RouteAccess, client_address, parse_address


@pytest.mark.parametrize(
    ("address", "inside"),
    [
        ("127.0.0.1", True),
        ("127.255.0.9", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),  # IPv4-mapped (dual-stack listener)
        ("[::1]", True),
        ("128.0.0.1", False),
        ("::2", False),
        ("localhost", False),
        ("", False),
        ("?", False),
    ],
)
def test_loopback_set(address: str, inside: bool) -> None:
    assert (address in AddressSet.parse(LOOPBACK)) is inside


def test_address_set_parse_and_text() -> None:
    nets = AddressSet.parse(["10.0.0.0/8", " 192.0.2.7 ", "2001:db8::/32", "10.1.2.3/8"])
    assert "10.200.1.1" in nets
    assert "192.0.2.7" in nets
    assert "192.0.2.8" not in nets
    assert "2001:db8::5" in nets
    assert str(nets) == "10.0.0.0/8, 192.0.2.7, 2001:db8::/32, 10.0.0.0/8"
    assert not AddressSet()
    assert str(AddressSet()) == "none"
    assert 7 not in nets
    with pytest.raises(ValueError, match=r"not an IP address or network: 'example\.com'"):
        AddressSet.parse(["example.com"])


def test_parse_address() -> None:
    assert str(parse_address("::ffff:10.0.0.1")) == "10.0.0.1"
    assert parse_address("10.0.0.256") is None


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        (None, "bridge:5062", True),  # not a browser
        ("https://pages.example", "bridge:5062", True),
        ("HTTPS://PAGES.example/", "bridge:5062", True),
        ("https://bridge:5062", "bridge:5062", True),  # same origin
        ("http://bridge:5062", "Bridge:5062", True),  # behind a proxy the scheme is not ours to see
        ("https://bridge", "bridge:5062", False),
        ("https://bridge:5062", None, False),
        ("wss://bridge:5062", "bridge:5062", False),
        ("bridge:5062", "bridge:5062", False),
        ("null", "bridge:5062", False),
        ("https://evil.example", "bridge:5062", False),
    ],
)
def test_origin_policy(origin: str | None, host: str | None, allowed: bool) -> None:
    policy = OriginPolicy.from_list(["https://pages.example"])
    assert policy.allows(origin, host=host) is allowed


def test_empty_origin_list_allows_everything() -> None:
    assert OriginPolicy.from_list([]).allowed is None
    assert OriginPolicy().allows("https://evil.example", host="bridge")


def test_route_access() -> None:
    token = RouteAccess(AddressSet.parse(["10.0.0.0/8"]), "abcdefghijklmnop")
    assert token.permits("10.1.1.1", None)
    assert token.permits("192.0.2.1", b"Bearer abcdefghijklmnop")
    assert token.permits("192.0.2.1", b"  BEARER   abcdefghijklmnop ")
    assert not token.permits("192.0.2.1", b"Bearer abcdefghijklmnoq")
    assert not token.permits("192.0.2.1", b"Bearer abcdefghijklmnop2")
    assert not token.permits("192.0.2.1", b"Basic abcdefghijklmnop")
    assert not token.permits("192.0.2.1", b"\xff\x00")
    assert not token.permits("192.0.2.1", None)
    no_token = RouteAccess(AddressSet.parse(["10.0.0.0/8"]))
    assert not no_token.permits("192.0.2.1", b"Bearer ")
    assert not no_token.permits("192.0.2.1", b"Bearer x")
    assert not RouteAccess().permits("127.0.0.1", None)


PROXIES = AddressSet.parse(["10.0.0.0/24"])


@pytest.mark.parametrize(
    ("peer", "headers", "client"),
    [
        ("192.0.2.1", [b"198.51.100.1"], "192.0.2.1"),  # not a proxy: the header is ignored
        ("10.0.0.1", [], "10.0.0.1"),
        ("10.0.0.1", [b"198.51.100.1"], "198.51.100.1"),
        ("10.0.0.1", [b"127.0.0.1, 198.51.100.1"], "198.51.100.1"),  # left entries are the client's
        ("10.0.0.1", [b"198.51.100.1, 10.0.0.2"], "198.51.100.1"),  # two proxies
        ("10.0.0.1", [b"198.51.100.1", b"10.0.0.2"], "198.51.100.1"),  # two header lines
        ("10.0.0.1", [b"198.51.100.1, garbage, 10.0.0.2"], "10.0.0.2"),  # stops at the bad hop
        ("10.0.0.1", [b" 2001:db8::1 "], "2001:db8::1"),
        ("10.0.0.1", [b"[2001:db8::1]"], "2001:db8::1"),
        ("10.0.0.1", [b"10.0.0.3"], "10.0.0.3"),  # only proxies: the farthest one
        ("10.0.0.1", [b""], "10.0.0.1"),
    ],
)
def test_client_address(peer: str, headers: list[bytes], client: str) -> None:
    assert client_address(peer, headers, PROXIES) == client


@given(st.lists(st.binary(max_size=80), max_size=4))
def test_client_address_never_raises_and_is_an_address(headers: list[bytes]) -> None:
    out = client_address("10.0.0.1", headers, PROXIES)
    assert parse_address(out) is not None
