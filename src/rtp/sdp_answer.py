"""SDP offer/answer (RFC 3264) for both legs, and the codec map between them.

Browser leg (JSEP, RFC 8829; WebRTC SDP, RFC 8839/8842/5761/5888):
    `answer_browser_offer` answers the page's offer as an ICE-lite, DTLS-SRTP, rtcp-mux, audio-only
    endpoint carrying G.711 (PCMU/PCMA) and RFC 4733 telephone-event/8000 with the browser's payload
    types. Other m-lines (video, data channel, a second audio) are rejected with port 0, which is
    not an error (RFC 3264 §6). It returns the answer text and a `BrowserNegotiation` with what
    the ICE/DTLS code needs: the browser's ufrag/pwd and certificate fingerprint, the DTLS role,
    mid, candidates and the codecs in the answer.

SIP leg (plain RTP/AVP, RFC 3551):
    `offer_for_sip` writes our offer; `parse_sip_answer` reads the answer to it (address, ports,
    codec, telephone-event PT, direction and hold); `answer_sip_reoffer` answers an offer from the
    SIP side (re-INVITE: hold, resume, a new address or codec).

`codec_map` combines both into the `CodecMap` the relay consumes, with PCMU <-> PCMA transcoding
when the SIP side accepted only the law the browser does not send.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rtp.errors import NegotiationError, SdpParseError
from rtp.relay import CodecMap, PtRoute, Transcode
from rtp.sdp import (
    Attribute,
    Candidate,
    Connection,
    Direction,
    Fingerprint,
    Media,
    Origin,
    SessionDescription,
)

__all__ = [
    "PCMA",
    "PCMU",
    "BrowserNegotiation",
    "Codec",
    "SipMedia",
    "answer_browser_offer",
    "answer_sip_reoffer",
    "codec_map",
    "offer_for_sip",
    "parse_sip_answer",
]

TELEPHONE_EVENT = "telephone-event"
SUPPORTED = ("PCMU", "PCMA")
_STATIC = {0: "PCMU", 8: "PCMA"}  # RFC 3551 §6, usable without a=rtpmap
_HOST_TYPE_PREFERENCE = 126  # RFC 8445 §5.1.2.2


@dataclass(frozen=True, slots=True)
class Codec:
    """An audio codec as carried on one leg: its name and that leg's payload type."""

    name: str
    payload_type: int
    clock_rate: int = 8000


PCMU = Codec("PCMU", 0)
PCMA = Codec("PCMA", 8)


@dataclass(frozen=True, slots=True)
class BrowserNegotiation:
    """What the browser's offer and our answer settled.

    `codecs` are the audio codecs of our answer with the browser's payload types, preferred first;
    `direction` is ours (as written in the answer); `we_are_dtls_client` follows `a=setup`.
    """

    ice_ufrag: str
    ice_pwd: str
    fingerprint: Fingerprint
    remote_setup: str
    we_are_dtls_client: bool
    mid: str | None
    candidates: tuple[Candidate, ...]
    codecs: tuple[Codec, ...]
    telephone_event_pt: int | None
    direction: Direction
    remote_ssrcs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SipMedia:
    """The SIP side's media as its SDP describes it.

    `codecs` are the codecs we can carry, in the peer's order, with the peer's payload types;
    `codec` is the first (the one we send). `direction` is the peer's. RTCP goes to
    `rtcp_address:rtcp_port` (RFC 3605 `a=rtcp`, else port + 1; the RTP port with rtcp-mux).
    """

    address: str
    rtp_port: int
    rtcp_address: str
    rtcp_port: int
    codecs: tuple[Codec, ...]
    telephone_event_pt: int | None
    direction: Direction
    rtcp_mux: bool = False

    @property
    def codec(self) -> Codec:
        """The codec we send."""
        return self.codecs[0]

    @property
    def null_address(self) -> bool:
        """c=0.0.0.0: the RFC 2543 hold (RFC 3264 §8.4); nothing may be sent there."""
        return self.address in ("0.0.0.0", "::")

    @property
    def we_may_send(self) -> bool:
        """Whether we may send RTP to the SIP side (it receives and gave a real address)."""
        return self.direction.receives and not self.null_address

    @property
    def on_hold(self) -> bool:
        """The SIP side put the call on hold (sendonly, inactive or a null address)."""
        return not self.we_may_send


def _parse(sdp: str | bytes | SessionDescription) -> SessionDescription:
    return sdp if isinstance(sdp, SessionDescription) else SessionDescription.parse_untrusted(sdp)


def _codecs_of(media: Media, *, supported: Sequence[str]) -> tuple[list[Codec], int | None]:
    """The supported audio codecs in format order, and the telephone-event/8000 payload type."""
    rtpmaps = media.rtpmaps()
    codecs: list[Codec] = []
    telephone_event: int | None = None
    for pt in media.payload_types:
        rtpmap = rtpmaps.get(pt)
        if rtpmap is None:
            name, clock, channels = _STATIC.get(pt, ""), 8000, None
        else:
            name, clock, channels = rtpmap.encoding, rtpmap.clock_rate, rtpmap.channels
        upper = name.upper()
        if clock != 8000 or channels not in (None, 1):
            continue
        if upper in (s.upper() for s in supported) and all(c.name != upper for c in codecs):
            codecs.append(Codec(upper, pt))
        elif name.lower() == TELEPHONE_EVENT and telephone_event is None:
            telephone_event = pt
    return codecs, telephone_event


def _validate_ice(ufrag: str, pwd: str, who: str) -> None:
    # RFC 8839 §5.4: ice-ufrag 4-256 ice-chars, ice-pwd 22-256.
    chars = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/")
    if not 4 <= len(ufrag) <= 256 or not set(ufrag) <= chars:
        raise NegotiationError(f"{who} ice-ufrag {ufrag[:40]!r} invalid (RFC 8839 §5.4)")
    if not 22 <= len(pwd) <= 256 or not set(pwd) <= chars:
        raise NegotiationError(f"{who} ice-pwd invalid: 22-256 ice-chars (RFC 8839 §5.4)")


def _addrtype(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


def _host_candidates(candidates: Sequence[tuple[str, int]]) -> list[Candidate]:
    """One host candidate per address, RFC 8445 §5.1.2.1 priorities, distinct foundations."""
    out = []
    for index, (host, port) in enumerate(candidates):
        local_preference = 65535 - index
        priority = (_HOST_TYPE_PREFERENCE << 24) | (local_preference << 8) | (256 - 1)
        out.append(Candidate(str(index + 1), 1, "udp", priority, host, port, "host"))
    return out


def answer_browser_offer(
    offer: str | bytes | SessionDescription,
    *,
    ice_ufrag: str,
    ice_pwd: str,
    fingerprint_sha256: str,
    candidates: Sequence[tuple[str, int]],
    session_id: int,
    session_version: int = 1,
    port: int | None = None,
    codecs: Sequence[str] = SUPPORTED,
    telephone_event: bool = True,
    ssrc: int | None = None,
    cname: str = "mccp-bridge",
) -> tuple[str, BrowserNegotiation]:
    """Answer a browser's offer (JSEP §5.3) as an ICE-lite, DTLS-SRTP, audio-only endpoint.

    `candidates` are our (host, port) pairs (local addresses, then any public one): one host
    candidate each. `port` is the m= port (default: the first candidate's). `codecs` are the
    codec names we accept, preferred first (call again with only the SIP side's codec to confirm
    it in a final answer after a provisional one). `ssrc`, when given, is announced with
    `a=ssrc:<ssrc> cname:<cname>` (the relay's outgoing SSRC) so the browser binds it at once.

    Raises `SdpParseError` for malformed SDP and `NegotiationError` (488) when nothing usable is
    offered; `ValueError` for bad arguments of ours.
    """
    sdp = _parse(offer)
    if not candidates:
        raise ValueError("at least one candidate address is needed")
    if not _is_sha256_fingerprint(fingerprint_sha256):
        raise ValueError("fingerprint_sha256 must be 32 colon-separated hex bytes")
    try:
        _validate_ice(ice_ufrag, ice_pwd, "our")
    except NegotiationError as exc:
        raise ValueError(str(exc)) from None
    audio_index = next(
        (i for i, m in enumerate(sdp.media) if m.kind == "audio" and m.port != 0),
        None,
    )
    if audio_index is None:
        raise NegotiationError("the offer has no active audio stream")
    media = sdp.media[audio_index]
    if "SAVP" not in media.proto or "TLS" not in media.proto:
        raise NegotiationError(f"audio protocol {media.proto} is not DTLS-SRTP (UDP/TLS/RTP/SAVPF)")
    ufrag = sdp.session_or_media(media, "ice-ufrag")
    pwd = sdp.session_or_media(media, "ice-pwd")
    if ufrag is None or pwd is None:
        raise NegotiationError("the offer has no a=ice-ufrag / a=ice-pwd")
    _validate_ice(ufrag, pwd, "the offer's")
    try:
        fingerprint = sdp.fingerprint_for(media)
    except SdpParseError as exc:
        raise NegotiationError(str(exc)) from None
    if fingerprint is None:
        raise NegotiationError("the offer has no a=fingerprint (RFC 8122)")
    if not media.has("rtcp-mux"):
        # One port per call towards the browser: RTP and RTCP must share it (RFC 5761, RFC 8843).
        raise NegotiationError("the offer lacks a=rtcp-mux, which the bridge requires")
    remote_setup = sdp.session_or_media(media, "setup") or "actpass"
    # RFC 8842 §5.3: the answerer picks the role. To an actpass offer we answer passive, so the
    # browser is the DTLS client: as ICE-lite we are controlled and only learn the nominated path
    # from the browser's checks; its ClientHello follows on that path and our DTLS server simply
    # answers where it came from, with no need to time our own first flight.
    match remote_setup:
        case "actpass" | "active":
            our_setup, we_are_client = "passive", False
        case "passive":
            our_setup, we_are_client = "active", True
        case _:
            raise NegotiationError(f"a=setup:{remote_setup} is not actpass/active/passive")
    offered, te_pt = _codecs_of(media, supported=codecs)
    if not offered:
        rtpmaps = media.rtpmaps()
        names = [rtpmaps[pt].encoding if pt in rtpmaps else str(pt) for pt in media.payload_types]
        raise NegotiationError(
            f"no common audio codec: the offer has {', '.join(names) or 'none'}; "
            f"the bridge carries {', '.join(codecs)}"
        )
    by_name = {c.name: c for c in offered}
    chosen = tuple(by_name[n.upper()] for n in codecs if n.upper() in by_name)
    te = te_pt if telephone_event else None
    direction = sdp.direction_for(media).reversed()
    mid = media.attribute("mid")
    ours = _host_candidates(candidates)
    address = candidates[0][0]
    m_port = candidates[0][1] if port is None else port

    attrs = [
        Attribute("ice-ufrag", ice_ufrag),
        Attribute("ice-pwd", ice_pwd),
        Attribute("fingerprint", f"sha-256 {fingerprint_sha256.upper()}"),
        Attribute("setup", our_setup),
    ]
    if mid is not None:
        attrs.append(Attribute("mid", mid))
    attrs += [Attribute(direction.value), Attribute("rtcp-mux")]
    formats = [str(c.payload_type) for c in chosen]
    for c in chosen:
        attrs.append(Attribute("rtpmap", f"{c.payload_type} {c.name}/8000"))
    if te is not None:
        formats.append(str(te))
        attrs.append(Attribute("rtpmap", f"{te} {TELEPHONE_EVENT}/8000"))
        attrs.append(Attribute("fmtp", f"{te} {media.fmtp(te) or '0-15'}"))
    attrs.append(Attribute("ptime", "20"))
    if ssrc is not None:
        attrs.append(Attribute("msid", f"{cname} audio"))
        attrs.append(Attribute("ssrc", f"{ssrc} cname:{cname}"))
    attrs += [Attribute("candidate", c.serialize()) for c in ours]
    attrs.append(Attribute("end-of-candidates"))
    audio = Media(
        kind="audio",
        port=m_port,
        proto=media.proto,
        formats=tuple(formats),
        connection=Connection(address, _addrtype(address)),
        attributes=tuple(attrs),
    )
    answer_media = []
    for i, m in enumerate(sdp.media):
        if i == audio_index:
            answer_media.append(audio)
            continue
        # RFC 3264 §6: a rejected stream keeps its place with port 0; JSEP §5.3.1 keeps a=mid.
        m_mid = m.attribute("mid")
        answer_media.append(
            Media(
                kind=m.kind,
                port=0,
                proto=m.proto,
                formats=m.formats[:1] or ("0",),
                connection=Connection("0.0.0.0"),
                attributes=(Attribute("mid", m_mid),) if m_mid is not None else (),
            )
        )
    session_attrs = [Attribute("ice-lite")]
    for group in sdp.attribute_values("group"):
        semantics, *mids = group.split()
        if semantics == "BUNDLE" and mid is not None and mid in mids:
            session_attrs.append(Attribute("group", f"BUNDLE {mid}"))
    session_attrs.append(Attribute("msid-semantic", " WMS *"))
    answer = SessionDescription(
        origin=Origin("-", str(session_id), str(session_version), address, addrtype=_addrtype(address)),
        name="-",
        attributes=tuple(session_attrs),
        media=tuple(answer_media),
    )
    remote_ssrcs: list[int] = []
    for value in media.attribute_values("ssrc"):
        head = value.split(" ", 1)[0]
        if head.isascii() and head.isdigit() and int(head) < 2**32 and int(head) not in remote_ssrcs:
            remote_ssrcs.append(int(head))
    try:
        remote_candidates = tuple(media.candidates())
    except SdpParseError:
        remote_candidates = ()  # information only: an ICE-lite agent never checks them
    negotiation = BrowserNegotiation(
        ice_ufrag=ufrag,
        ice_pwd=pwd,
        fingerprint=fingerprint,
        remote_setup=remote_setup,
        we_are_dtls_client=we_are_client,
        mid=mid,
        candidates=remote_candidates,
        codecs=chosen,
        telephone_event_pt=te,
        direction=direction,
        remote_ssrcs=tuple(remote_ssrcs),
    )
    return answer.serialize(), negotiation


def _is_sha256_fingerprint(value: str) -> bool:
    parts = value.split(":")
    return len(parts) == 32 and all(
        len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts
    )


def _sip_media_lines(
    *,
    host: str,
    rtp_port: int,
    codecs: Sequence[Codec],
    telephone_event_pt: int | None,
    direction: Direction,
    ptime: int,
    rtcp_attribute: bool,
) -> Media:
    attrs: list[Attribute] = []
    if rtcp_attribute:
        attrs.append(Attribute("rtcp", str(rtp_port + 1)))  # RFC 3605 §2.1
    formats = [str(c.payload_type) for c in codecs]
    attrs += [Attribute("rtpmap", f"{c.payload_type} {c.name}/{c.clock_rate}") for c in codecs]
    if telephone_event_pt is not None:
        formats.append(str(telephone_event_pt))
        attrs.append(Attribute("rtpmap", f"{telephone_event_pt} {TELEPHONE_EVENT}/8000"))
        attrs.append(Attribute("fmtp", f"{telephone_event_pt} 0-16"))  # RFC 4733 §2.5.1.2: DTMF
    attrs += [Attribute("ptime", str(ptime)), Attribute(direction.value)]
    return Media(
        kind="audio",
        port=rtp_port,
        proto="RTP/AVP",
        formats=tuple(formats),
        attributes=tuple(attrs),
    )


def offer_for_sip(
    *,
    host: str,
    rtp_port: int,
    session_id: int,
    session_version: int = 1,
    codecs: Sequence[Codec] = (PCMU, PCMA),
    telephone_event_pt: int | None = 101,
    direction: Direction = Direction.SENDRECV,
    ptime: int = 20,
    rtcp_attribute: bool = True,
) -> str:
    """Our offer to the SIP side: plain RTP/AVP, RTCP on `rtp_port + 1` (RFC 3550 §11).

    `rtp_port` should be even (RFC 3550 §11). `direction=SENDONLY` puts the SIP side on hold
    (RFC 3264 §8.4) when the browser does.
    """
    if not codecs:
        raise ValueError("at least one codec is needed")
    media = _sip_media_lines(
        host=host,
        rtp_port=rtp_port,
        codecs=codecs,
        telephone_event_pt=telephone_event_pt,
        direction=direction,
        ptime=ptime,
        rtcp_attribute=rtcp_attribute,
    )
    sdp = SessionDescription(
        origin=Origin("mccp-bridge", str(session_id), str(session_version), host, addrtype=_addrtype(host)),
        name="mccp-bridge",
        connection=Connection(host, _addrtype(host)),
        media=(media,),
    )
    return sdp.serialize()


def _sip_media(sdp: SessionDescription, media: Media, codecs: list[Codec], te: int | None) -> SipMedia:
    conn = sdp.connection_for(media)
    if conn is None:
        raise NegotiationError("the SIP side's audio stream has no c= address")
    rtcp_mux = media.has("rtcp-mux")
    try:
        rtcp = media.rtcp()
    except SdpParseError as exc:
        raise NegotiationError(str(exc)) from None
    if rtcp_mux:
        rtcp_address, rtcp_port = conn.address, media.port
    elif rtcp is not None:
        rtcp_address = rtcp[1].address if rtcp[1] is not None else conn.address
        rtcp_port = rtcp[0]
    else:
        rtcp_address, rtcp_port = conn.address, media.port + 1
    return SipMedia(
        address=conn.address,
        rtp_port=media.port,
        rtcp_address=rtcp_address,
        rtcp_port=rtcp_port,
        codecs=tuple(codecs),
        telephone_event_pt=te,
        direction=sdp.direction_for(media),
        rtcp_mux=rtcp_mux,
    )


def parse_sip_answer(
    answer: str | bytes | SessionDescription, offer: str | bytes | SessionDescription
) -> SipMedia:
    """Read the SIP side's answer to our offer (RFC 3264 §6.1, §8).

    The answer's m-line at the index of our audio stream is taken. Its codecs must be among those
    we offered (matched by name, since the answerer may renumber dynamic types); the first one is
    what we send. Raises `SdpParseError` or `NegotiationError` (rejected stream, no codec).
    """
    ours, theirs = _parse(offer), _parse(answer)
    index = next((i for i, m in enumerate(ours.media) if m.kind == "audio"), None)
    if index is None:
        raise ValueError("our offer has no audio stream")
    if len(theirs.media) != len(ours.media):
        raise NegotiationError(
            f"the answer has {len(theirs.media)} m-lines, the offer {len(ours.media)} (RFC 3264 §6)"
        )
    media = theirs.media[index]
    if media.kind != "audio":
        raise NegotiationError(f"the answer's m-line {index} is {media.kind}, not audio")
    if media.port == 0:
        raise NegotiationError("the SIP side rejected the audio stream (port 0)")
    offered, _ = _codecs_of(ours.media[index], supported=SUPPORTED)
    codecs, te = _codecs_of(media, supported=[c.name for c in offered])
    if not codecs:
        raise NegotiationError(f"the SIP answer has no codec we offered (formats {' '.join(media.formats)})")
    return _sip_media(theirs, media, codecs, te)


def answer_sip_reoffer(
    reoffer: str | bytes | SessionDescription,
    *,
    host: str,
    rtp_port: int,
    session_id: int,
    session_version: int,
    codecs: Sequence[str] = SUPPORTED,
    prefer: str | None = None,
    ptime: int = 20,
) -> tuple[str, SipMedia]:
    """Answer an offer from the SIP side (a re-INVITE, or an INVITE with SDP) (RFC 3264 §6, §8).

    We take the first audio stream, pick `prefer` if it is still offered (so a re-INVITE that only
    moves the media keeps the codec), else the first offered codec among `codecs`, keep the
    offerer's telephone-event PT, and mirror the direction (sendonly -> recvonly: hold). Other
    streams are rejected with port 0. `session_id` and an incremented `session_version` must be
    those of our previous SDP in the dialog (RFC 3264 §8).
    """
    sdp = _parse(reoffer)
    index = next((i for i, m in enumerate(sdp.media) if m.kind == "audio" and m.port != 0), None)
    if index is None:
        raise NegotiationError("the SIP offer has no active audio stream")
    media = sdp.media[index]
    if media.proto != "RTP/AVP":
        raise NegotiationError(f"the SIP offer's audio protocol {media.proto} is not RTP/AVP")
    offered, te = _codecs_of(media, supported=codecs)
    if not offered:
        raise NegotiationError(
            f"no common audio codec in the SIP offer (formats {' '.join(media.formats)}); "
            f"the bridge carries {', '.join(codecs)}"
        )
    if prefer is not None and any(c.name == prefer.upper() for c in offered):
        offered.sort(key=lambda c: c.name != prefer.upper())
    chosen = offered[:1]
    remote = _sip_media(sdp, media, chosen, te)
    our_direction = sdp.direction_for(media).reversed()
    ours = _sip_media_lines(
        host=host,
        rtp_port=rtp_port,
        codecs=chosen,
        telephone_event_pt=te,
        direction=our_direction,
        ptime=ptime,
        rtcp_attribute=True,
    )
    answer_media = [
        ours if i == index else Media(kind=m.kind, port=0, proto=m.proto, formats=m.formats[:1] or ("0",))
        for i, m in enumerate(sdp.media)
    ]
    answer = SessionDescription(
        origin=Origin("mccp-bridge", str(session_id), str(session_version), host, addrtype=_addrtype(host)),
        name="mccp-bridge",
        connection=Connection(host, _addrtype(host)),
        media=tuple(answer_media),
    )
    return answer.serialize(), remote


def _transcode(src: str, dst: str) -> Transcode:
    if src == dst:
        return Transcode.NONE
    return Transcode.ULAW_TO_ALAW if src == "PCMU" else Transcode.ALAW_TO_ULAW


def codec_map(browser: BrowserNegotiation, sip: SipMedia) -> CodecMap:
    """The payload type routes between the legs for the relay.

    Every codec the browser may send goes to the SIP side as the same codec if the SIP side
    accepted it, else transcoded to the SIP side's first codec; the reverse likewise. The
    telephone-event PTs are mapped when both legs negotiated one (RFC 4733 §2.1: 8000 Hz clock on
    both, so only the PT changes).
    """
    if not browser.codecs or not sip.codecs:
        raise ValueError("both legs need at least one codec")
    sip_pt = {c.name: c.payload_type for c in sip.codecs}
    browser_pt = {c.name: c.payload_type for c in browser.codecs}
    to_sip: dict[int, PtRoute] = {}
    for c in browser.codecs:
        if c.name in sip_pt:
            to_sip[c.payload_type] = PtRoute(sip_pt[c.name])
        else:
            to_sip[c.payload_type] = PtRoute(sip.codec.payload_type, _transcode(c.name, sip.codec.name))
    to_browser: dict[int, PtRoute] = {}
    first = browser.codecs[0]
    for c in sip.codecs:
        if c.name in browser_pt:
            to_browser[c.payload_type] = PtRoute(browser_pt[c.name])
        else:
            to_browser[c.payload_type] = PtRoute(first.payload_type, _transcode(c.name, first.name))
    if browser.telephone_event_pt is not None and sip.telephone_event_pt is not None:
        to_sip[browser.telephone_event_pt] = PtRoute(sip.telephone_event_pt)
        to_browser[sip.telephone_event_pt] = PtRoute(browser.telephone_event_pt)
    return CodecMap(to_sip=to_sip, to_browser=to_browser)
