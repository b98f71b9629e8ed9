"""STUN on the browser port: `rtp.stun.parse_stun_untrusted` and `IceLiteAgent.handle_stun_untrusted`.

Contract: the parser raises only `StunParseError`; the agent never raises, and any reply it sends
is a well-formed STUN response to the same transaction. The agent's credentials are those of the
RFC 5769 sample request (USERNAME "evtj:h6vY", password "VOkJxbRl1RmTxUk/WvJxBt"), so mutations of
that vector get past the integrity check and reach the ICE rules behind it.
"""

from __future__ import annotations

from rtp.ice_lite import IceLiteAgent
from rtp.stun import StunClass, StunParseError, parse_stun_untrusted

PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"
PEERS = [("127.0.0.1", 40000), ("::1", 40001)]


def one_input(data: bytes) -> None:
    """Parse, then hand the datagram to a fresh agent from two addresses, twice (consent refresh)."""
    try:
        msg = parse_stun_untrusted(data)
    except StunParseError as err:
        assert str(err)
    else:
        _ = (msg.username, msg.priority, msg.use_candidate, msg.ice_controlling, msg.ice_controlled)
        _ = (msg.has_integrity, msg.has_fingerprint, msg.check_integrity(PASSWORD.encode()))
    agent = IceLiteAgent(local_ufrag="evtj", local_pwd=PASSWORD, remote_ufrag="h6vY")
    for now, addr in enumerate(PEERS * 2):
        reply = agent.handle_stun_untrusted(data, addr, float(now))
        if reply is not None:
            answer = parse_stun_untrusted(reply)
            assert answer.cls in (StunClass.SUCCESS, StunClass.ERROR)
            assert answer.transaction_id == data[8:20]
    if agent.selected is not None:
        assert agent.is_validated(agent.selected)
        assert agent.consent_expires_at is not None
        assert not agent.consent_expired(3.0)
