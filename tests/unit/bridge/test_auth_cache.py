"""bridge.auth.CredentialsCache: a repeat login skips scrypt; wrong passwords, lock-outs, reloads do not."""

from __future__ import annotations

import pytest

from bridge.auth import Authenticator, AuthOutcome, AuthResult, CredentialsCache, Pending, ThrottlePolicy
from bridge.extensions import ExtensionTable, make_extension

FAST = 2**4
POLICY = ThrottlePolicy(max_failures=3, window=60.0, delay=1.0, lockout_failures=6, lockout=600.0)


def _table(*pairs: tuple[str, str]) -> ExtensionTable:
    return ExtensionTable(tuple(make_extension(n, p, realm="r", n=FAST) for n, p in pairs))


TABLE = _table(("100", "right"), ("101", "other"))


def _auth(cache: CredentialsCache | None = None, table: ExtensionTable = TABLE) -> Authenticator:
    dummy = make_extension("dummy", "\x00", realm="r", n=FAST)
    cache = CredentialsCache(ttl=600.0) if cache is None else cache  # an empty cache is falsy (len 0)
    return Authenticator(table, policy=POLICY, dummy=dummy, cache=cache)


def test_a_repeat_login_is_answered_by_the_cache() -> None:
    auth = _auth()
    first = auth.check(source="10.0.0.1", extension="100", password="right", now=0.0)
    assert first == AuthResult(AuthOutcome.ACCEPTED, "100")
    assert len(auth.cache) == 1
    # admit() answers at once with the password: no Pending, so no scrypt and no worker thread
    again = auth.admit(source="10.0.0.2", extension="100", now=10.0, password="right")
    assert again == AuthResult(AuthOutcome.ACCEPTED, "100", cached=True)
    assert auth.check(source="10.0.0.1", extension="100", password="right", now=20.0).cached
    assert auth.cache.hits == 2


def test_pending_verify_uses_and_fills_the_cache() -> None:
    # the path of a caller that admits without the password and verifies in a worker thread
    auth = _auth()
    pending = auth.admit(source="s", extension="100", now=0.0)
    assert isinstance(pending, Pending)
    assert pending.verify("right") is True
    assert len(auth.cache) == 1
    again = auth.admit(source="s", extension="100", now=1.0)
    assert isinstance(again, Pending)
    assert again.verify("right") is True
    assert auth.cache.hits == 1
    assert again.verify("wrong") is False


def test_a_wrong_password_is_not_cheaper_and_counts_as_a_failure() -> None:
    auth = _auth()
    auth.check(source="s", extension="100", password="right", now=0.0)
    results = [auth.check(source="s", extension="100", password="bad", now=1.0 + t) for t in range(4)]
    assert [r.outcome for r in results] == [AuthOutcome.REJECTED] * 4
    assert [r.delay for r in results] == [0.0, 0.0, 0.0, 1.0]
    # a wrong password never gets a final answer from admit(): it goes to scrypt
    assert isinstance(auth.admit(source="s", extension="100", now=5.0, password="bad"), Pending)
    # the owner's cached password still works, throttle delay included
    assert auth.check(source="s", extension="100", password="right", now=6.0) == AuthResult(
        AuthOutcome.ACCEPTED, "100", delay=2.0, cached=True
    )


def test_a_lockout_overrides_the_cache() -> None:
    auth = _auth()
    auth.check(source="a", extension="100", password="right", now=0.0)
    for t in range(6):
        auth.check(source=f"b{t}", extension="100", password="bad", now=1.0 + t)
    locked = auth.check(source="a", extension="100", password="right", now=10.0)
    assert locked.outcome is AuthOutcome.LOCKED_OUT
    assert not locked.cached


def test_entries_expire_after_the_ttl_counted_from_the_scrypt_check() -> None:
    auth = _auth(CredentialsCache(ttl=100.0))
    auth.check(source="s", extension="100", password="right", now=0.0)
    assert auth.check(source="s", extension="100", password="right", now=99.0).cached
    # hits do not extend the entry: after 100 s one scrypt again, which starts a new entry
    expired = auth.admit(source="s", extension="100", now=100.0, password="right")
    assert isinstance(expired, Pending)
    assert len(auth.cache) == 0
    assert expired.verify("right")
    assert auth.check(source="s", extension="100", password="right", now=199.0).cached


def test_ttl_zero_disables_the_cache() -> None:
    auth = _auth(CredentialsCache(ttl=0.0))
    for t in range(3):
        result = auth.check(source="s", extension="100", password="right", now=float(t))
        assert result == AuthResult(AuthOutcome.ACCEPTED, "100")
    assert len(auth.cache) == 0
    assert auth.cache.hits == 0


def test_unknown_extensions_are_never_cached() -> None:
    auth = _auth()
    for t in range(2):
        assert auth.check(source="s", extension="999", password="\x00", now=float(t)).outcome is (
            AuthOutcome.REJECTED
        )
    assert len(auth.cache) == 0


def test_a_reload_drops_the_cache_and_a_changed_password_never_matches() -> None:
    auth = _auth()
    auth.check(source="s", extension="100", password="right", now=0.0)
    auth.replace_table(_table(("100", "new")))
    assert len(auth.cache) == 0
    assert auth.check(source="s", extension="100", password="right", now=1.0).outcome is AuthOutcome.REJECTED
    assert auth.check(source="s", extension="100", password="new", now=2.0) == AuthResult(
        AuthOutcome.ACCEPTED, "100"
    )
    assert auth.check(source="s", extension="100", password="new", now=3.0).cached


def test_a_check_begun_before_a_reload_is_not_remembered() -> None:
    auth = _auth()
    pending = auth.admit(source="s", extension="100", now=0.0)
    assert isinstance(pending, Pending)
    auth.replace_table(TABLE)  # SIGHUP while the scrypt check runs in its thread
    assert pending.verify("right") is True
    assert len(auth.cache) == 0


def test_the_tag_is_bound_to_the_stored_hash_and_the_process_key() -> None:
    cache = CredentialsCache(key=b"k" * 32)
    old = make_extension("100", "pw", realm="r", n=FAST)
    new = make_extension("100", "pw", realm="r", n=FAST)  # same password, new salt
    cache.remember(old, "pw", 0.0, cache.generation)
    assert cache.hit(old, "pw", 1.0)
    assert not cache.hit(new, "pw", 1.0)
    assert not cache.hit(old, "pW", 1.0)
    other_process = CredentialsCache(key=b"j" * 32)
    other_process._entries = dict(cache._entries)
    assert not other_process.hit(old, "pw", 1.0)


def test_the_cache_is_bounded_expired_entries_go_first_then_the_oldest() -> None:
    cache = CredentialsCache(ttl=10.0, max_entries=3)
    entries = [make_extension(str(200 + i), "pw", realm="r", n=FAST) for i in range(6)]
    cache.remember(entries[0], "pw", 0.0, 0)
    for i in (1, 2):
        cache.remember(entries[i], "pw", 5.0, 0)
    cache.remember(entries[3], "pw", 11.0, 0)  # entry 0 has expired: it makes the room
    assert [cache.hit(e, "pw", 11.0) for e in entries[:4]] == [False, True, True, True]
    cache.remember(entries[1], "pw", 12.0, 0)  # refreshed: now the youngest
    cache.remember(entries[4], "pw", 12.0, 0)  # full, nothing expired: the oldest (2) goes
    assert [cache.hit(e, "pw", 12.0) for e in entries[1:5]] == [True, False, True, True]
    assert len(cache) == 3


@pytest.mark.parametrize(("ttl", "size"), [(-1.0, 10), (1.0, 0)])
def test_cache_validation(ttl: float, size: int) -> None:
    with pytest.raises(ValueError, match="ttl >= 0"):
        CredentialsCache(ttl=ttl, max_entries=size)
