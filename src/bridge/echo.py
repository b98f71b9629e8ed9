"""The echo extension: a real SIP endpoint on its own loopback port that answers and echoes audio.

`run_echo_extension()` runs a second SIP transport + UA acting as a UAS (no registrar, no
outgoing calls). An INVITE to its number is answered 200 with a small hand-built SDP (the first of
PCMU/PCMA the offer lists, plus telephone-event when offered) on a fresh RTP port, and every RTP
(and RTCP) packet is sent back to where it came from (symmetric RTP, RFC 4961) until the caller's
BYE or CANCEL. Other numbers get 404, an offer without PCMU/PCMA gets 488. Its SIP address is
reported through `task_status` so that the bridge routes the echo number there.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import trio
from sip.calls import IncomingCall
from sip.transport import Address, SipTransport, Transport
from sip.ua import SipUA

__all__ = ["EchoExtension", "answer_sdp", "run_echo_extension"]

log = logging.getLogger("bridge.echo")

_CODECS = {0: "PCMU/8000", 8: "PCMA/8000"}
_RTPMAP = re.compile(r"^a=rtpmap:(\d{1,3}) ([^/\s]+)/(\d+)", re.MULTILINE)
_MEDIA = re.compile(r"^m=audio \d+ RTP/AVP((?: \d{1,3})+)\s*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class EchoExtension:
    """Where the echo extension listens: route calls for `number` to `uri`."""

    number: str
    address: Address

    @property
    def uri(self) -> str:
        host = f"[{self.address.host}]" if ":" in self.address.host else self.address.host
        return f"sip:{self.number}@{host}:{self.address.port}"


def answer_sdp(offer: bytes, *, host: str, port: int, session_id: int) -> bytes | None:
    """The echo's SDP answer to `offer` (RFC 3264), or None when no PCMU/PCMA is offered."""
    try:
        text = offer.decode("utf-8")
    except UnicodeDecodeError:
        return None
    media = _MEDIA.search(text.replace("\r\n", "\n"))
    if media is None:
        return None
    offered = [int(pt) for pt in media.group(1).split()]
    text = text.replace("\r\n", "\n")
    names = {int(m.group(1)): (m.group(2).lower(), m.group(3)) for m in _RTPMAP.finditer(text)}

    def usable(pt: int) -> bool:  # a static G.711 type, unless an rtpmap maps it to something else
        return pt in _CODECS and names.get(pt, (_CODECS[pt][:4].lower(), "8000")) == (
            _CODECS[pt][:4].lower(),
            "8000",
        )

    codec = next((pt for pt in offered if usable(pt)), None)
    if codec is None:
        return None
    dtmf = next((pt for pt in offered if names.get(pt) == ("telephone-event", "8000")), None)
    ip = "IP6" if ":" in host else "IP4"
    pts = [codec] if dtmf is None else [codec, dtmf]
    lines = [
        "v=0",
        f"o=mccp-echo {session_id} 1 IN {ip} {host}",
        "s=echo",
        f"c=IN {ip} {host}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(map(str, pts))}",
        f"a=rtpmap:{codec} {_CODECS[codec]}",
    ]
    if dtmf is not None:
        lines += [f"a=rtpmap:{dtmf} telephone-event/8000", f"a=fmtp:{dtmf} 0-16"]
    lines += ["a=ptime:20", "a=sendrecv"]
    return ("\r\n".join(lines) + "\r\n").encode()


async def _echo(sock: trio.socket.SocketType, counts: list[int]) -> None:
    while True:
        try:
            data, addr = await sock.recvfrom(2048)
        except OSError:
            continue
        # RTP/RTCP version 2 only (RFC 3550 §5.1); anything else is dropped.
        if len(data) < 8 or data[0] & 0xC0 != 0x80:
            counts[1] += 1
            continue
        try:
            await sock.sendto(data, addr)
            counts[0] += 1
        except OSError:
            counts[1] += 1


async def _bind_pair(host: str) -> tuple[trio.socket.SocketType, trio.socket.SocketType | None]:
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    for _ in range(10):
        rtp = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
        await rtp.bind((host, 0))
        rtcp = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
        try:
            await rtcp.bind((host, rtp.getsockname()[1] + 1))  # RFC 3550 §11: RTCP on port + 1
        except OSError:
            rtcp.close()
            rtp.close()
            continue
        return rtp, rtcp
    rtp = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
    await rtp.bind((host, 0))
    return rtp, None


async def run_echo_extension(
    number: str = "600",
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_call_seconds: float = 3600.0,
    task_status: trio.TaskStatus[EchoExtension] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the echo extension until cancelled; reports an `EchoExtension` once listening."""

    async def on_invite(call: IncomingCall) -> None:
        if call.user != number:
            await call.reject(404)
            return
        rtp, rtcp = await _bind_pair(host)
        counts = [0, 0]
        with rtp:
            sdp = answer_sdp(
                call.offer, host=host, port=rtp.getsockname()[1], session_id=rtp.getsockname()[1]
            )
            if sdp is None:
                if rtcp is not None:
                    rtcp.close()
                await call.reject(488)
                return
            await call.answer(sdp)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_echo, rtp, counts)
                if rtcp is not None:
                    nursery.start_soon(_echo, rtcp, counts)
                with trio.move_on_after(max_call_seconds):
                    await call.ended.wait()
                nursery.cancel_scope.cancel()
            if rtcp is not None:
                rtcp.close()
        log.info("echo call %s ended: %d packets echoed, %d dropped", call.call_id, counts[0], counts[1])

    transport = SipTransport(host, port)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        ua = SipUA(transport, user_agent="mccp-bridge echo", on_invite=on_invite)
        await nursery.start(ua.run)
        info = EchoExtension(number, Address(host, transport.port, Transport.UDP))
        log.info("echo extension %s at %s", number, info.uri)
        task_status.started(info)
