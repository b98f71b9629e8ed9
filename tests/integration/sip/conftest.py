"""Fixtures for the SIP tests against real peers: our transport + UA on a free loopback port."""

from __future__ import annotations

import re
import struct

import pytest

import trio
from sip.transport import SipTransport
from sip.ua import SipUA


@pytest.fixture
async def ua(nursery: trio.Nursery) -> SipUA:
    """A running UA on 127.0.0.1 (never 5060: Kamailio aliases it), UDP + TCP."""
    transport = SipTransport("127.0.0.1", 0)
    await nursery.start(transport.run)
    agent = SipUA(transport)
    await nursery.start(agent.run)
    return agent


def audio_sdp(port: int, host: str = "127.0.0.1", pts: tuple[int, ...] = (0, 8, 101)) -> bytes:
    """A plain RTP/AVP offer with PCMU/PCMA/telephone-event on `port`."""
    names = {0: "PCMU/8000", 8: "PCMA/8000", 101: "telephone-event/8000"}
    lines = [
        "v=0",
        f"o=- 1 1 IN IP4 {host}",
        "s=-",
        f"c=IN IP4 {host}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(map(str, pts))}",
        *(f"a=rtpmap:{pt} {names[pt]}" for pt in pts),
        "a=sendrecv",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


def sdp_media_address(sdp: bytes) -> tuple[str, int, list[int]]:
    """(connection address, audio port, payload types) of an SDP answer."""
    text = sdp.decode()
    c = re.search(r"^c=IN IP[46] (\S+)", text, re.M)
    m = re.search(r"^m=audio (\d+) RTP/AVP ([\d ]+)", text, re.M)
    assert c is not None, text
    assert m is not None, text
    return c.group(1), int(m.group(1)), [int(x) for x in m.group(2).split()]


def rtp_packet(seq: int, *, pt: int = 0, ssrc: int = 0x1234, payload: bytes = b"\xff" * 160) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, seq * 160, ssrc) + payload


async def udp_socket() -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    return sock
