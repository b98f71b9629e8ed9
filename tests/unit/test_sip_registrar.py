"""The embedded registrar's bindings table and stateless nonces (pure, RFC 3261 §10.3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip.registrar import (
    BindingsFormatError,
    ContactSpec,
    NonceCheck,
    Registrar,
    RegistrarError,
    check_nonce,
    make_nonce,
)

A = "sip:101@127.0.0.1:5072"
B = "sip:101@127.0.0.1:5074;transport=tcp"


def _reg(
    r: Registrar,
    contacts: list[ContactSpec],
    *,
    cseq: int = 1,
    expires: int | None = None,
    now: float = 0.0,
    call_id: str = "c1",
) -> tuple[str, ...]:
    out = r.register("101", contacts, call_id=call_id, cseq=cseq, expires_header=expires, now=now)
    return tuple(b.contact for b in out.bindings)


def test_several_contacts_per_aor_and_expiry() -> None:
    r = Registrar()
    assert _reg(r, [ContactSpec(A, expires=60)]) == (A,)
    assert _reg(r, [ContactSpec(B)], cseq=2, expires=30, now=1.0) == (A, B)
    assert r.lookup("101", 30.9) == [A, B]
    assert r.lookup("101", 31.0) == [A]  # B expired (registered at 1.0 for 30 s)
    assert r.bindings("101", 10.0)[0].expires_in(10.0) == 50
    assert r.lookup("101", 60.0) == []
    assert r.expire(61.0) == 0


def test_q_orders_contacts() -> None:
    r = Registrar()
    _reg(r, [ContactSpec(A, q=0.2), ContactSpec(B, q=0.9)])
    assert r.lookup("101", 1.0) == [B, A]


def test_unregister_one_contact_and_wildcard() -> None:
    r = Registrar()
    _reg(r, [ContactSpec(A), ContactSpec(B)])
    assert _reg(r, [ContactSpec(A, expires=0)], cseq=2) == (B,)
    assert _reg(r, [ContactSpec("*")], cseq=3, expires=0) == ()
    assert r.resolve("101", 1.0) == (480, [])


def test_wildcard_needs_expires_zero_and_to_be_alone() -> None:
    r = Registrar()
    with pytest.raises(RegistrarError) as e:
        _reg(r, [ContactSpec("*")], expires=60)
    assert e.value.status == 400
    with pytest.raises(RegistrarError):
        _reg(r, [ContactSpec("*"), ContactSpec(A)], expires=0)


def test_query_returns_bindings_without_change() -> None:
    r = Registrar()
    _reg(r, [ContactSpec(A)])
    assert _reg(r, [], cseq=2) == (A,)


def test_out_of_order_cseq_is_500_and_changes_nothing() -> None:
    r = Registrar()
    _reg(r, [ContactSpec(A)], cseq=5)
    with pytest.raises(RegistrarError) as e:
        _reg(r, [ContactSpec(A, expires=0)], cseq=5)
    assert e.value.status == 500
    assert r.lookup("101", 1.0) == [A]
    # another Call-ID (e.g. the phone restarted) replaces the binding whatever its CSeq
    assert _reg(r, [ContactSpec(A, expires=0)], cseq=1, call_id="other") == ()


def test_interval_too_brief_is_423_with_min_expires_and_atomic() -> None:
    r = Registrar(min_expires=60)
    with pytest.raises(RegistrarError) as e:
        _reg(r, [ContactSpec(B), ContactSpec(A, expires=5)])
    assert (e.value.status, e.value.min_expires) == (423, 60)
    assert r.lookup("101", 0.0) == []  # B was not applied either


def test_expiry_capped_and_binding_count_limited() -> None:
    r = Registrar(max_expires=100, max_bindings_per_aor=2)
    _reg(r, [ContactSpec(A, expires=10_000)])
    assert r.bindings("101", 0.0)[0].expires_in(0.0) == 100
    with pytest.raises(RegistrarError) as e:
        _reg(r, [ContactSpec(B), ContactSpec("sip:x@127.0.0.1")], cseq=2)
    assert e.value.status == 403
    assert r.lookup("101", 0.0) == [A]


def test_resolve_unknown_unregistered_registered() -> None:
    r = Registrar(known=lambda user: user in {"101", "102"})
    _reg(r, [ContactSpec(A)])
    assert r.resolve("999", 0.0) == (404, [])
    assert r.resolve("102", 0.0) == (480, [])
    code, bindings = r.resolve("101", 0.0)
    assert code == 200
    assert [b.contact for b in bindings] == [A]


def test_nonce_roundtrip_stale_and_forged() -> None:
    key = b"k" * 32
    n = make_nonce(key, 1000.0)
    assert check_nonce(key, n, 1000.0) is NonceCheck.VALID
    assert check_nonce(key, n, 1299.0) is NonceCheck.VALID
    assert check_nonce(key, n, 1301.0) is NonceCheck.STALE
    assert check_nonce(b"x" * 32, n, 1000.0) is NonceCheck.INVALID
    assert check_nonce(key, n, 990.0) is NonceCheck.INVALID  # issued in the future
    assert make_nonce(key, -5.0) != n
    assert check_nonce(key, make_nonce(key, -5.0), -4.0) is NonceCheck.VALID


@given(st.text(max_size=64))
def test_check_nonce_never_raises(nonce: str) -> None:
    assert check_nonce(b"key", nonce, 0.0) in set(NonceCheck)


# -- export / load (persistence is the bridge's; here: plain data, wall-clock expiry) ---------------------


def test_export_load_round_trip_across_clocks() -> None:
    """Exported at monotonic 100 (wall 1_000_000), loaded by a process whose monotonic clock is 5."""
    r = Registrar()
    r.register("101", [ContactSpec(A, expires=60, q=0.5)], call_id="c1", cseq=3, expires_header=None,
               now=100.0, source=("127.0.0.1", 5072, "udp"))  # fmt: skip
    r.register("102", [ContactSpec(B, expires=120)], call_id="c2", cseq=1, expires_header=None, now=100.0)
    records = r.export(100.0, wall_now=1_000_000.0)
    assert records[0] == {
        "user": "101", "contact": A, "expires": 1_000_060.0, "call_id": "c1", "cseq": 3, "q": 0.5,
        "source": ["127.0.0.1", 5072, "udp"],
    }  # fmt: skip
    other = Registrar()
    assert other.load(records, 5.0, wall_now=1_000_010.0) == 2  # 10 s later on the wall clock
    (binding,) = other.bindings("101", 5.0)
    assert binding.expires_in(5.0) == 50
    assert (binding.call_id, binding.cseq, binding.q, binding.source) == (
        "c1",
        3,
        0.5,
        ("127.0.0.1", 5072, "udp"),
    )
    assert other.lookup("102", 5.0) == [B]
    # The CSeq rule still holds after a load (RFC 3261 §10.3 step 7).
    with pytest.raises(RegistrarError, match="Out of order"):
        other.register("101", [ContactSpec(A)], call_id="c1", cseq=3, expires_header=60, now=6.0)


def test_load_drops_expired_and_caps_far_future() -> None:
    r = Registrar(max_expires=7200)
    r.register("101", [ContactSpec(A, expires=60)], call_id="c", cseq=1, expires_header=None, now=0.0)
    records = r.export(0.0, wall_now=1000.0)
    fresh = Registrar(max_expires=7200)
    assert fresh.load(records, 0.0, wall_now=1060.0) == 0  # expired at wall 1060
    assert fresh.lookup("101", 0.0) == []
    # The wall clock went back a day: the binding is kept for at most max_expires.
    assert fresh.load(records, 0.0, wall_now=1000.0 - 86400) == 1
    assert fresh.bindings("101", 0.0)[0].expires_in(0.0) == 7200


def test_load_replaces_and_export_skips_expired() -> None:
    r = Registrar()
    r.register("101", [ContactSpec(A, expires=60)], call_id="c", cseq=1, expires_header=None, now=0.0)
    assert r.export(61.0, wall_now=0.0) == []
    r.register("101", [ContactSpec(A, expires=60)], call_id="c", cseq=2, expires_header=None, now=0.0)
    assert r.load([], 0.0, wall_now=0.0) == 0
    assert r.lookup("101", 0.0) == []


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ({"user": "101"}, "bindings must be a list, got dict"),
        (["x"], "binding 0: must be an object, got str"),
        ([{"user": "", "contact": A, "call_id": "c", "expires": 1, "cseq": 1}], "binding 0: user must be"),
        ([{"user": "1", "contact": A, "call_id": "c", "expires": "1", "cseq": 1}], "binding 0: expires must"),
        ([{"user": "1", "contact": A, "call_id": "c", "expires": 1, "cseq": -1}], "binding 0: cseq must"),
        ([{"user": "1", "contact": A, "call_id": "c", "expires": 1, "cseq": 1, "q": 2}], "binding 0: q must"),
        (
            [{"user": "1", "contact": A, "call_id": "c", "expires": 1, "cseq": 1, "source": ["h", 0, "udp"]}],
            "binding 0: source must be",
        ),
    ],
)
def test_load_rejects_malformed_records_and_keeps_the_table(records: object, message: str) -> None:
    r = Registrar()
    r.register("101", [ContactSpec(A, expires=60)], call_id="c", cseq=1, expires_header=None, now=0.0)
    with pytest.raises(BindingsFormatError, match=message):
        r.load(records, 0.0, wall_now=0.0)
    assert r.lookup("101", 0.0) == [A]


def test_on_change_after_each_change_only() -> None:
    calls: list[int] = []
    r = Registrar(on_change=lambda: calls.append(1))
    r.register("101", [], call_id="c", cseq=1, expires_header=None, now=0.0)  # a query
    assert calls == []
    r.register("101", [ContactSpec(A)], call_id="c", cseq=2, expires_header=60, now=0.0)
    r.register("101", [ContactSpec(A)], call_id="c", cseq=3, expires_header=60, now=1.0)  # refresh
    r.register("101", [ContactSpec("*")], call_id="c", cseq=4, expires_header=0, now=2.0)
    r.register("101", [ContactSpec("*")], call_id="c", cseq=5, expires_header=0, now=2.0)  # nothing left
    assert len(calls) == 3
    with pytest.raises(RegistrarError):
        r.register("101", [ContactSpec(A)], call_id="c", cseq=5, expires_header=5, now=3.0)  # 423
    assert len(calls) == 3
