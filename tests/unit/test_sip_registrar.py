"""The embedded registrar's bindings table and stateless nonces (pure, RFC 3261 §10.3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip.registrar import ContactSpec, NonceCheck, Registrar, RegistrarError, check_nonce, make_nonce

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
