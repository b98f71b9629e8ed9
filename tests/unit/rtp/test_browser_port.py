"""The single-port mode's pure parts, on bytes: the local ufrag of a STUN datagram (RFC 5769
vectors), the routing table of a shared browser port, the kernel version rule."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.unit.rtp.test_rtp_ice_stun import SAMPLE_IPV4_RESPONSE, SAMPLE_REQUEST  # RFC 5769 vectors

from rtp.browser_port import HELD_PER_CALL, PortRoutes, kernel_hashes_connected_udp
from rtp.stun import binding_request, binding_success, local_ufrag_untrusted


def check(username: str) -> bytes:
    return binding_request(os.urandom(12), username=username, key=b"k" * 22, priority=1, ice_controlling=1)


def stun_with(attributes: bytes, *, cookie: int = 0x2112A442, msg_type: int = 0x0001) -> bytes:
    return struct.pack("!HHI", msg_type, len(attributes), cookie) + b"\x00" * 12 + attributes


MI = struct.pack("!HH", 0x0008, 20) + b"\x00" * 20  # MESSAGE-INTEGRITY


def username_attribute(value: bytes) -> bytes:
    return struct.pack("!HH", 0x0006, len(value)) + value + b"\x00" * (-len(value) % 4)


# --- local_ufrag_untrusted ----------------------------------------------------------------


def test_rfc5769_sample_request_names_the_receivers_ufrag() -> None:
    # RFC 8445 7.2.2: "LFRAG:RFRAG", LFRAG the receiver's: the RFC's check goes to "evtj".
    assert local_ufrag_untrusted(SAMPLE_REQUEST) == "evtj"
    assert local_ufrag_untrusted(memoryview(SAMPLE_REQUEST)) == "evtj"
    assert local_ufrag_untrusted(bytearray(SAMPLE_REQUEST)) == "evtj"


def test_a_check_from_our_encoder_names_its_first_part() -> None:
    assert local_ufrag_untrusted(check("0a1b2c3d:Xy+/browser")) == "0a1b2c3d"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (SAMPLE_IPV4_RESPONSE, "no USERNAME"),
        (SAMPLE_REQUEST[:19], "shorter than the header"),
        (SAMPLE_REQUEST[:-4], "length field does not match"),
        (SAMPLE_REQUEST + b"\x00" * 4, "length field does not match"),
        (bytes([0x40]) + SAMPLE_REQUEST[1:], "top bits set"),
        (stun_with(username_attribute(b"abcd:efgh"), cookie=0x01020304), "no magic cookie"),
        (stun_with(username_attribute(b"abcdefgh")), "no colon"),
        (stun_with(username_attribute(b":efgh")), "empty first part"),
        (stun_with(username_attribute(b"ab\xffd:efgh")), "not ice-chars"),
        (stun_with(username_attribute(b"ab-d:efgh")), "not ice-chars"),
        (stun_with(struct.pack("!HH", 0x0006, 40) + b"abcd:efgh\x00\x00\x00"), "runs past the end"),
        (stun_with(MI + username_attribute(b"abcd:e")), "after MESSAGE-INTEGRITY"),
        (stun_with(b""), "no attributes"),
        (b"\x00" * 1600, "too long"),
    ],
)
def test_no_ufrag_without_a_well_framed_username(data: bytes, why: str) -> None:
    assert local_ufrag_untrusted(data) is None, why


def test_unknown_attributes_before_username_are_skipped() -> None:
    software = struct.pack("!HH", 0x8022, 5) + b"hello\x00\x00\x00"
    assert local_ufrag_untrusted(stun_with(software + username_attribute(b"Wxyz:abc"))) == "Wxyz"


@given(st.binary(max_size=200))
def test_never_raises_on_random_bytes(data: bytes) -> None:
    assert local_ufrag_untrusted(data) is None or isinstance(local_ufrag_untrusted(data), str)


@given(st.binary(min_size=1, max_size=60))
def test_never_raises_on_random_attributes(attributes: bytes) -> None:
    padded = attributes + b"\x00" * (-len(attributes) % 4)
    local_ufrag_untrusted(stun_with(padded))


# --- PortRoutes: the demultiplexing rules ---------------------------------------------------

A = ("192.0.2.1", 5000)
B = ("192.0.2.2", 6000)
SRTP = bytes([0x80, 0x00]) + b"\x00" * 30
DTLS = bytes([22, 0xFE, 0xFD]) + b"\x00" * 30


class Leg:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def test_stun_goes_by_the_usernames_first_part_whatever_its_source() -> None:
    routes: PortRoutes[Leg] = PortRoutes()
    one, two = Leg("one"), Leg("two")
    assert routes.reserve("aaaa1111")
    assert routes.reserve("bbbb2222")
    routes.attach("aaaa1111", one)
    routes.attach("bbbb2222", two)
    assert routes.route_untrusted(check("aaaa1111:x"), A) is one
    assert routes.route_untrusted(check("bbbb2222:x"), A) is two  # same source, other ufrag
    assert routes.route_untrusted(check("x:aaaa1111"), A) is None  # our ufrag second: not ours
    assert routes.counters.unknown_ufrag == 1
    assert routes.route_untrusted(SAMPLE_IPV4_RESPONSE, A) is None
    assert routes.counters.stun_no_ufrag == 1
    assert routes.counters.datagrams == 4


def test_checks_for_a_reserved_ufrag_are_held_until_attached() -> None:
    """On a port of its own a call finds the browser's first checks queued when it starts serving;
    on the shared port they are held for it (a few), and handed over by `attach`."""
    routes: PortRoutes[Leg] = PortRoutes()
    one = Leg("one")
    assert routes.reserve("aaaa1111")
    assert not routes.reserve("aaaa1111")  # a live call has it
    checks = [check("aaaa1111:x") for _ in range(HELD_PER_CALL + 1)]
    for data in checks:
        assert routes.route_untrusted(data, A) is None
    assert routes.counters.held == HELD_PER_CALL
    assert routes.counters.unknown_ufrag == 1  # beyond HELD_PER_CALL
    assert routes.attach("aaaa1111", one) == [(data, A) for data in checks[:HELD_PER_CALL]]
    assert routes.route_untrusted(check("aaaa1111:x"), A) is one
    assert routes.attach("aaaa1111", one) == []  # handed over once
    with pytest.raises(LookupError):
        routes.attach("aaaa1111", Leg("other"))
    assert routes.reserve("cccc3333")
    routes.route_untrusted(check("cccc3333:x"), B)
    assert len(routes) == 3  # two ufrags, one check held
    routes.release("cccc3333")  # a call that never attached: what was held for it goes too
    assert len(routes) == 1


def test_media_goes_by_the_address_a_check_validated() -> None:
    routes: PortRoutes[Leg] = PortRoutes()
    one, two = Leg("one"), Leg("two")
    routes.attach("aaaa1111", one)
    routes.attach("bbbb2222", two)
    for data in (SRTP, DTLS, b"\x40garbage", b""):
        assert routes.route_untrusted(data, A) is None
    assert routes.counters.unknown_address == 4
    routes.validated(A, one)
    routes.validated(B, two)
    assert routes.route_untrusted(SRTP, A) is one
    assert routes.route_untrusted(DTLS, A) is one
    assert routes.route_untrusted(SRTP, B) is two
    assert routes.route_untrusted(SRTP, ("192.0.2.1", 5001)) is None  # another port of A's host
    assert routes.counters.unknown_address == 5


def test_the_latest_validated_check_for_an_address_wins() -> None:
    routes: PortRoutes[Leg] = PortRoutes()
    one, two = Leg("one"), Leg("two")
    routes.attach("aaaa1111", one)
    routes.attach("bbbb2222", two)
    routes.validated(A, one)
    routes.validated(A, two)
    assert routes.route_untrusted(SRTP, A) is two
    routes.detach(one)  # one's entries are gone, and A stays two's
    assert routes.route_untrusted(SRTP, A) is two
    routes.validated(A, one)  # a detached leg gets nothing
    assert routes.route_untrusted(SRTP, A) is two


def test_detach_and_release_leave_no_entry() -> None:
    routes: PortRoutes[Leg] = PortRoutes()
    one, two = Leg("one"), Leg("two")
    routes.reserve("aaaa1111")
    routes.reserve("bbbb2222")
    routes.attach("aaaa1111", one)
    routes.attach("bbbb2222", two)
    routes.validated(A, one)
    routes.validated(("192.0.2.9", 1), one)
    routes.validated(B, two)
    assert len(routes) == 5
    routes.detach(one)
    assert routes.route_untrusted(SRTP, A) is None
    assert routes.route_untrusted(SRTP, B) is two  # the other call is undisturbed
    assert len(routes) == 3
    assert routes.route_untrusted(check("aaaa1111:x"), A) is None  # reserved, not attached: held
    assert len(routes) == 4
    assert not routes.reserve("aaaa1111")  # still the ended call's until released
    routes.release("aaaa1111")
    routes.release("bbbb2222")  # release of an attached leg detaches it too
    assert len(routes) == 0
    assert routes.route_untrusted(SRTP, B) is None
    routes.detach(one)  # idempotent
    routes.release("aaaa1111")


# --- the kernel note ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("release", "hashed"),
    [
        ("6.18.44-fc-v857", True),
        ("6.13.0", True),
        ("7.0.1-arch1", True),
        ("6.12.9-amd64", False),
        ("6.1.0-28-amd64", False),
        ("5.15.0-91-generic", False),
        ("", False),
        ("unknown", False),
    ],
)
def test_kernel_hashes_connected_udp_from_6_13(release: str, hashed: bool) -> None:
    assert kernel_hashes_connected_udp(release) is hashed


def test_a_success_response_names_no_ufrag() -> None:
    assert local_ufrag_untrusted(binding_success(os.urandom(12), A, b"k" * 22)) is None
