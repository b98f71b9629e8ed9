"""bridge.config: the front door's settings (origins, caps, timeouts, /metrics, the plain listener)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import Config, ConfigError, load_config


def _load(tmp_path: Path, toml: str = "", **flags: str) -> Config:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    return load_config(flags=flags, env={}, config_path=path, home=tmp_path)


def test_defaults(tmp_path: Path) -> None:
    config = _load(tmp_path)
    assert config.allowed_origins == ()
    assert config.metrics_allow == ("127.0.0.0/8", "::1")
    assert config.metrics_token == ""
    assert config.plain_ws_port is None
    assert config.plain_ws_listen == "127.0.0.1"
    assert config.trusted_proxies == ("127.0.0.0/8", "::1")
    assert (config.max_connections_per_address, config.max_handshakes) == (16, 256)
    assert (config.handshake_timeout, config.call_timeout) == (10.0, 10.0)
    assert (config.max_message_bytes, config.message_rate, config.message_burst) == (65536, 20.0, 40)
    assert (config.ping_interval, config.pong_timeout) == (15.0, 10.0)


def test_lists_from_toml_env_and_flags(tmp_path: Path) -> None:
    toml = (
        'allowed_origins = ["https://Pages.example:8443/", "null"]\n'
        'metrics_allow = ["10.1.2.3/8", "::1/128"]\n'
    )
    config = _load(tmp_path, toml)
    assert config.allowed_origins == ("https://pages.example:8443", "null")
    assert config.metrics_allow == ("10.0.0.0/8", "::1")
    env = {"MCCP_BRIDGE_TRUSTED_PROXIES": "10.0.0.5, 2001:db8::/64"}
    config = load_config(env=env, flags={"metrics_allow": ""}, config_path=tmp_path / "c.toml", home=tmp_path)
    assert config.trusted_proxies == ("10.0.0.5", "2001:db8::/64")
    assert config.metrics_allow == ()  # empty: only the token opens /metrics
    assert config.allowed_origins == ("https://pages.example:8443", "null")  # from the file


def test_numbers_and_ports(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        "max_handshakes = 1000\nmessage_rate = 2.5\nplain_ws_port = 8080\n",
        call_timeout="30",
        max_connections_per_address="200",
        metrics_token="0123456789abcdef0123",
    )
    assert (config.max_handshakes, config.message_rate, config.plain_ws_port) == (1000, 2.5, 8080)
    assert (config.call_timeout, config.max_connections_per_address) == (30.0, 200)
    assert config.metrics_token == "0123456789abcdef0123"
    assert "0123456789abcdef0123" not in repr(config)
    assert _load(tmp_path, plain_ws_port="off").plain_ws_port is None
    assert _load(tmp_path, plain_ws_port="0").plain_ws_port == 0


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("allowed_origins", "https://a.example/path", "must be a list of origins"),
        ("allowed_origins", "*", "must be a list of origins"),
        ("metrics_allow", "localhost", "must be a list of IP addresses or networks, got 'localhost'"),
        ("trusted_proxies", "10.0.0.0/33", "must be a list of IP addresses or networks"),
        ("max_handshakes", "0", "must be an integer 1-100000"),
        ("max_connections_per_address", "many", "must be an integer 1-100000"),
        ("max_message_bytes", "100", "must be an integer 1024-65536"),
        ("max_message_bytes", "70000", "must be an integer 1024-65536"),
        ("message_rate", "0", "must be a number 0.1-1000 (messages per second)"),
        ("message_burst", "0", "must be an integer 1-10000"),
        ("call_timeout", "0.5", "must be a number of seconds 1-600"),
        ("handshake_timeout", "301", "must be a number of seconds 1-300"),
        ("ping_interval", "x", "must be a number of seconds 1-3600"),
        ("pong_timeout", "0", "must be a number of seconds 1-3600"),
        ("metrics_token", "short", "must be empty or 16-256 characters"),
        ("metrics_token", "has spaces in it, quite long", "must be empty or 16-256 characters"),
        ("plain_ws_port", "70000", 'or "" / "off" for none'),
        ("plain_ws_listen", "example.com", "must be an IPv4 or IPv6 address"),
    ],
)
def test_bad_values_are_one_line(tmp_path: Path, key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, **{key: value})
    text = str(error.value)
    assert text.startswith(f"{key}: ")
    assert message in text
    assert "\n" not in text


def test_toml_types_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="allowed_origins: must be a list of origins"):
        _load(tmp_path, "allowed_origins = [1, 2]\n")
    with pytest.raises(ConfigError, match="metrics_allow: must be a list"):
        _load(tmp_path, "metrics_allow = 5\n")


def test_plain_port_must_differ_from_the_wss_port(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"plain_ws_port: must differ from wss_port \(5062\)"):
        _load(tmp_path, plain_ws_port="5062", plain_ws_listen="0.0.0.0")
    assert _load(tmp_path, plain_ws_port="5062").plain_ws_port == 5062  # other address: fine
