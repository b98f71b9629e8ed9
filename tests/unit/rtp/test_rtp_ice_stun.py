"""STUN wrapper and ICE-lite agent, on bytes: RFC 5769 vectors, every refusal path, hypothesis."""

from __future__ import annotations

import binascii
import contextlib
import struct

import pytest
from aioice import stun as aioice_stun
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.ice_lite import CONSENT_TIMEOUT, IceLiteAgent
from rtp.stun import (
    StunClass,
    StunParseError,
    binding_error,
    binding_request,
    binding_success,
    parse_stun_untrusted,
)


def unhex(s: str) -> bytes:
    return bytes.fromhex("".join(s.split()))


# RFC 5769 (Copyright (c) 2010 IETF Trust; Simplified BSD License). Padding of SOFTWARE and
# USERNAME is 0x20 on purpose in the RFC.
PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"
TID = unhex("b7 e7 a7 01 bc 34 d6 86 fa 87 df ae")
SAMPLE_REQUEST = unhex("""
    00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
    00 24 00 04 6e 00 01 ff
    80 29 00 08 93 2f f9 b1 51 26 3b 36
    00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
    00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
    80 28 00 04 e5 7a 3b cf""")
SAMPLE_IPV4_RESPONSE = unhex("""
    01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 08 00 01 a1 47 e1 12 a6 43
    00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
    80 28 00 04 c0 7d 4c 96""")
SAMPLE_IPV6_RESPONSE = unhex("""
    01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
    00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
    80 28 00 04 c8 fb 0b 4c""")
V4_XOR_MAPPED = unhex("00 20 00 08 00 01 a1 47 e1 12 a6 43")
V6_XOR_MAPPED = unhex("00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9")


def attribute_values(data: bytes) -> dict[int, bytes]:
    """An independent TLV walk over a STUN message (not aioice's)."""
    out, pos = {}, 20
    while pos < len(data):
        typ, length = struct.unpack_from("!HH", data, pos)
        out[typ] = data[pos + 4 : pos + 4 + length]
        pos += 4 + length + (-length % 4)
    return out


# --- RFC 5769 vectors: parsing -------------------------------------------------------------


def test_rfc5769_sample_request_parses_and_authenticates() -> None:
    msg = parse_stun_untrusted(SAMPLE_REQUEST)
    assert msg.cls is StunClass.REQUEST
    assert msg.is_binding
    assert msg.transaction_id == TID
    assert msg.username == "evtj:h6vY"
    assert msg.priority == 0x6E0001FF
    assert msg.ice_controlled == 0x932FF9B151263B36
    assert msg.ice_controlling is None
    assert not msg.use_candidate
    assert msg.has_integrity
    assert msg.has_fingerprint
    assert msg.check_integrity(PASSWORD)
    assert not msg.check_integrity(b"VOkJxbRl1RmTxUk/WvJxBT")


@pytest.mark.parametrize(
    ("data", "addr"),
    [
        (SAMPLE_IPV4_RESPONSE, ("192.0.2.1", 32853)),
        (SAMPLE_IPV6_RESPONSE, ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
    ],
    ids=["ipv4", "ipv6"],
)
def test_rfc5769_sample_responses(data: bytes, addr: tuple[str, int]) -> None:
    msg = parse_stun_untrusted(data)
    assert msg.cls is StunClass.SUCCESS
    assert msg.xor_mapped_address == addr
    assert msg.check_integrity(PASSWORD)
    assert not msg.check_integrity(b"wrong")


@pytest.mark.parametrize("data", [SAMPLE_REQUEST, SAMPLE_IPV4_RESPONSE, SAMPLE_IPV6_RESPONSE])
def test_every_single_bit_flip_is_caught(data: bytes) -> None:
    """Flipping any bit covered by MESSAGE-INTEGRITY (everything before the trailing FINGERPRINT)
    makes the message unparsable or fails its integrity check."""
    for i in range((len(data) - 8) * 8):
        bad = bytearray(data)
        bad[i // 8] ^= 1 << (i % 8)
        try:
            msg = parse_stun_untrusted(bytes(bad))
        except StunParseError:
            continue
        # Padding bytes after FINGERPRINT do not exist; only MI-covered fields can survive.
        assert not msg.check_integrity(PASSWORD), f"bit {i} flipped went unnoticed"


# --- our encoders against the vectors ------------------------------------------------------


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        (("192.0.2.1", 32853), V4_XOR_MAPPED),
        (("2001:db8:1234:5678:11:2233:4455:6677", 32853), V6_XOR_MAPPED),
    ],
    ids=["ipv4", "ipv6"],
)
def test_binding_success_encodes_rfc5769_address(addr: tuple[str, int], expected: bytes) -> None:
    data = binding_success(TID, addr, PASSWORD)
    attrs = attribute_values(data)
    assert struct.pack("!HH", 0x0020, len(attrs[0x0020])) + attrs[0x0020] == expected
    assert list(attrs) == [0x0020, 0x0008, 0x8028]  # MI then FINGERPRINT last (RFC 8489 14.5, 14.7)
    msg = parse_stun_untrusted(data)
    assert msg.cls is StunClass.SUCCESS
    assert msg.xor_mapped_address == addr
    assert msg.check_integrity(PASSWORD)


@settings(max_examples=200, deadline=None)
@given(
    tid=st.binary(min_size=12, max_size=12),
    key=st.binary(min_size=1, max_size=64),
    v4=st.booleans(),
    address=st.integers(min_value=0, max_value=2**128 - 1),
    port=st.integers(min_value=0, max_value=65535),
)
def test_binding_success_is_what_aioice_encodes(
    tid: bytes, key: bytes, v4: bool, address: int, port: int
) -> None:
    # Our direct encoder against aioice's generic one (an independent implementation).
    import ipaddress

    from aioice import stun as aioice_stun

    host = str(ipaddress.IPv4Address(address % 2**32) if v4 else ipaddress.IPv6Address(address))
    reference = aioice_stun.Message(
        message_method=aioice_stun.Method.BINDING,
        message_class=aioice_stun.Class.RESPONSE,
        transaction_id=tid,
    )
    reference.attributes["XOR-MAPPED-ADDRESS"] = (host, port)
    reference.add_message_integrity(key)
    assert binding_success(tid, (host, port), key) == bytes(reference)


def test_binding_success_refuses_our_own_misuse() -> None:
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        binding_success(TID, ("not-an-address", 1), PASSWORD)
    with pytest.raises(ValueError, match="12 bytes"):
        binding_success(TID[:11], ("192.0.2.1", 1), PASSWORD)


def test_our_integrity_and_fingerprint_match_the_vector() -> None:
    """Rebuilt from its attributes with our encoder (no SOFTWARE, zero padding), the request's
    MI and FINGERPRINT verify independently: HMAC-SHA1 and CRC-32 ^ 0x5354554e recomputed here."""
    import hmac

    data = binding_request(
        TID, username="evtj:h6vY", key=PASSWORD, priority=0x6E0001FF, ice_controlled=0x932FF9B151263B36
    )
    attrs = attribute_values(data)
    mi_pos = data.index(struct.pack("!HH", 0x0008, 20))
    head = data[:2] + struct.pack("!H", mi_pos - 20 + 24) + data[4:mi_pos]
    assert attrs[0x0008] == hmac.new(PASSWORD, head, "sha1").digest()
    fp_pos = len(data) - 8
    head = data[:2] + struct.pack("!H", len(data) - 20) + data[4:fp_pos]
    assert struct.unpack("!I", attrs[0x8028])[0] == binascii.crc32(head) ^ 0x5354554E
    # and the same computation over the RFC's own bytes gives the RFC's values
    mi_pos = SAMPLE_REQUEST.index(unhex("00 08 00 14"))
    head = SAMPLE_REQUEST[:2] + struct.pack("!H", mi_pos - 20 + 24) + SAMPLE_REQUEST[4:mi_pos]
    assert hmac.new(PASSWORD, head, "sha1").digest() == attribute_values(SAMPLE_REQUEST)[0x0008]


def test_binding_error_carries_code() -> None:
    msg = parse_stun_untrusted(binding_error(TID, 401, "Unauthorized"))
    assert msg.cls is StunClass.ERROR
    assert msg.error_code == 401
    assert not msg.has_integrity
    signed = parse_stun_untrusted(binding_error(TID, 487, "Role Conflict", PASSWORD))
    assert signed.error_code == 487
    assert signed.check_integrity(PASSWORD)


# --- the parser's contract: only StunParseError, with a precise message ----------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x01\x00", "shorter than the 20-byte header"),
        (b"\xc0" + SAMPLE_REQUEST[1:], "top two bits"),
        (SAMPLE_REQUEST[:4] + b"\x21\x12\xa4\x43" + SAMPLE_REQUEST[8:], "magic cookie"),
        (SAMPLE_REQUEST[:-1], "length field"),
        (SAMPLE_REQUEST[:-4] + b"\x00\x00\x00\x00", "fingerprint does not match"),
        # a PRIORITY attribute whose length says 2: struct.error inside aioice
        (b"\x00\x01\x00\x08\x21\x12\xa4\x42" + TID + b"\x00\x24\x00\x02\x00\x01\x00\x00", "malformed STUN"),
        # USERNAME that is not UTF-8
        (b"\x00\x01\x00\x08\x21\x12\xa4\x42" + TID + b"\x00\x06\x00\x02\xff\xfe\x00\x00", "malformed STUN"),
        # a FINGERPRINT that is not the last attribute
        (
            SAMPLE_REQUEST[:2] + struct.pack("!H", len(SAMPLE_REQUEST) - 16) + SAMPLE_REQUEST[4:] + bytes(4),
            "last",
        ),
        (b"\x00\x01" + struct.pack("!H", 1500) + b"\x21\x12\xa4\x42" + TID + bytes(1500), "too long"),
    ],
)
def test_parse_errors_are_precise(data: bytes, message: str) -> None:
    with pytest.raises(StunParseError, match=message):
        parse_stun_untrusted(data)


def test_an_unknown_method_parses_and_is_not_binding() -> None:
    msg = parse_stun_untrusted(b"\x0e\xef\x00\x00\x21\x12\xa4\x42" + TID)  # method 0x0fff
    assert not msg.is_binding
    assert msg.cls is StunClass.REQUEST


@settings(max_examples=300, deadline=None)
@given(
    st.binary(min_size=12, max_size=12),
    st.text(min_size=1, max_size=40),
    st.integers(0, 2**32 - 1),
    st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    st.booleans(),
    st.binary(min_size=1, max_size=24),
)
def test_our_parser_reads_what_aioice_reads(
    tid: bytes,
    username: str,
    priority: int,
    controlling: int | None,
    controlled: int | None,
    use_candidate: bool,
    key: bytes,
) -> None:
    """Differential: checks encoded by aioice (binding_request) read the same through our parser
    as through aioice's, and authenticate under the key they were signed with only."""
    data = binding_request(
        tid,
        username=username,
        key=key,
        priority=priority,
        ice_controlling=controlling,
        ice_controlled=controlled,
        use_candidate=use_candidate,
    )
    ours = parse_stun_untrusted(data)
    theirs = aioice_stun.parse_message(data)
    assert ours.transaction_id == theirs.transaction_id == tid
    assert ours.username == theirs.attributes["USERNAME"]
    assert ours.priority == theirs.attributes["PRIORITY"]
    assert ours.ice_controlling == theirs.attributes.get("ICE-CONTROLLING")
    assert ours.ice_controlled == theirs.attributes.get("ICE-CONTROLLED")
    assert ours.use_candidate == ("USE-CANDIDATE" in theirs.attributes)
    assert ours.has_integrity
    assert ours.has_fingerprint
    assert ours.is_binding
    assert ours.check_integrity(key)
    assert ours.check_integrity(key) == theirs.check_message_integrity(key)
    assert not ours.check_integrity(key + b"x")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120))
def test_parse_random_bytes_raises_only_parse_error(data: bytes) -> None:
    with contextlib.suppress(StunParseError):
        parse_stun_untrusted(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80), st.integers(0, 0x3FFF))
def test_parse_random_bodies_behind_valid_header(body: bytes, msg_type: int) -> None:
    body = body[: len(body) // 4 * 4]
    data = struct.pack("!HHI", msg_type, len(body), 0x2112A442) + TID + body
    with contextlib.suppress(StunParseError):
        parse_stun_untrusted(data)


# --- the ICE-lite agent ----------------------------------------------------------------------

LUFRAG, LPWD = "LoCa", "localpasswordlocalpass1"
RUFRAG, RPWD = "ReMo", "remotepasswordremotepw2"
BROWSER = ("127.0.0.1", 40000)
T = bytes(range(12))


def agent() -> IceLiteAgent:
    return IceLiteAgent(LUFRAG, LPWD, RUFRAG, RPWD)


def check(
    *,
    username: str = f"{LUFRAG}:{RUFRAG}",
    key: bytes = LPWD.encode(),
    use_candidate: bool = False,
    controlling: bool = True,
    tid: bytes = T,
) -> bytes:
    return binding_request(
        tid,
        username=username,
        key=key,
        priority=0x6E7F1EFF,
        ice_controlling=7 if controlling else None,
        ice_controlled=None if controlling else 7,
        use_candidate=use_candidate,
    )


def test_valid_check_gets_signed_success_with_mapped_address() -> None:
    a = agent()
    reply = a.handle_stun_untrusted(check(), BROWSER, now=1.0)
    assert reply is not None
    msg = parse_stun_untrusted(reply)
    assert msg.cls is StunClass.SUCCESS
    assert msg.transaction_id == T
    assert msg.xor_mapped_address == BROWSER
    assert msg.check_integrity(LPWD.encode())
    assert msg.has_fingerprint
    assert a.is_validated(BROWSER)
    assert not a.is_validated(("127.0.0.1", 40001))
    assert a.selected is None
    assert a.consent_expires_at is None
    assert a.counters.checks_ok == 1


def test_use_candidate_nominates_and_sets_consent() -> None:
    a = agent()
    a.handle_stun_untrusted(check(use_candidate=True), BROWSER, now=10.0)
    assert a.selected == BROWSER
    assert a.consent_expires_at == 10.0 + CONSENT_TIMEOUT
    a.handle_stun_untrusted(check(), BROWSER, now=15.0)  # consent refresh without USE-CANDIDATE
    assert a.consent_expires_at == 45.0
    assert not a.consent_expired(44.9)
    assert a.consent_expired(45.0)
    other = ("::1", 5000)
    a.handle_stun_untrusted(check(use_candidate=True), other, now=16.0)
    assert a.selected == other  # renomination moves the selected pair


@pytest.mark.parametrize(
    ("request_bytes", "code", "counter", "signed"),
    [
        (check(username="XXXX:ReMo"), 401, "wrong_username", False),
        (check(username=f"{LUFRAG}:Other"), 401, "wrong_username", False),
        (check(key=b"not-the-password-at-all"), 401, "bad_integrity", False),
        (check(controlling=False), 487, "role_conflicts", True),
    ],
    ids=["wrong-lfrag", "wrong-rfrag", "bad-integrity", "role-conflict"],
)
def test_refused_checks(request_bytes: bytes, code: int, counter: str, signed: bool) -> None:
    a = agent()
    reply = a.handle_stun_untrusted(request_bytes, BROWSER, now=0.0)
    assert reply is not None
    msg = parse_stun_untrusted(reply)
    assert msg.cls is StunClass.ERROR
    assert msg.error_code == code
    assert msg.check_integrity(LPWD.encode()) is signed
    assert getattr(a.counters, counter) == 1
    assert not a.is_validated(BROWSER)
    assert a.selected is None


def _request_without(drop: set[int]) -> bytes:
    """A check with some attributes removed, re-signed (MI, FINGERPRINT) by hand."""
    import hmac

    full = check()
    body = b""
    pos = 20
    while pos < len(full):
        typ, length = struct.unpack_from("!HH", full, pos)
        end = pos + 4 + length + (-length % 4)
        if typ not in drop | {0x0008, 0x8028}:
            body += full[pos:end]
        pos = end
    if 0x0008 not in drop:
        head = full[:2] + struct.pack("!H", len(body) + 24) + full[4:20] + body
        body += struct.pack("!HH", 0x0008, 20) + hmac.new(LPWD.encode(), head, "sha1").digest()
    if 0x8028 not in drop:
        head = full[:2] + struct.pack("!H", len(body) + 8) + full[4:20] + body
        body += struct.pack("!HHI", 0x8028, 4, binascii.crc32(head) ^ 0x5354554E)
    return full[:2] + struct.pack("!H", len(body)) + full[4:20] + body


@pytest.mark.parametrize(
    ("drop", "code", "counter"),
    [
        ({0x0006}, 400, "missing_credentials"),
        ({0x0008}, 400, "missing_credentials"),
        ({0x0024}, 400, "missing_attributes"),
        ({0x8028}, 400, "missing_attributes"),
    ],
    ids=["no-username", "no-integrity", "no-priority", "no-fingerprint"],
)
def test_missing_attributes_get_400(drop: set[int], code: int, counter: str) -> None:
    a = agent()
    reply = a.handle_stun_untrusted(_request_without(drop), BROWSER, now=0.0)
    assert reply is not None
    assert parse_stun_untrusted(reply).error_code == code
    assert getattr(a.counters, counter) == 1
    assert not a.is_validated(BROWSER)


def test_non_requests_and_garbage_are_dropped_and_counted() -> None:
    a = agent()
    assert a.handle_stun_untrusted(SAMPLE_IPV4_RESPONSE, BROWSER, 0.0) is None
    assert a.handle_stun_untrusted(b"\x00\x11\x00\x00\x21\x12\xa4\x42" + T, BROWSER, 0.0) is None
    assert a.counters.not_request == 2
    assert a.handle_stun_untrusted(b"\x00\x01garbage", BROWSER, 0.0) is None
    assert a.counters.malformed == 1
    assert a.counters.checks_ok == 0


def test_validated_addresses_are_bounded() -> None:
    a = agent()
    for port in range(1000, 1100):
        a.handle_stun_untrusted(check(), ("127.0.0.1", port), 0.0)
    assert a.counters.checks_ok == 16
    assert a.counters.too_many_addresses == 84


def test_short_credentials_rejected() -> None:
    with pytest.raises(ValueError, match="RFC 8445"):
        IceLiteAgent("abc", LPWD, RUFRAG)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_agent_never_raises_on_garbage(data: bytes) -> None:
    a = agent()
    reply = a.handle_stun_untrusted(b"\x00\x01" + data, BROWSER, 0.0)
    assert reply is None or parse_stun_untrusted(reply).cls is StunClass.ERROR
