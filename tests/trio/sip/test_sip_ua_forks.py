"""A 2xx that no call wants (RFC 3261 §13.2.2.4): one from a second fork after the call was
answered, or one arriving after the call's context was left before any 1xx. Each is ACKed (its
own ACK, to its own Contact, with its To tag) and then BYEd; a retransmission of the answer we
kept still gets the kept dialog's ACK. A scripted peer on loopback under `autojump_clock`; every
test is bounded in virtual time (a missing message fails it instead of hanging)."""

from __future__ import annotations

import pytest
import trio.testing
from tests.trio.sip.test_sip_ua_timers import SDP, Peer, events_until, setup, target

import trio
from sip.calls import Answered, Ended, Ringing
from sip.message import Request


async def _next_non_invite(peer: Peer) -> Request:
    """The next request that is not a retransmitted INVITE."""
    while True:
        msg, _ = await peer.recv()
        if isinstance(msg, Request) and msg.method != "INVITE":
            return msg


async def _nothing_more(peer: Peer, seconds: float) -> None:
    with trio.move_on_after(seconds):
        msg, _ = await peer.recv()
        pytest.fail(f"unexpected {msg}")


async def test_second_fork_2xx_is_acked_then_byed(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with setup() as (ua, peer), ua.call(target(peer), caller="100", sdp=SDP) as call:
            invite = await peer.recv_request("INVITE")
            await peer.reply(invite, 180, to_tag="forkA")
            first = await peer.reply(invite, 200, to_tag="forkA", body=SDP, content_type="application/sdp")
            ack_a = await peer.recv_request("ACK")
            assert ack_a.to.tag == "forkA"
            assert await events_until(call, Answered) == [Ringing(180, "Ringing"), Answered(SDP)]
            # another UAS the request forked to answers too (another To tag, another Contact)
            fork_target = f"sip:fork2@127.0.0.1:{peer.port}"
            await peer.reply(
                invite, 200, to_tag="forkB", body=SDP, content_type="application/sdp",
                headers=[("Contact", f"<{fork_target}>")],
            )  # fmt: skip
            ack_b = await peer.recv_request("ACK")
            assert ack_b.to.tag == "forkB"
            assert str(ack_b.uri) == fork_target  # its own remote target
            assert ack_b.cseq.seq == invite.cseq.seq
            assert ack_b.top_via.branch != ack_a.top_via.branch
            bye = await peer.recv_request("BYE")
            assert (bye.to.tag, bye.from_.tag, bye.call_id) == ("forkB", invite.from_.tag, invite.call_id)
            assert str(bye.uri) == fork_target
            await peer.reply(bye, 200, to_tag="forkB")
            # the kept dialog: its 2xx retransmitted gets its own ACK again, and no BYE
            await peer.send(first)
            assert bytes(await peer.recv_request("ACK")) == bytes(ack_a)
            await _nothing_more(peer, 5)
            assert call.ended is None  # the call goes on with the first fork
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call.hangup)
                bye_a = await peer.recv_request("BYE")
                assert bye_a.to.tag == "forkA"
                await peer.reply(bye_a, 200, to_tag="forkA")


async def test_2xx_after_the_context_was_left_without_a_1xx(autojump_clock: trio.testing.MockClock) -> None:
    """No 1xx, so no CANCEL may be sent (§9.1): the hang-up waits the UA's grace and the call
    ends 408; the 200 that comes later is ACKed and BYEd, and its retransmission re-ACKed."""
    with trio.fail_after(60):
        async with setup(grace=2.0) as (ua, peer):
            async with ua.call(target(peer), caller="100", sdp=SDP) as call:
                invite = await peer.recv_request("INVITE")
            assert call.ended == Ended(408, "Request Timeout", "timeout")
            late = await peer.reply(invite, 200, to_tag="late", body=SDP, content_type="application/sdp")
            ack = await _next_non_invite(peer)
            assert ack.method == "ACK"
            assert (ack.to.tag, ack.cseq.seq) == ("late", invite.cseq.seq)
            bye = await peer.recv_request("BYE")
            assert (bye.to.tag, bye.call_id) == ("late", invite.call_id)
            await peer.send(late)  # the 200 again: the same ACK (§13.2.2.4), no second BYE
            assert bytes(await peer.recv_request("ACK")) == bytes(ack)
            await peer.reply(bye, 200, to_tag="late")
            await _nothing_more(peer, 10)


async def test_2xx_racing_the_cancel_is_acked_and_byed_once(autojump_clock: trio.testing.MockClock) -> None:
    """The call's own reader takes a 2xx that crosses the CANCEL (§15): one ACK and one BYE, not
    a second pair from the handling of unwanted 2xx."""
    seen: list[str] = []
    with trio.fail_after(60):
        async with setup() as (ua, peer):

            async def callee() -> None:
                invite = await peer.recv_request("INVITE")
                await peer.reply(invite, 180)
                cancel = await peer.recv_request("CANCEL")
                await peer.reply(invite, 200, body=SDP, content_type="application/sdp")
                await peer.reply(cancel, 200)
                seen.append((await peer.recv_request("ACK")).method)
                bye = await peer.recv_request("BYE")
                seen.append(bye.method)
                await peer.reply(bye, 200)
                await _nothing_more(peer, 10)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(callee)
                async with ua.call(target(peer), caller="100", sdp=SDP) as call:
                    assert await events_until(call, Ringing) == [Ringing(180, "Ringing")]
            assert seen == ["ACK", "BYE"]
            assert call.ended == Ended(487, "Request Terminated", "local")
