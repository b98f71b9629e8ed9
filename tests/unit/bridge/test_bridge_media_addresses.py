"""Which addresses the bridge advertises to browsers (ICE candidates) and to SIP (SDP c=)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bridge import services
from bridge.config import load_config


def config(tmp_path: Path, **flags: str):  # type: ignore[no-untyped-def]
    return load_config(flags={"data_dir": str(tmp_path), **flags}, env={}, home=tmp_path)


def test_public_address_wins(tmp_path: Path) -> None:
    assert services.media_addresses(config(tmp_path, public_address="203.0.113.7")) == (
        ["203.0.113.7"],
        "203.0.113.7",
    )


def test_a_bound_address_is_advertised(tmp_path: Path) -> None:
    assert services.media_addresses(config(tmp_path, listen="192.0.2.10")) == (["192.0.2.10"], "192.0.2.10")


def test_wildcard_advertises_the_host_addresses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services, "local_addresses", lambda: ["192.0.2.20", "198.51.100.3"])
    assert services.media_addresses(config(tmp_path)) == (["192.0.2.20", "198.51.100.3"], "192.0.2.20")


def test_wildcard_with_only_loopback_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(services, "local_addresses", lambda: [])
    with caplog.at_level(logging.WARNING, logger="bridge.services"):
        assert services.media_addresses(config(tmp_path)) == (["127.0.0.1"], "127.0.0.1")
    assert "--public-address" in caplog.text


def test_local_addresses_are_never_loopback() -> None:
    found = services.local_addresses()
    assert all(not a.startswith("127.") and a != "0.0.0.0" for a in found), found
