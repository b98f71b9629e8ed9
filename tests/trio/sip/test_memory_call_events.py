"""`sip.calls.CallEvents`, the queue of a call's events (issue 6's memory diet: no trio memory
channel per call): order, the end, a cancelled receive, the cap and the one reader."""

from __future__ import annotations

import pytest
import trio.testing

import trio
from sip.calls import EVENTS_MAX, Answered, CallEvents, Ended, Ringing, Trying

pytestmark = pytest.mark.timeout(10)


async def test_events_come_in_order_then_the_end() -> None:
    events = CallEvents()
    assert events.put(Trying())
    assert events.put(Ringing(180, "Ringing"))
    got = []
    async with trio.open_nursery() as nursery:

        async def read() -> None:
            got.extend([e async for e in events])

        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # the reader took both and waits for more
        assert events.put(Answered(b"v=0\r\n"))
        events.put(Ended(200, "Hangup", "local"))
        events.close()
    assert got == [Trying(), Ringing(180, "Ringing"), Answered(b"v=0\r\n"), Ended(200, "Hangup", "local")]
    assert not events.put(Trying())  # closed: dropped
    with pytest.raises(trio.EndOfChannel):
        await events.receive()


async def test_a_cancelled_receive_loses_nothing() -> None:
    events = CallEvents()
    with trio.move_on_after(0.01):
        await events.receive()
    events.put(Ringing(180, "Ringing"))
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await events.receive()  # cancelled before it takes the event
    assert await events.receive() == Ringing(180, "Ringing")


async def test_the_cap_drops_and_one_reader_only() -> None:
    events = CallEvents()
    assert all(events.put(Trying()) for _ in range(EVENTS_MAX))
    assert not events.put(Ringing(180, "Ringing"))
    empty = CallEvents()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(empty.receive)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await empty.receive()
        empty.put(Ringing(180, "Ringing"))
