"""Setting up N calls on each relay, the way each is really driven.

* Bridge: every call goes through its real signalling. The page side (bench.browser_leg) sends an
  MCCP `call` over WSS with a browser-like offer, does the ICE check and the DTLS handshake; the bridge
  authenticates the caller, routes the number to the phone registered to its embedded registrar, and
  sends an INVITE that bench.phone_leg answers. The call's o= session id pairs the two legs.
* rtpengine: ng `offer` (SDES AEAD_AES_128_GCM, the suite the bridge's DTLS-SRTP negotiates with
  browsers) and `answer` (plain RTP/AVP), as the perf recipe does; `delete` at the end.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

import trio
from bench.blaster import Flow
from bench.browser_leg import BrowserCall, BrowserSocket, CallFailed, run_call
from bench.ng import NgClient
from bench.phone_leg import Phone, SipLeg
from bench.processes import CALLER, CALLER_PASSWORD, PHONE
from bench.srtp_kdf import session_keys
from rtp.srtp import SrtpProfile


@dataclass
class SetupRecord:
    """One call's set-up milestones, in ms after the MCCP `call` was sent."""

    ok: bool
    error: str = ""
    progress_ms: float | None = None
    invite_ms: float | None = None
    answer_ms: float | None = None
    dtls_ms: float | None = None
    total_ms: float | None = None  # answered and DTLS connected: media can flow both ways


@dataclass
class CallSet:
    flows: list[Flow] = field(default_factory=list)
    records: list[SetupRecord] = field(default_factory=list)
    calls: list[BrowserCall] = field(default_factory=list)
    legs: list[SipLeg] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.records if not r.ok)


def _ms(t: float | None, t0: float) -> float | None:
    return None if t is None else round((t - t0) * 1000, 3)


async def bridge_call(
    nursery: trio.Nursery, wss_port: int, bsock: BrowserSocket, phone: Phone, i: int
) -> tuple[SetupRecord, BrowserCall | None, SipLeg | None]:
    """Set up call number `i` through the bridge, held in `nursery` until its `hangup` is set;
    on failure the record says why and no call is returned."""
    call = BrowserCall(i, ssrc=int.from_bytes(os.urandom(4), "big"))
    try:
        await nursery.start(run_call, bsock, call, wss_port, CALLER, CALLER_PASSWORD, PHONE)
        leg = await phone.wait_leg(call.session_id, timeout=5)
    except (CallFailed, trio.TooSlowError) as exc:
        call.hangup.set()
        return SetupRecord(False, str(exc) or type(exc).__name__), None, None
    t0 = call.timings.sent_call
    done = max(t for t in (call.timings.answer, call.timings.dtls_done) if t is not None)
    record = SetupRecord(
        True,
        progress_ms=_ms(call.timings.progress, t0),
        invite_ms=_ms(leg.invite_at, t0),
        answer_ms=_ms(call.timings.answer, t0),
        dtls_ms=_ms(call.timings.dtls_done, t0),
        total_ms=_ms(done, t0),
    )
    return record, call, leg


@asynccontextmanager
async def bridge_calls(
    wss_port: int, bsock: BrowserSocket, phone: Phone, n: int, *, concurrency: int = 16
) -> AsyncIterator[CallSet]:
    """Set up `n` calls through the bridge (at most `concurrency` at a time); hang up on exit."""
    result = CallSet()
    limiter = trio.Semaphore(concurrency)
    async with trio.open_nursery() as nursery:

        async def one(i: int) -> None:
            async with limiter:
                record, call, leg = await bridge_call(nursery, wss_port, bsock, phone, i)
            result.records.append(record)
            if call is None or leg is None:
                return
            assert call.profile is not None
            result.calls.append(call)
            result.legs.append(leg)
            result.flows.append(
                Flow(
                    call.bridge_port,
                    leg.bridge_rtp_port,
                    call.ssrc,
                    int.from_bytes(os.urandom(4), "big"),
                    session_keys(call.profile, call.tx_key),
                    session_keys(call.profile, call.rx_key),
                    browser_src=call.local_ip if bsock.spread else None,
                )
            )

        async with trio.open_nursery() as setup:
            for i in range(n):
                setup.start_soon(one, i)
        try:
            yield result
        finally:
            for call in result.calls:
                call.hangup.set()
            with trio.move_on_after(15, shield=True):
                for call in result.calls:
                    await call.ended.wait()
            nursery.cancel_scope.cancel()


SDP_HEAD = "v=0\r\no=- {sid} 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
GCM = SrtpProfile.AEAD_AES_128_GCM


@asynccontextmanager
async def rtpengine_calls(ng_port: int, browser_port: int, phone_port: int, n: int) -> AsyncIterator[CallSet]:
    """Create `n` rtpengine calls (SDES-SRTP caller leg, plain callee leg); delete them on exit."""
    ng = NgClient(ng_port)
    result = CallSet()
    ids: list[str] = []
    try:
        for _ in range(n):
            call_id = f"bench-{os.urandom(6).hex()}"
            key = os.urandom(GCM.key_length + GCM.salt_length)
            offer = SDP_HEAD.format(sid=1) + (
                f"m=audio {browser_port} RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
                f"a=crypto:1 AEAD_AES_128_GCM inline:{base64.b64encode(key).decode()}\r\na=sendrecv\r\n"
            )
            t0 = trio.current_time()
            reply = await ng.cmd(
                {
                    "command": "offer",
                    "call-id": call_id,
                    "from-tag": "caller",
                    "sdp": offer,
                    "ICE": "remove",
                    "transport-protocol": "RTP/AVP",
                }
            )
            if reply.get("result") != "ok":
                result.records.append(SetupRecord(False, f"offer: {reply}"))
                continue
            ids.append(call_id)
            callee_port = int(re.findall(r"^m=audio (\d+)", str(reply["sdp"]), re.MULTILINE)[0])
            answer = SDP_HEAD.format(sid=2) + (
                f"m=audio {phone_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
            )
            reply = await ng.cmd(
                {
                    "command": "answer",
                    "call-id": call_id,
                    "from-tag": "caller",
                    "to-tag": "callee",
                    "sdp": answer,
                }
            )
            sdp = str(reply.get("sdp", ""))
            crypto = re.search(r"^a=crypto:\d+ AEAD_AES_128_GCM inline:([^|\s]+)", sdp, re.MULTILINE)
            port = re.search(r"^m=audio (\d+) RTP/SAVP", sdp, re.MULTILINE)
            if reply.get("result") != "ok" or crypto is None or port is None:
                result.records.append(SetupRecord(False, f"answer: {reply}"))
                continue
            rx_key = base64.b64decode(crypto.group(1) + "==")
            total = round((trio.current_time() - t0) * 1000, 3)
            result.records.append(SetupRecord(True, answer_ms=total, total_ms=total))
            result.flows.append(
                Flow(
                    int(port.group(1)),
                    callee_port,
                    int.from_bytes(os.urandom(4), "big"),
                    int.from_bytes(os.urandom(4), "big"),
                    session_keys(GCM, key),
                    session_keys(GCM, rx_key[: GCM.key_length + GCM.salt_length]),
                )
            )
        yield result
    finally:
        with trio.CancelScope(shield=True):
            for call_id in ids:
                with suppress(trio.TooSlowError, OSError):
                    await ng.cmd({"command": "delete", "call-id": call_id, "from-tag": "caller"})
        ng.close()
