"""The ICE-lite responder of the browser leg (RFC 8445 sections 2.5, 7.3; RFC 7675 consent).

Theory of operation
-------------------
The bridge is an ICE-lite agent (RFC 8445 section 2.5): it has one host candidate (the browser
port), never sends connectivity checks, and is always the controlled agent. The browser (a full
agent, controlling) sends Binding requests to our candidate; we answer each one that proves it
knows our password, and the answers are what make the browser's pairs valid. So the whole
agent is one function of (datagram, source address, now) -> optional reply:

    Binding request
      |-- malformed / FINGERPRINT wrong ................ dropped       (counters.malformed)
      |-- not a Binding request ........................ dropped       (counters.not_request)
      |-- no USERNAME or no MESSAGE-INTEGRITY .......... 400, unsigned (RFC 8489 9.1.3)
      |-- USERNAME is not "<our ufrag>:<their ufrag>" .. 401, unsigned (RFC 8489 9.1.3)
      |-- MESSAGE-INTEGRITY wrong ...................... 401, unsigned (RFC 8489 9.1.3)
      |-- no FINGERPRINT / no PRIORITY ................. 400, signed   (RFC 8445 7.1.1, 7.3)
      |-- ICE-CONTROLLED (peer claims controlled too) .. 487, signed   (RFC 8445 7.3.1.1)
      `-- otherwise ..... 200 with XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY, FINGERPRINT;
                          the source becomes a validated address; with USE-CANDIDATE it becomes
                          the selected (nominated) address (RFC 8445 7.3.1.5, lite agent).

Media from an address that never passed a check is not ours to accept (`is_validated`).
Consent (RFC 7675 section 5.1): the browser keeps sending checks (every ~5 s) on the selected
pair; consent expires 30 s after the last valid check from the selected address. A lite agent
cannot send its own consent checks, so received checks are the evidence of consent.

Invariants: the agent never raises on network input; the set of validated addresses is
bounded (only senders that know the password get in, and at most MAX_VALIDATED of them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rtp.stun import (
    Address,
    StunClass,
    StunParseError,
    binding_error,
    binding_success,
    parse_stun_untrusted,
)

__all__ = ["CONSENT_TIMEOUT", "IceCounters", "IceLiteAgent"]

# RFC 7675 section 5.1: consent expires after 30 s without a successful check.
CONSENT_TIMEOUT = 30.0
MAX_VALIDATED = 16


@dataclass(slots=True)
class IceCounters:
    """What the agent saw; every dropped or refused datagram is counted in exactly one field."""

    checks_ok: int = 0
    malformed: int = 0
    not_request: int = 0
    missing_credentials: int = 0
    wrong_username: int = 0
    bad_integrity: int = 0
    missing_attributes: int = 0
    role_conflicts: int = 0
    too_many_addresses: int = 0


@dataclass(slots=True)
class IceLiteAgent:
    """A lite, always-controlled ICE agent answering the browser's connectivity checks.

    `local_ufrag`/`local_pwd` are the values of our SDP answer (a=ice-ufrag/a=ice-pwd);
    `remote_ufrag` (and `remote_pwd`, unused by a lite agent that sends no checks) come from the
    browser's offer. `consent_timeout` is how long consent lasts after the last valid check
    (RFC 7675 section 5.1: 30 s; shorter in tests).
    """

    local_ufrag: str
    local_pwd: str
    remote_ufrag: str
    remote_pwd: str | None = None
    consent_timeout: float = CONSENT_TIMEOUT
    counters: IceCounters = field(default_factory=IceCounters)
    selected: Address | None = None
    _validated: dict[Address, float] = field(default_factory=dict)
    _key: bytes = b""

    def __post_init__(self) -> None:
        # RFC 8445 section 5.3: ufrag 4+ and pwd 22+ characters of ice-char.
        if len(self.local_ufrag) < 4 or len(self.local_pwd) < 22:
            raise ValueError("ICE ufrag must be >= 4 and pwd >= 22 characters (RFC 8445 5.3)")
        if not self.consent_timeout > 0:
            raise ValueError("the consent timeout must be positive")
        self._key = self.local_pwd.encode()

    @property
    def expected_username(self) -> str:
        """The USERNAME a check to us carries: "<our ufrag>:<their ufrag>" (RFC 8445 7.2.2)."""
        return f"{self.local_ufrag}:{self.remote_ufrag}"

    def handle_stun_untrusted(self, data: bytes, addr: Address, now: float) -> bytes | None:
        """Process one datagram classified as STUN; return the reply to send back to `addr`.

        Never raises on network input: bad datagrams are counted and get either no reply or an
        error response as RFC 8489 section 9.1.3 and RFC 8445 section 7.3 prescribe.
        """
        try:
            msg = parse_stun_untrusted(data)
        except StunParseError:
            self.counters.malformed += 1
            return None
        if msg.cls is not StunClass.REQUEST or not msg.is_binding:
            # A lite agent sends no requests, so responses are strays; indications are
            # keep-alives (RFC 8445 section 11) and need no answer.
            self.counters.not_request += 1
            return None
        tid = msg.transaction_id
        # RFC 8489 9.1.3: a request without MESSAGE-INTEGRITY or USERNAME gets 400.
        if msg.username is None or not msg.has_integrity:
            self.counters.missing_credentials += 1
            return binding_error(tid, 400, "Bad Request")
        # RFC 8445 7.3: the USERNAME MUST be "LFRAG:RFRAG" with LFRAG our own fragment.
        if msg.username != self.expected_username:
            self.counters.wrong_username += 1
            return binding_error(tid, 401, "Unauthorized")
        # RFC 8489 9.1.3: a wrong MESSAGE-INTEGRITY gets 401 (not signed: we cannot trust it).
        if not msg.check_integrity(self._key):
            self.counters.bad_integrity += 1
            return binding_error(tid, 401, "Unauthorized")
        # RFC 8445 7.1.1/5.1.2: checks carry PRIORITY; RFC 7983/8445 7.3 want FINGERPRINT.
        if msg.priority is None or not msg.has_fingerprint:
            self.counters.missing_attributes += 1
            return binding_error(tid, 400, "Bad Request", self._key)
        # RFC 8445 7.3.1.1: a lite agent is always controlled (6.1.1), so it cannot take the
        # controlling role; a peer claiming to be controlled too is told to switch.
        if msg.ice_controlling is None and msg.ice_controlled is not None:
            self.counters.role_conflicts += 1
            return binding_error(tid, 487, "Role Conflict", self._key)
        if addr not in self._validated and len(self._validated) >= MAX_VALIDATED:
            self.counters.too_many_addresses += 1
            return None
        self._validated[addr] = now
        # RFC 8445 7.3.1.5: for a lite agent, a valid check with USE-CANDIDATE nominates the
        # pair; a later nomination of another pair replaces it.
        if msg.use_candidate:
            self.selected = addr
        self.counters.checks_ok += 1
        return binding_success(tid, addr, self._key)

    def is_validated(self, addr: Address) -> bool:
        """True if `addr` has passed a connectivity check (media from others is dropped)."""
        return addr in self._validated

    @property
    def consent_expires_at(self) -> float | None:
        """When consent on the selected pair lapses (RFC 7675 5.1): last valid check +
        `consent_timeout` (30 s).

        None until a pair is nominated.
        """
        if self.selected is None:
            return None
        return self._validated[self.selected] + self.consent_timeout

    def consent_expired(self, now: float) -> bool:
        """True once a nominated pair has gone `consent_timeout` without a valid check."""
        expires = self.consent_expires_at
        return expires is not None and now >= expires
