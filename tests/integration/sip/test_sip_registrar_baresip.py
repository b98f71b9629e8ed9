"""The embedded registrar (REGISTER with digest in sip.ua) over the wire, and baresip registering
to it, then called by our UA with audio both ways."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from tests.integration.sip.conftest import (
    audio_sdp,
    dominant_frequency,
    rtp_packet,
    sdp_media_address,
    tone_samples,
    udp_socket,
    wav_samples,
    write_tone_wav,
)
from tests.support.sip_peers import Baresip, register_contact

import trio
from rtp.g711 import decode_ulaw, encode_ulaw
from sip.calls import Answered, Ended
from sip.registrar import Registrar
from sip.transport import SipTransport
from sip.ua import SipUA

pytestmark = [pytest.mark.peers, pytest.mark.timeout(40)]
USERS = {"100": "pass100", "101": "pass101"}


def ha1_lookup(user: str, realm: str, algorithm: str) -> str | None:
    password = USERS.get(user)
    if password is None:
        return None
    h = hashlib.md5 if algorithm == "MD5" else hashlib.sha256
    return h(f"{user}:{realm}:{password}".encode()).hexdigest()


@pytest.fixture
async def registrar_ua(nursery: trio.Nursery) -> SipUA:
    transport = SipTransport("127.0.0.1", 0)
    await nursery.start(transport.run)
    agent = SipUA(transport, registrar=Registrar(known=USERS.__contains__), ha1_lookup=ha1_lookup)
    await nursery.start(agent.run)
    return agent


async def _register(ua: SipUA, user: str, password: str, contact: str, expires: int = 600) -> int:
    addr = ("127.0.0.1", ua.transport.port)
    return await trio.to_thread.run_sync(
        lambda: register_contact(addr, user, password, contact, expires=expires)
    )


async def test_register_digest_bindings_and_unregister(registrar_ua: SipUA) -> None:
    ua = registrar_ua
    assert ua.registrar is not None
    with trio.fail_after(10):
        assert await _register(ua, "101", "pass101", "sip:101@127.0.0.1:7000") == 200
        assert await _register(ua, "101", "pass101", "sip:101@127.0.0.1:7002") == 200
        now = trio.current_time()
        assert sorted(ua.registrar.lookup("101", now)) == ["sip:101@127.0.0.1:7000", "sip:101@127.0.0.1:7002"]
        assert await _register(ua, "101", "wrong", "sip:101@127.0.0.1:7004") == 403
        assert await _register(ua, "999", "x", "sip:999@127.0.0.1:7004") == 403
        assert await _register(ua, "100", "pass100", "sip:101@127.0.0.1:7004") == 200
        assert await _register(ua, "101", "pass101", "sip:101@127.0.0.1:7000", expires=0) == 200
        assert await _register(ua, "101", "pass101", "sip:101@127.0.0.1:7002", expires=3) == 423
        now = trio.current_time()
        assert ua.registrar.lookup("101", now) == ["sip:101@127.0.0.1:7002"]
        assert ua.registrar.resolve("555", now) == (404, [])
        assert ua.registrar.resolve("100", now)[0] == 200


async def test_initial_invite_from_outside_is_refused(registrar_ua: SipUA, nursery: trio.Nursery) -> None:
    # The bridge is not an open relay: another UA calling into it gets 403.
    caller_transport = SipTransport("127.0.0.1", 0)
    await nursery.start(caller_transport.run)
    caller = SipUA(caller_transport)
    await nursery.start(caller.run)
    with trio.fail_after(10):
        target = f"sip:101@127.0.0.1:{registrar_ua.transport.port}"
        async with caller.call(target, caller="x", sdp=audio_sdp(4000)) as call:
            seen = [e async for e in call.events]
        assert seen[-1] == Ended(403, "Forbidden", "remote")


async def test_baresip_registers_and_is_called_with_audio_both_ways(
    registrar_ua: SipUA, tmp_path: Path
) -> None:
    ua = registrar_ua
    assert ua.registrar is not None
    mic = write_tone_wav(tmp_path / "mic.wav", 1000.0, 20.0)
    phone = Baresip(tmp_path / "bs", mic, ext="101", password="pass101", registrar_port=ua.transport.port)
    await trio.to_thread.run_sync(phone.start)
    heard: list[int] = []
    try:
        with trio.fail_after(15):
            contacts = ua.registrar.lookup("101", trio.current_time())
            assert len(contacts) == 1, contacts
            assert "@127.0.0.1:5072" in contacts[0]
            rtp = await udp_socket()
            async with ua.call(
                contacts[0], caller="100", sdp=audio_sdp(rtp.getsockname()[1], pts=(0,))
            ) as call:
                event = None
                async for event in call.events:
                    if isinstance(event, Answered | Ended):
                        break
                assert isinstance(event, Answered), event
                host, port, pts = sdp_media_address(event.sdp)
                assert pts[0] == 0

                async def receive() -> None:
                    while True:
                        data = await rtp.recv(2048)
                        if len(data) > 12 and data[1] & 0x7F == 0:
                            heard.extend(decode_ulaw(data[12:]))

                async with trio.open_nursery() as media:
                    media.start_soon(receive)
                    for seq in range(100):  # 2 s of 440 Hz, 20 ms packets
                        payload = encode_ulaw(tone_samples(440.0, 160, start=seq * 160))
                        await rtp.sendto(rtp_packet(seq, payload=payload), (host, port))
                        await trio.sleep(0.02)
                    media.cancel_scope.cancel()
                await call.hangup()
            rtp.close()
    finally:
        await trio.to_thread.run_sync(phone.stop)
    freq, level = dominant_frequency(heard[4000:])
    assert abs(freq - 1000) < 50, (freq, level)
    assert level > -40
    recording = phone.received_wav()
    assert recording is not None
    freq, level = dominant_frequency(wav_samples(recording, skip_seconds=0.5)[:8000])
    assert abs(freq - 440) < 25, (freq, level)
    assert level > -40
