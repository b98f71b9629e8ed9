"""sip.ua's embedded registrar under guessing (the `AuthGuard` lock-out), and one message whose
handling raises (a bug in a hook or callback): 500, counted, and the UA keeps serving."""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio.testing

import trio
from sip.auth import DigestClient, challenges, compute_ha1
from sip.message import Response
from sip.parser import parse_datagram_untrusted
from sip.registrar import Registrar
from sip.throttle import ThrottleFigures
from sip.transport import SipTransport
from sip.ua import SipUA

REALM = "mccp-bridge"
PASSWORDS = {"100": "right-100", "101": "right-101"}
DEFAULT = ThrottleFigures()


class Phone:
    """A SIP client on one loopback address: REGISTERs (with digest) and OPTIONS, by hand."""

    def __init__(self, sock: trio.socket.SocketType, ua: tuple[str, int]) -> None:
        self.sock = sock
        self.ua = ua
        self.host, self.port = sock.getsockname()
        self.cseq = 0

    def request(self, method: str, user: str, extra: list[tuple[str, str]] | None = None) -> bytes:
        self.cseq += 1
        lines = [
            f"{method} sip:{self.ua[0]}:{self.ua[1]} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.host}:{self.port};branch=z9hG4bK{secrets.token_hex(6)};rport",
            "Max-Forwards: 70",
            f"From: <sip:{user}@{self.ua[0]}>;tag={secrets.token_hex(4)}",
            f"To: <sip:{user}@{self.ua[0]}>",
            f"Call-ID: guard-{self.host}-{user}",
            f"CSeq: {self.cseq} {method}",
            f"Contact: <sip:{user}@{self.host}:{self.port}>",
            *(f"{name}: {value}" for name, value in extra or []),
            "Content-Length: 0",
            "",
            "",
        ]
        return "\r\n".join(lines).encode()

    async def ask(self, data: bytes) -> Response:
        await self.sock.sendto(data, self.ua)
        with trio.fail_after(5):
            while True:
                answer, _ = await self.sock.recvfrom(65536)
                msg = parse_datagram_untrusted(answer)
                assert isinstance(msg, Response)
                if msg.status >= 200:
                    return msg

    async def register(self, user: str, password: str) -> int:
        """A REGISTER, its 401 (if any) answered with `password`; the final status."""
        first = await self.ask(self.request("REGISTER", user))
        if first.status != 401:
            return first.status
        creds = DigestClient(user, password).authorize(
            challenges(first)[0], "REGISTER", f"sip:{self.ua[0]}:{self.ua[1]}", secrets.token_hex(4)
        )
        answer = await self.ask(self.request("REGISTER", user, [("Authorization", str(creds))]))
        return answer.status


@asynccontextmanager
async def registrar_ua(**ua_kw: object) -> AsyncIterator[tuple[SipUA, list[str]]]:
    """A UA with the embedded registrar; yields it and the log of `ha1_lookup` calls."""
    looked_up: list[str] = []

    def ha1(user: str, realm: str, algorithm: str) -> str | None:
        looked_up.append(user)
        password = PASSWORDS.get(user)
        return None if password is None else compute_ha1(user, realm, password, algorithm)

    ua_kw.setdefault("ha1_lookup", ha1)
    async with trio.open_nursery() as nursery:
        transport = SipTransport("127.0.0.1", 0)
        await nursery.start(transport.run)
        ua = SipUA(transport, registrar=Registrar(), realm=REALM, **ua_kw)  # type: ignore[arg-type]
        await nursery.start(ua.run)
        yield ua, looked_up
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def phone_on(host: str, ua: SipUA) -> AsyncIterator[Phone]:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        await sock.bind((host, 0))
        yield Phone(sock, ("127.0.0.1", ua.transport.port))


async def test_guessing_is_locked_out_the_owner_still_registers_and_the_lockout_expires(
    autojump_clock: trio.testing.MockClock,
) -> None:
    guesses = 3 * DEFAULT.source_failures
    async with registrar_ua() as (ua, looked_up), phone_on("127.0.0.2", ua) as guesser:
        codes: Counter[int] = Counter()
        for i in range(guesses):
            codes[await guesser.register("100", f"guess-{i}")] += 1
        assert codes == Counter({403: guesses})
        # Only the first `source_failures` digests were checked; the rest got 403 at once.
        assert len(looked_up) == DEFAULT.source_failures
        assert ua.stats["register_lockouts"] == 1
        # locked: the right password from the guessing address is refused too (no check, no 401)
        assert await guesser.register("100", PASSWORDS["100"]) == 403
        assert len(looked_up) == DEFAULT.source_failures
        assert ua.stats["register_locked_out"] == guesses - DEFAULT.source_failures + 1
        async with phone_on("127.0.0.3", ua) as owner:
            assert await owner.register("100", PASSWORDS["100"]) == 200
        await trio.sleep(DEFAULT.lockout)
        assert await guesser.register("100", PASSWORDS["100"]) == 200
        assert ua.stats["register_lockouts"] == 1


async def test_distributed_guessing_locks_the_user_out(autojump_clock: trio.testing.MockClock) -> None:
    per_source = DEFAULT.source_failures - 1  # each address stays under its own threshold
    sources = -(-DEFAULT.user_failures // per_source)
    async with registrar_ua() as (ua, looked_up):
        for k in range(sources):
            async with phone_on(f"127.0.0.{10 + k}", ua) as guesser:
                for i in range(per_source):
                    assert await guesser.register("101", f"guess-{k}-{i}") == 403
        assert len(looked_up) == DEFAULT.user_failures  # the rest were refused unchecked
        async with phone_on("127.0.0.3", ua) as owner:
            assert await owner.register("101", PASSWORDS["101"]) == 403  # the user is locked
            assert await owner.register("100", PASSWORDS["100"]) == 200  # another user is not
        assert ua.stats["register_lockouts"] == 1


class SharedGuard:
    """An `AuthGuard` of another shape than the default (as the bridge's Authenticator would be)."""

    def __init__(self) -> None:
        self.failures: list[tuple[str, str]] = []
        self.locked: set[str] = set()

    def is_locked(self, *, source: str, extension: str, now: float) -> bool:
        return source in self.locked or extension in self.locked

    def record_failure(self, *, source: str, extension: str, now: float) -> object:
        self.failures.append((source, extension))
        self.locked.add(source)
        return None


async def test_a_given_guard_is_asked_with_the_datagram_source_not_the_via() -> None:
    guard = SharedGuard()
    with trio.fail_after(10):
        async with registrar_ua(auth_guard=guard) as (ua, _), phone_on("127.0.0.4", ua) as guesser:
            challenge = await guesser.ask(guesser.request("REGISTER", "100"))
            creds = DigestClient("100", "wrong").authorize(
                challenges(challenge)[0], "REGISTER", f"sip:127.0.0.1:{ua.transport.port}", "c1"
            )
            # A Via whose received= names another host: the guard keys on the datagram's source,
            # and the response still comes back to that source (the transport rewrites received=).
            forged = guesser.request("REGISTER", "100", [("Authorization", str(creds))])
            forged = forged.replace(b";rport", b";received=198.51.100.1", 1)
            await guesser.sock.sendto(forged, guesser.ua)
            reply = await guesser.sock.recv(65535)
            assert reply.startswith(b"SIP/2.0 403 ")
            assert guard.failures == [("127.0.0.4", "100")]
            assert ua.stats["register_lockouts"] == 1
            assert await guesser.register("100", PASSWORDS["100"]) == 403  # locked, unchecked
            assert ua.stats["register_locked_out"] == 1


async def test_a_raising_callback_costs_one_500_and_the_ua_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def ha1(user: str, realm: str, algorithm: str) -> str | None:
        if user == "666":
            raise RuntimeError("a bug in the HA1 lookup")
        return compute_ha1(user, realm, PASSWORDS[user], algorithm)

    with trio.fail_after(10):
        async with registrar_ua(ha1_lookup=ha1) as (ua, _), phone_on("127.0.0.5", ua) as phone:
            for _ in range(3):
                assert await phone.register("666", "whatever") == 500
            options = await phone.ask(phone.request("OPTIONS", "100"))
            assert options.status == 200
            assert await phone.register("100", PASSWORDS["100"]) == 200
            assert ua.stats["handler_errors"] == 3
    records = [r for r in caplog.records if "error while handling" in r.getMessage()]
    assert len(records) == 3
    assert "REGISTER sip:127.0.0.1" in records[0].getMessage()
    assert records[0].exc_info is not None
