"""sip.layer.TransactionLayer deadlines: a heap instead of a scan, checked against the scan (issue 6)."""

from __future__ import annotations

import random

from sip.headers import NameAddr, Via
from sip.layer import RequestReceived, TransactionLayer
from sip.message import Request, make_request, make_response
from sip.transaction import Send, Terminated, TransactionKey
from sip.uri import Params, SipUri

DEST = ("127.0.0.1", 5070, "udp")


def request(method: str, branch: str) -> Request:
    return make_request(
        method,
        SipUri("127.0.0.1", "101"),
        call_id=f"call-{branch}",
        cseq=1,
        from_=NameAddr(SipUri("127.0.0.1", "100"), params=Params((("tag", "ft"),))),
        to=NameAddr(SipUri("127.0.0.1", "101")),
        via=Via("UDP", "127.0.0.1", 5090, Params((("branch", branch),))),
    )


def scanned(layer: TransactionLayer, keys: set[TransactionKey]) -> float | None:
    """The earliest deadline by scanning every live transaction (what the layer used to do)."""
    deadlines = [
        d for k in keys if (tx := layer.get(k)) is not None and (d := tx.next_deadline()) is not None
    ]
    return min(deadlines, default=None)


def test_next_deadline_matches_a_scan_through_random_traffic() -> None:
    rng = random.Random(6)
    layer = TransactionLayer()
    keys: set[TransactionKey] = set()
    servers: list[tuple[TransactionKey, Request]] = []
    now = 0.0
    for step in range(3000):
        now += rng.choice((0.0, 0.01, 0.1, 0.5, 2.0))
        roll = rng.random()
        if roll < 0.3:
            method = rng.choice(("INVITE", "OPTIONS", "BYE"))
            key, _ = layer.send_request(request(method, f"z9hG4bKc{step}"), DEST, now, reliable=False)
            keys.add(key)
        elif roll < 0.5:
            method = rng.choice(("INVITE", "INFO"))
            req = request(method, f"z9hG4bKs{step}")
            received = layer.receive(req, "peer", now, reliable=False)
            assert isinstance(received[0], RequestReceived)
            keys.add(received[0].key)
            servers.append((received[0].key, req))
        elif roll < 0.65 and servers:
            key, req = servers.pop(rng.randrange(len(servers)))
            if layer.get(key) is not None:
                layer.respond(key, make_response(req, rng.choice((200, 486)), to_tag="t"), now)
        elif roll < 0.75 and keys:
            key = rng.choice(sorted(keys, key=lambda k: k.branch))
            if not key.server and (tx := layer.get(key)) is not None:
                layer.receive(
                    make_response(tx.request, rng.choice((100, 180, 404))), "peer", now, reliable=False
                )
        else:
            fired = layer.handle_timeout(now)
            assert all(a.key in keys for a in fired if isinstance(a, Send | Terminated) and a.key)
            due = layer.next_deadline()
            assert due is None or due > now  # nothing due is left behind
        assert layer.next_deadline() == scanned(layer, keys)
        # stale entries are bounded by the live ones
        assert len(layer._heap) <= 2 * len(layer._scheduled) + 65
    assert len(layer) > 0


def test_handle_timeout_fires_in_deadline_order_and_drops_ended_transactions() -> None:
    layer = TransactionLayer()
    late, _ = layer.send_request(request("OPTIONS", "z9hG4bKlate"), DEST, 1.0, reliable=False)
    early, _ = layer.send_request(request("OPTIONS", "z9hG4bKearly"), DEST, 0.0, reliable=False)
    assert layer.next_deadline() == 0.5  # Timer E of `early`
    fired = layer.handle_timeout(1.5)
    # early's Timer E at 0.5 and 1.5, late's first at 1.5
    assert [a.key for a in fired if isinstance(a, Send)] == [early, early, late]
    assert layer.next_deadline() == 2.5  # late's E (1 s after 1.5); early's is at 3.5
    # Timer F (64*T1) ends both (late first: its next timer was due first, and a transaction fires
    # all its due timers at once); nothing is left to wake up for
    ended = [a.key for a in layer.handle_timeout(100.0) if isinstance(a, Terminated)]
    assert ended == [late, early]
    assert layer.next_deadline() is None
    assert len(layer) == 0
    assert layer._scheduled == {}
