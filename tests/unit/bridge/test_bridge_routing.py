"""bridge.routing: where a browser call goes (pure: a registrar object and `now` in, a Route out)."""

from __future__ import annotations

import pytest

from bridge.config import SipTransport, Upstream
from bridge.routing import NoRoute, Route, route_call
from sip.registrar import ContactSpec, Registrar

ECHO = ("600", "sip:echo@127.0.0.1:5099")


def registrar_with(
    *bindings: tuple[str, str, tuple[str, int, str] | None, float], known: set[str] | None = None
) -> Registrar:
    """A registrar with (user, contact, source, q) bindings registered at t=0 for 600 s."""
    users = known if known is not None else {user for user, *_ in bindings}
    r = Registrar(known=lambda user: user in users)
    for i, (user, contact, source, q) in enumerate(bindings):
        r.register(
            user,
            [ContactSpec(contact, expires=600, q=q)],
            call_id=f"c{i}",
            cseq=1,
            expires_header=None,
            now=0.0,
            source=source,
        )
    return r


def route(callee: str, **kwargs: object) -> Route | NoRoute:
    args: dict[str, object] = {"caller": "100", "password": "pw", "upstream": None, "echo": None}
    args |= {"registrar": None, "now": 1.0} | kwargs
    return route_call(callee, **args)  # type: ignore[arg-type]


def test_upstream_everything_goes_through_it_with_the_callers_credentials() -> None:
    upstream = Upstream("pbx.example.net", 5070, SipTransport.TCP)
    got = route("0049301234", upstream=upstream, echo=ECHO, registrar=registrar_with())
    assert got == Route("sip:0049301234@pbx.example.net", ("pbx.example.net", 5070, "tcp"), ("100", "pw"))
    # upstream wins over the echo number and the registrar
    assert route("600", upstream=upstream, echo=ECHO) == Route(
        "sip:600@pbx.example.net", ("pbx.example.net", 5070, "tcp"), ("100", "pw")
    )


def test_upstream_ipv6_host_is_bracketed_in_the_uri_not_in_the_hop() -> None:
    got = route("101", upstream=Upstream("::1", 5060, SipTransport.UDP))
    assert got == Route("sip:101@[::1]", ("::1", 5060, "udp"), ("100", "pw"))


def test_upstream_user_at_host_keeps_the_host() -> None:
    got = route("alice@example.org", upstream=Upstream("10.0.0.1"))
    assert isinstance(got, Route)
    assert got.target == "sip:alice@example.org"
    assert got.outbound_proxy == ("10.0.0.1", 5060, "udp")


def test_echo_number_goes_to_the_echo_extension() -> None:
    assert route("600", echo=ECHO, registrar=registrar_with()) == Route("sip:echo@127.0.0.1:5099")


def test_registered_extension_goes_to_its_best_contact_via_its_register_source() -> None:
    r = registrar_with(
        ("101", "sip:101@192.168.1.20:5060", ("203.0.113.7", 40123, "UDP"), 0.5),
        ("101", "sip:101@192.168.1.21:5060;transport=tcp", ("203.0.113.8", 50000, "TCP"), 0.9),
    )
    got = route("101", registrar=r)
    assert got == Route("sip:101@192.168.1.21:5060;transport=tcp", ("203.0.113.8", 50000, "tcp"))


def test_binding_without_source_has_no_outbound_proxy() -> None:
    r = registrar_with(("101", "sip:101@127.0.0.1:5072", None, 1.0))
    assert route("101", registrar=r) == Route("sip:101@127.0.0.1:5072")


def test_known_but_unregistered_is_480_unknown_is_404() -> None:
    r = registrar_with(known={"100", "101"})
    assert route("101", registrar=r) == NoRoute(480, "Temporarily Unavailable")
    assert route("999", registrar=r) == NoRoute(404, "Not Found")


def test_expired_binding_is_480() -> None:
    r = registrar_with(("101", "sip:101@127.0.0.1:5072", None, 1.0))
    assert isinstance(route("101", registrar=r, now=599.0), Route)
    assert route("101", registrar=r, now=601.0) == NoRoute(480, "Temporarily Unavailable")


def test_without_registrar_or_upstream_only_echo_and_user_at_host() -> None:
    assert route("101") == NoRoute(404, "Not Found")
    assert route("600", echo=ECHO) == Route(ECHO[1])


@pytest.mark.parametrize(
    ("callee", "target"),
    [
        ("bob@127.0.0.1:5090", "sip:bob@127.0.0.1:5090"),
        ("sip:bob@example.org", "sip:bob@example.org"),
        ("sips:bob@example.org", "sips:bob@example.org"),
    ],
)
def test_user_at_host_calls_directly(callee: str, target: str) -> None:
    assert route(callee, registrar=registrar_with()) == Route(target)
