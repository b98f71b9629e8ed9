"""The phone side of the benchmark's calls: a small SIP UAS registered to the bridge's registrar.

One UDP socket for SIP: a third-party REGISTER with digest (RFC 3261 §22, RFC 2617 MD5 qop=auth)
puts this port behind the extension; every INVITE the bridge sends is answered 200 OK at once with
an RTP/AVP PCMU answer pointing at ONE shared phone RTP port (the blaster's); ACK is absorbed, BYE
answered 200, and a retransmitted INVITE gets the same 200 again. Each INVITE's o= session id (the
bridge uses its browser answer's) and the bridge's SIP-side RTP port are reported to the harness.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field

import trio


@dataclass
class SipLeg:
    """What the harness learns from one INVITE."""

    call_id: str
    session_id: str
    bridge_rtp_port: int
    invite_at: float
    answered_at: float = 0.0
    bye_at: float | None = None


def _headers(text: str) -> tuple[str, list[tuple[str, str]], str]:
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return lines[0], headers, body


COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length"}


def _get(headers: list[tuple[str, str]], name: str) -> list[str]:
    name = name.lower()
    return [v for n, v in headers if COMPACT.get(n.lower(), n.lower()) == name]


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


@dataclass
class Phone:
    """The UAS; `legs` maps the bridge's o= session id to the call's SIP leg."""

    sock: trio.socket.SocketType
    rtp_port: int
    user: str
    legs: dict[str, SipLeg] = field(default_factory=dict)
    by_call_id: dict[str, SipLeg] = field(default_factory=dict)
    arrived: trio.Event = field(default_factory=trio.Event)
    answers: dict[str, bytes] = field(default_factory=dict)
    invites: int = 0
    byes: int = 0
    serving: bool = False  # `serve` reads the socket: `register` then waits for its response there
    _waiting: dict[str, list[str]] = field(default_factory=dict)
    _answered: trio.Event = field(default_factory=trio.Event)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @classmethod
    async def open(cls, rtp_port: int, user: str) -> Phone:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        return cls(sock, rtp_port, user)

    async def register(self, bridge: tuple[str, int], password: str, expires: int = 3600) -> None:
        """REGISTER with digest; raises RuntimeError unless the bridge answers 200."""
        call_id = os.urandom(8).hex()
        uri = f"sip:{bridge[0]}:{bridge[1]}"
        authorization = ""
        for cseq in (1, 2):
            request = (
                f"REGISTER {uri} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};rport;branch=z9hG4bK{os.urandom(6).hex()}\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:{self.user}@{bridge[0]}>;tag={os.urandom(4).hex()}\r\n"
                f"To: <sip:{self.user}@{bridge[0]}>\r\n"
                f"Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n"
                f"Contact: <sip:{self.user}@127.0.0.1:{self.port}>\r\nExpires: {expires}\r\n"
                f"{authorization}Content-Length: 0\r\n\r\n"
            )
            await self.sock.sendto(request.encode(), bridge)
            with trio.fail_after(5):
                if self.serving:  # a refresh while `serve` owns the socket: it hands the answer over
                    self._waiting[call_id] = []
                    try:
                        while not self._waiting[call_id]:
                            await self._answered.wait()
                        status, headers, _ = _headers(self._waiting[call_id][0])
                    finally:
                        del self._waiting[call_id]
                else:
                    while True:
                        data, _ = await self.sock.recvfrom(65535)
                        status, headers, _ = _headers(data.decode("utf-8", "replace"))
                        if status.startswith("SIP/2.0") and call_id in _get(headers, "call-id"):
                            break
            code = int(status.split()[1])
            if code == 200:
                return
            if code != 401 or cseq == 2:
                raise RuntimeError(f"REGISTER answered {status}")
            challenge = _get(headers, "www-authenticate")[0]
            params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge))
            realm, nonce = params["realm"], params["nonce"]
            ha1 = _md5(f"{self.user}:{realm}:{password}")
            ha2 = _md5(f"REGISTER:{uri}")
            cnonce, nc = os.urandom(4).hex(), "00000001"
            response = _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
            authorization = (
                f'Authorization: Digest username="{self.user}", realm="{realm}", nonce="{nonce}", '
                f'uri="{uri}", response="{response}", algorithm=MD5, qop=auth, nc={nc}, cnonce="{cnonce}"'
                + (f', opaque="{params["opaque"]}"' if "opaque" in params else "")
                + "\r\n"
            )

    def _response(self, headers: list[tuple[str, str]], code: str, to_tag: str, body: str = "") -> bytes:
        lines = [f"SIP/2.0 {code}"]
        lines += [f"Via: {v}" for v in _get(headers, "via")]
        lines.append(f"From: {_get(headers, 'from')[0]}")
        to = _get(headers, "to")[0]
        if ";tag=" not in to and to_tag:
            to += f";tag={to_tag}"
        lines.append(f"To: {to}")
        lines.append(f"Call-ID: {_get(headers, 'call-id')[0]}")
        lines.append(f"CSeq: {_get(headers, 'cseq')[0]}")
        if body:
            lines.append(f"Contact: <sip:{self.user}@127.0.0.1:{self.port}>")
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body.encode())}")
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()

    def _answer_sdp(self) -> str:
        return (
            f"v=0\r\no=phone {int.from_bytes(os.urandom(3), 'big')} 1 IN IP4 127.0.0.1\r\ns=-\r\n"
            f"c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {self.rtp_port} RTP/AVP 0\r\n"
            "a=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n"
        )

    async def serve(self) -> None:
        """Answer the bridge's requests until cancelled (responses go to a waiting `register`)."""
        self.serving = True
        try:
            await self._serve()
        finally:
            self.serving = False

    async def _serve(self) -> None:
        while True:
            data, src = await self.sock.recvfrom(65535)
            text = data.decode("utf-8", "replace")
            start, headers, body = _headers(text)
            method = start.split(" ", 1)[0]
            call_ids = _get(headers, "call-id")
            if call_ids and start.startswith("SIP/2.0") and call_ids[0] in self._waiting:
                self._waiting[call_ids[0]].append(text)
                self._answered.set()
                self._answered = trio.Event()
            if not call_ids or start.startswith("SIP/2.0"):
                continue
            call_id = call_ids[0]
            now = trio.current_time()
            if method == "INVITE":
                cached = self.answers.get(call_id)
                if cached is None:
                    self.invites += 1
                    port = re.search(r"^m=audio (\d+) ", body, re.MULTILINE)
                    sid = re.search(r"^o=\S+ (\d+) ", body, re.MULTILINE)
                    leg = SipLeg(call_id, sid.group(1) if sid else "", int(port.group(1)) if port else 0, now)
                    cached = self._response(headers, "200 OK", os.urandom(4).hex(), self._answer_sdp())
                    self.answers[call_id] = cached
                    leg.answered_at = trio.current_time()
                    self.legs[leg.session_id] = leg
                    self.by_call_id[call_id] = leg
                    self.arrived.set()
                    self.arrived = trio.Event()
                await self.sock.sendto(cached, src)
            elif method == "BYE":
                self.byes += 1
                leg_or_none = self.by_call_id.get(call_id)
                if leg_or_none is not None:
                    leg_or_none.bye_at = now
                await self.sock.sendto(self._response(headers, "200 OK", ""), src)
            elif method in ("OPTIONS", "INFO", "CANCEL"):
                await self.sock.sendto(self._response(headers, "200 OK", ""), src)
            elif method == "ACK":
                continue
            else:
                await self.sock.sendto(self._response(headers, "501 Not Implemented", ""), src)

    async def wait_leg(self, session_id: str, timeout: float = 30.0) -> SipLeg:
        with trio.fail_after(timeout):
            while session_id not in self.legs:
                await self.arrived.wait()
        return self.legs[session_id]
