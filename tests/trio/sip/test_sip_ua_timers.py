"""sip.ua against a scripted peer on loopback under `autojump_clock`: retransmissions, timers,
CANCEL, digest retry, in-dialog requests from the far end, and bad input."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio.testing

import trio
from sip.calls import Answered, CallEvent, Ended, InfoReceived, OutgoingCall, ReOffer, Ringing, Trying
from sip.message import Request, Response, make_response
from sip.parser import parse_datagram_untrusted
from sip.transport import SipTransport
from sip.ua import SipUA

SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


class Peer:
    """A scripted SIP peer: one UDP socket, messages parsed with the core parser, a log of arrivals."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.ua_addr: tuple[str, int] | None = None

    async def recv(self) -> tuple[Request | Response, float]:
        data, addr = await self.sock.recvfrom(65535)
        self.ua_addr = addr
        msg = parse_datagram_untrusted(data)
        assert isinstance(msg, Request | Response)
        return msg, trio.current_time()

    async def recv_request(self, method: str) -> Request:
        while True:
            msg, _ = await self.recv()
            if isinstance(msg, Request) and msg.method == method:
                return msg

    async def send(self, msg: Request | Response | bytes) -> None:
        assert self.ua_addr is not None
        await self.sock.sendto(bytes(msg), self.ua_addr)

    async def reply(self, request: Request, status: int, **kw: object) -> Response:
        kw.setdefault("to_tag", "peer1")
        kw.setdefault("contact", None)
        response = make_response(request, status, **kw)  # type: ignore[arg-type]
        if status < 300 and status > 100 and "Contact" not in response.headers:
            response = Response(
                response.status,
                response.reason,
                response.headers.add("Contact", f"<sip:peer@127.0.0.1:{self.port}>"),
                response.body,
            )
        await self.send(response)
        return response


@asynccontextmanager
async def setup(**ua_kw: object) -> AsyncIterator[tuple[SipUA, Peer]]:
    async with trio.open_nursery() as nursery:
        transport = SipTransport("127.0.0.1", 0)
        await nursery.start(transport.run)
        ua = SipUA(transport, **ua_kw)  # type: ignore[arg-type]
        await nursery.start(ua.run)
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        with sock:
            yield ua, Peer(sock)
        nursery.cancel_scope.cancel()


async def events_until(call: OutgoingCall, *kinds: type) -> list[CallEvent]:
    seen: list[CallEvent] = []
    async for event in call.events:
        seen.append(event)
        if isinstance(event, (*kinds, Ended)):
            break
    return seen


def target(peer: Peer) -> str:
    return f"sip:600@127.0.0.1:{peer.port}"


async def test_invite_retransmitted_on_timer_a_then_timer_b_408(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with setup() as (ua, peer):
        async with ua.call(target(peer), caller="100", sdp=SDP) as call:
            t0 = trio.current_time()
            times = []
            with trio.move_on_after(40):
                while True:
                    msg, t = await peer.recv()
                    assert isinstance(msg, Request)
                    assert msg.method == "INVITE"
                    times.append(round(t - t0, 3))
            seen = [e async for e in call.events]
        # RFC 3261 §17.1.1.2: A = T1, doubling; B = 64*T1 = 32 s.
        assert times == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
        assert seen == [Ended(408, "Request Timeout", "timeout")]


async def test_provisional_stops_retransmission_final_is_acked_and_reacked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with setup() as (ua, peer), ua.call(target(peer), caller="100", sdp=SDP) as call:
        invite = await peer.recv_request("INVITE")
        await peer.reply(invite, 100)
        await peer.reply(invite, 180)
        assert await events_until(call, Ringing) == [Trying(), Ringing(180, "Ringing")]
        with trio.move_on_after(60):  # no retransmission once Proceeding (Timer B does not run)
            msg, _ = await peer.recv()
            pytest.fail(f"unexpected {msg}")
        busy = await peer.reply(invite, 486)
        ack = await peer.recv_request("ACK")
        # §17.1.1.3: the ACK for a non-2xx has the INVITE's branch and the response's To.
        assert ack.top_via.branch == invite.top_via.branch
        assert ack.to.tag == "peer1"
        assert ack.cseq.seq == invite.cseq.seq
        await peer.send(busy)  # a retransmitted 486: ACKed again (Timer D)
        again = await peer.recv_request("ACK")
        assert bytes(again) == bytes(ack)
        assert [e async for e in call.events] == [Ended(486, "Busy Here", "remote")]


async def test_2xx_acked_via_contact_bye_retransmitted_on_timer_e(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with setup() as (ua, peer), ua.call(target(peer), caller="100", sdp=SDP) as call:
        invite = await peer.recv_request("INVITE")
        ok = await peer.reply(invite, 200, body=SDP, content_type="application/sdp")
        ack = await peer.recv_request("ACK")
        assert str(ack.uri) == f"sip:peer@127.0.0.1:{peer.port}"  # the remote target
        assert ack.top_via.branch != invite.top_via.branch  # §13.2.2.4: a new transaction
        assert await events_until(call, Answered) == [Answered(SDP)]
        await peer.send(ok)  # retransmitted 2xx: the same ACK again
        assert bytes(await peer.recv_request("ACK")) == bytes(ack)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call.hangup)
            t0 = trio.current_time()
            times = []
            for _ in range(4):
                bye = await peer.recv_request("BYE")
                times.append(round(trio.current_time() - t0, 3))
            await peer.reply(bye, 200)
        assert times == [0.0, 0.5, 1.5, 3.5]  # Timer E: T1, 2T1, 4T1 ... capped at T2
        assert bye.cseq.seq == invite.cseq.seq + 1
        assert [e async for e in call.events] == [Ended(200, "Hangup", "local")]


async def test_cancel_waits_for_provisional_then_487(autojump_clock: trio.testing.MockClock) -> None:
    async with setup() as (ua, peer):
        async with ua.call(target(peer), caller="100", sdp=SDP) as call:
            invite = await peer.recv_request("INVITE")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call.hangup)
                await trio.sleep(0.2)
                await peer.reply(invite, 180)  # §9.1: CANCEL only after a provisional response
                cancel = await peer.recv_request("CANCEL")
                assert cancel.top_via.branch == invite.top_via.branch
                assert str(cancel.uri) == str(invite.uri)
                assert cancel.cseq.seq == invite.cseq.seq
                await peer.reply(cancel, 200)
                await peer.reply(invite, 487)
                await peer.recv_request("ACK")
            seen = [e async for e in call.events]
        assert seen == [Ringing(180, "Ringing"), Ended(487, "Request Terminated", "local")]


def _digest_fields(value: str) -> dict[str, str]:
    return {m[1]: m[2] or m[3] for m in re.finditer(r'(\w+)=(?:"([^"]*)"|([^,\s]+))', value)}


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
async def test_digest_retry_once_then_second_challenge_is_403(
    autojump_clock: trio.testing.MockClock, algorithm: str
) -> None:
    async with setup() as (ua, peer):
        async with ua.call(target(peer), caller="100", sdp=SDP, credentials=("100", "secret")) as call:
            first = await peer.recv_request("INVITE")
            challenge = (
                f'Digest realm="r", nonce="n1", qop="auth,auth-int", algorithm={algorithm}, opaque="o"'
            )
            await peer.reply(first, 407, headers=[("Proxy-Authenticate", challenge)])
            await peer.recv_request("ACK")
            second = await peer.recv_request("INVITE")
            assert second.cseq.seq == first.cseq.seq + 1
            assert second.call_id == first.call_id
            fields = _digest_fields(second.headers.get("Proxy-Authorization") or "")
            h = hashlib.md5 if algorithm == "MD5" else hashlib.sha256
            ha1 = h(b"100:r:secret").hexdigest()
            ha2 = h(f"INVITE:{fields['uri']}".encode()).hexdigest()
            expected = h(f"{ha1}:n1:{fields['nc']}:{fields['cnonce']}:auth:{ha2}".encode()).hexdigest()
            assert fields["response"] == expected
            assert (fields["qop"], fields["opaque"], fields["uri"]) == ("auth", "o", target(peer))
            await peer.reply(second, 407, headers=[("Proxy-Authenticate", challenge.replace("n1", "n2"))])
            await peer.recv_request("ACK")
            seen = [e async for e in call.events]
        assert seen[-1].code == 403  # type: ignore[union-attr]


async def test_far_end_bye_info_reinvite_and_retransmitted_bye(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with setup() as (ua, peer), ua.call(target(peer), caller="100", sdp=SDP) as call:
        invite = await peer.recv_request("INVITE")
        ok = await peer.reply(invite, 200, body=SDP, content_type="application/sdp")
        await peer.recv_request("ACK")
        await events_until(call, Answered)
        contact = re.search(r"<([^>]+)>", invite.headers.get("Contact") or "")
        assert contact is not None
        from_, to = ok.headers.get("To") or "", ok.headers.get("From") or ""

        def request(method: str, cseq: int, branch: str, body: bytes = b"", ctype: str = "") -> bytes:
            extra = f"Content-Type: {ctype}\r\n" if ctype else ""
            return (
                f"{method} {contact[1]} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{peer.port};branch=z9hG4bK{branch}\r\n"
                f"From: {from_}\r\nTo: {to}\r\nCall-ID: {invite.call_id}\r\nCSeq: {cseq} {method}\r\n"
                f"Max-Forwards: 70\r\nContact: <sip:peer@127.0.0.1:{peer.port}>\r\n{extra}"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body

        await peer.send(request("INFO", 10, "i1", b"Signal=5\r\nDuration=160\r\n", "application/dtmf-relay"))
        msg, _ = await peer.recv()
        assert isinstance(msg, Response)
        assert msg.status == 200
        assert await call.events.receive() == InfoReceived(
            b"Signal=5\r\nDuration=160\r\n", "application/dtmf-relay"
        )
        new_sdp = SDP.replace(b"4000", b"4002")
        await peer.send(request("INVITE", 11, "r1", new_sdp, "application/sdp"))
        assert (await peer.recv())[0].status == 100  # type: ignore[union-attr]
        assert await call.events.receive() == ReOffer(new_sdp)
        await peer.send(request("INVITE", 12, "r2", new_sdp, "application/sdp"))
        assert (await peer.recv())[0].status == 100  # type: ignore[union-attr]
        # §14.2: a second INVITE while the first is unanswered gets 500 with Retry-After.
        refusal, _ = await peer.recv()
        assert isinstance(refusal, Response)
        assert refusal.status == 500
        assert refusal.headers.get("Retry-After") is not None
        await peer.send(request("ACK", 12, "r2"))  # the ACK for the 500 stops Timer G
        await call.accept_reoffer(SDP)
        answer, t_first = await peer.recv()
        assert isinstance(answer, Response)
        assert (answer.status, answer.body) == (200, SDP)
        again, t_again = await peer.recv()  # retransmitted until ACKed (§13.3.1.4)
        assert bytes(again) == bytes(answer)
        assert round(t_again - t_first, 3) == 0.5
        await peer.send(request("ACK", 11, "a1"))
        with trio.move_on_after(10):
            msg, _ = await peer.recv()
            pytest.fail(f"still retransmitting: {msg}")
        bye = request("BYE", 13, "b1")
        await peer.send(bye)
        assert (await peer.recv())[0].status == 200  # type: ignore[union-attr]
        await peer.send(bye)  # retransmission: answered again from the cache, one Ended only
        assert (await peer.recv())[0].status == 200  # type: ignore[union-attr]
        assert [e async for e in call.events] == [Ended(200, "Remote hangup", "remote")]


async def test_send_info_returns_status_and_bad_input_is_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with setup() as (ua, peer), ua.call(target(peer), caller="100", sdp=SDP) as call:
        invite = await peer.recv_request("INVITE")
        await peer.reply(invite, 200, body=SDP, content_type="application/sdp")
        await peer.recv_request("ACK")
        await events_until(call, Answered)
        await peer.send(b"\x00\x01garbage\r\n\r\n")
        await peer.send(
            b"SIP/2.0 200 OK\r\n" + bytes(invite).split(b"\r\n", 1)[1].replace(b"z9hG4bK", b"z9hG4bKx")
        )
        async with trio.open_nursery() as nursery:

            async def answer_info() -> None:
                info = await peer.recv_request("INFO")
                assert info.body == b"Signal=1\r\n"
                await peer.reply(info, 415)

            nursery.start_soon(answer_info)
            assert await call.send_info(b"Signal=1\r\n", "application/dtmf-relay") == 415
        assert ua.transport.stats.bad_datagrams == 1
        assert ua.stats["stray_responses"] == 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call.hangup)
            bye = await peer.recv_request("BYE")
            await peer.reply(bye, 200)


async def test_register_sha256_challenge_and_stale_nonce(autojump_clock: trio.testing.MockClock) -> None:
    from sip.auth import DigestClient, challenges
    from sip.registrar import Registrar

    def ha1_lookup(user: str, realm: str, algorithm: str) -> str | None:
        h = hashlib.sha256 if algorithm == "SHA-256" else hashlib.md5
        return h(f"{user}:{realm}:pw".encode()).hexdigest() if user == "101" else None

    async with setup(
        registrar=Registrar(), ha1_lookup=ha1_lookup, challenge_algorithms=("SHA-256", "MD5")
    ) as (ua, peer):
        peer.ua_addr = ("127.0.0.1", ua.transport.port)

        def register(cseq: int, auth: str = "") -> bytes:
            return (
                "REGISTER sip:127.0.0.1 SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{peer.port};branch=z9hG4bKr{cseq}\r\n"
                f"From: <sip:101@127.0.0.1>;tag=a\r\nTo: <sip:101@127.0.0.1>\r\nCall-ID: reg1\r\n"
                f"CSeq: {cseq} REGISTER\r\nContact: <sip:101@127.0.0.1:7000>\r\nExpires: 60\r\n{auth}"
                "Content-Length: 0\r\n\r\n"
            ).encode()

        await peer.send(register(1))
        challenge_response, _ = await peer.recv()
        assert isinstance(challenge_response, Response)
        assert challenge_response.status == 401
        offered = challenges(challenge_response)
        assert [c.algorithm for c in offered] == ["SHA-256", "MD5"]
        creds = DigestClient("101", "pw").authorize(offered[0], "REGISTER", "sip:127.0.0.1", cnonce="c0ffee")
        await peer.send(register(2, f"Authorization: {creds}\r\n"))
        ok, _ = await peer.recv()
        assert isinstance(ok, Response)
        assert ok.status == 200
        assert ok.headers.get("Contact") == "<sip:101@127.0.0.1:7000>;expires=60"
        autojump_clock.jump(400)  # the nonce is now older than 300 s: stale=true, no 403
        creds = DigestClient("101", "pw").authorize(offered[0], "REGISTER", "sip:127.0.0.1", cnonce="c0ffee")
        await peer.send(register(3, f"Authorization: {creds}\r\n"))
        stale, _ = await peer.recv()
        assert isinstance(stale, Response)
        assert stale.status == 401
        assert all(c.stale for c in challenges(stale))
        assert ua.registrar is not None
        assert ua.registrar.lookup("101", trio.current_time()) == []  # the 60 s binding expired


async def test_unroutable_target_ends_503_and_fuzzed_input_never_kills_the_ua(
    autojump_clock: trio.testing.MockClock,
) -> None:
    import random

    async with setup() as (ua, peer):
        async with ua.call("sip:600@127.0.0.1;transport=sctp", caller="100", sdp=SDP) as call:
            assert [e async for e in call.events] == [Ended(503, "Service Unavailable", "local")]
        peer.ua_addr = ("127.0.0.1", ua.transport.port)
        options = (
            "OPTIONS sip:600@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{peer.port};branch=z9hG4bKo1\r\n"
            "From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:600@127.0.0.1>\r\nCall-ID: o1\r\nCSeq: 1 OPTIONS\r\n"
            "Contact: <sip:a@127.0.0.1>\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        rng = random.Random(1)
        seeds = [options, options.replace(b"OPTIONS", b"REGISTER"), options.replace(b"OPTIONS", b"INVITE")]
        seeds.append(b"SIP/2.0 200 OK\r\n" + options.split(b"\r\n", 1)[1])
        for i in range(300):
            data = bytearray(rng.choice(seeds).replace(b"z9hG4bKo1", f"z9hG4bKf{i}".encode()))
            for _ in range(rng.randint(1, 4)):
                pos = rng.randrange(len(data))
                match rng.randrange(3):
                    case 0:
                        data[pos] = rng.randrange(256)
                    case 1:
                        del data[pos : pos + rng.randint(1, 20)]
                    case _:
                        data[pos:pos] = rng.choice([b";", b",", b"<", b"\r\n", b" ", b"\x00", b"%", b'"'])
            await peer.send(bytes(data))
        while True:  # drain whatever the UA answered
            with trio.move_on_after(1) as idle:
                await peer.sock.recv(65535)
            if idle.cancelled_caught:
                break
        await peer.send(options.replace(b"z9hG4bKo1", b"z9hG4bKlast"))
        while True:  # (Timer G may still be retransmitting 403s to fuzzed INVITEs)
            answer, _ = await peer.recv()
            assert isinstance(answer, Response)
            if answer.top_via.branch == "z9hG4bKlast":
                break
        assert answer.status == 200
        assert ua.transport.stats.bad_datagrams > 0


async def test_upstream_mode_routes_to_proxy_and_warns_once_when_never_challenged(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with setup() as (ua, peer):
        ua.outbound_proxy = ("127.0.0.1", peer.port, "udp")
        for _ in range(2):
            async with ua.call(
                "sip:101@pbx.example", caller="100", sdp=SDP, credentials=("100", "pw")
            ) as call:
                invite = await peer.recv_request("INVITE")
                assert str(invite.uri) == "sip:101@pbx.example"
                assert invite.headers.get("Route") == f"<sip:127.0.0.1:{peer.port};lr>"
                await peer.reply(invite, 486)
                await peer.recv_request("ACK")
                assert [e async for e in call.events] == [Ended(486, "Busy Here", "remote")]
    warnings = [r for r in caplog.records if "without any digest challenge" in r.getMessage()]
    assert len(warnings) == 1


async def test_unanswered_reoffer_gets_487_when_the_far_end_hangs_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with setup() as (ua, peer), ua.call(target(peer), caller="100", sdp=SDP) as call:
        invite = await peer.recv_request("INVITE")
        ok = await peer.reply(invite, 200, body=SDP, content_type="application/sdp")
        await peer.recv_request("ACK")
        await events_until(call, Answered)
        contact = re.search(r"<([^>]+)>", invite.headers.get("Contact") or "")
        assert contact is not None
        common = (
            f"From: {ok.headers.get('To')}\r\nTo: {ok.headers.get('From')}\r\nCall-ID: {invite.call_id}\r\n"
            f"Max-Forwards: 70\r\nContact: <sip:peer@127.0.0.1:{peer.port}>\r\n"
        )
        via = f"Via: SIP/2.0/UDP 127.0.0.1:{peer.port};branch=z9hG4bK"
        await peer.send(
            f"INVITE {contact[1]} SIP/2.0\r\n{via}ri\r\n{common}CSeq: 5 INVITE\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n".encode()
            + SDP
        )
        assert await call.events.receive() == ReOffer(SDP)
        bye = f"BYE {contact[1]} SIP/2.0\r\n{via}bi\r\n{common}CSeq: 6 BYE\r\nContent-Length: 0\r\n\r\n"
        await peer.send(bye.encode())
        statuses = {}
        while len(statuses) < 2:
            msg, _ = await peer.recv()
            assert isinstance(msg, Response)
            statuses[msg.cseq.method] = msg.status if msg.status >= 200 else statuses.get(msg.cseq.method)
            statuses = {k: v for k, v in statuses.items() if v is not None}
        assert statuses == {"INVITE": 487, "BYE": 200}
        assert [e async for e in call.events] == [Ended(200, "Remote hangup", "remote")]
