"""The front door's settings on the command line: flags, --help, one-line errors (exit 2)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from bridge.cli import _load, build_parser, main


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--allowed-origins", "https://ok.example,ftp://x", "allowed_origins: must be a list of origins"),
        ("--metrics-allow", "10.0.0.0/8,nope", "metrics_allow: must be a list of IP addresses or networks"),
        ("--max-handshakes", "-1", "max_handshakes: must be an integer 1-100000"),
        ("--metrics-token", "short", "metrics_token: must be empty or 16-256 characters"),
    ],
)
def test_bad_front_flags_are_one_line_and_exit_2(tmp_path: Path, flag: str, value: str, message: str) -> None:
    stderr = io.StringIO()
    status = main(["serve", "--data-dir", str(tmp_path), flag, value], env={}, home=tmp_path, stderr=stderr)
    assert status == 2
    text = stderr.getvalue()
    assert text.count("\n") == 1
    assert message in text
    assert f"(from {flag})" in text


def test_front_flags_reach_the_config(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--data-dir",
            str(tmp_path),
            "--allowed-origins",
            "https://a.example, https://b.example:8443",
            "--metrics-allow",
            "",
            "--plain-ws-port",
            "8080",
            "--trusted-proxies",
            "10.0.0.7",
        ]
    )
    config = _load(args, {}, tmp_path)
    assert config.allowed_origins == ("https://a.example", "https://b.example:8443")
    assert config.metrics_allow == ()
    assert config.plain_ws_port == 8080
    assert config.trusted_proxies == ("10.0.0.7",)


def test_help_lists_the_front_settings(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["serve", "--help"], env={}, home=tmp_path) == 0
    out = capsys.readouterr().out
    for flag in (
        "--allowed-origins",
        "--max-connections-per-address",
        "--max-handshakes",
        "--handshake-timeout",
        "--call-timeout",
        "--max-message-bytes",
        "--message-rate",
        "--message-burst",
        "--metrics-allow",
        "--metrics-token",
        "--plain-ws-port",
        "--trusted-proxies",
    ):
        assert flag in out, flag
    assert 'metrics_allow = ["127.0.0.0/8", "::1"]' in out
