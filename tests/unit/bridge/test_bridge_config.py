"""bridge.config: layer precedence, parsing, and the exact one-line error for each kind of bad value."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from bridge.config import (
    SETTINGS,
    Config,
    ConfigError,
    DtmfMode,
    LogLevel,
    SipTransport,
    Upstream,
    default_config_text,
    load_config,
)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_without_any_file(tmp_path: Path) -> None:
    config = load_config(home=tmp_path)
    assert config.data_dir == tmp_path / ".mccp-bridge"
    assert config.config_file is None
    assert (config.listen, config.wss_port, config.sip_port) == ("0.0.0.0", 5062, 5060)
    assert config.sip_transport is SipTransport.UDP
    assert config.rtp_ports == (20000, 29999)
    assert config.upstream is None
    assert config.public_address is None
    assert config.log_level is LogLevel.INFO
    assert (config.ring_timeout, config.media_timeout) == (60.0, 30.0)
    assert (config.echo_extension, config.realm, config.dtmf_mode) == ("600", "mccp-bridge", DtmfMode.RFC4733)
    assert config.workers == 0  # "auto"
    assert config.worker_count == (os.cpu_count() or 1)
    assert config.allow_file_origin is True
    assert config.cert_dir == tmp_path / ".mccp-bridge" / "wrtcCert"
    assert config.extensions_file == tmp_path / ".mccp-bridge" / "extensions.toml"


def test_precedence_defaults_toml_env_flags(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _write(data / "config.toml", 'wss_port = 6000\nsip_port = 6001\nrealm = "from-file"\nring_timeout = 10\n')
    env = {"MCCP_BRIDGE_DATA_DIR": str(data), "MCCP_BRIDGE_SIP_PORT": "7001", "MCCP_BRIDGE_REALM": "from-env"}
    flags = {"realm": "from-flag"}
    config = load_config(env=env, flags=flags, home=tmp_path)
    assert config.config_file == data / "config.toml"
    assert config.wss_port == 6000  # file over default
    assert config.sip_port == 7001  # env over file
    assert config.realm == "from-flag"  # flag over env
    assert config.ring_timeout == 10.0
    assert config.media_timeout == 30.0  # default


def test_flag_data_dir_beats_env_and_picks_its_config_file(tmp_path: Path) -> None:
    _write(tmp_path / "a" / "config.toml", "wss_port = 1111\n")
    _write(tmp_path / "b" / "config.toml", "wss_port = 2222\n")
    config = load_config(
        env={"MCCP_BRIDGE_DATA_DIR": str(tmp_path / "a")},
        flags={"data_dir": str(tmp_path / "b")},
        home=tmp_path,
    )
    assert (config.data_dir, config.wss_port) == (tmp_path / "b", 2222)


def test_explicit_config_file_and_env_config(tmp_path: Path) -> None:
    other = _write(tmp_path / "elsewhere.toml", "wss_port = 3333\n")
    assert load_config(config_path=other, home=tmp_path).wss_port == 3333
    assert load_config(env={"MCCP_BRIDGE_CONFIG": str(other)}, home=tmp_path).wss_port == 3333


def test_data_dir_in_file_is_used_when_no_upper_layer_sets_it(tmp_path: Path) -> None:
    other = _write(tmp_path / "c.toml", f'data_dir = "{tmp_path / "dd"}"\n')
    assert load_config(config_path=other, home=tmp_path).data_dir == tmp_path / "dd"


def test_values_parse(tmp_path: Path) -> None:
    config = load_config(
        flags={
            "listen": "::",
            "wss_port": "0",
            "rtp_ports": " 30000 - 30100 ",
            "upstream": "sip:[2001:db8::1]:5070;transport=TCP",
            "public_address": "bridge.example.org",
            "log_level": "DEBUG",
            "dtmf_mode": "info",
            "allow_file_origin": "no",
            "sip_transport": "tcp",
            "media_timeout": "2.5",
        },
        home=tmp_path,
    )
    assert config.listen == "::"
    assert config.wss_port == 0
    assert config.rtp_ports == (30000, 30100)
    assert config.upstream == Upstream("2001:db8::1", 5070, SipTransport.TCP)
    assert config.upstream.uri() == "sip:[2001:db8::1]:5070;transport=tcp"
    assert config.public_address == "bridge.example.org"
    assert config.log_level is LogLevel.DEBUG
    assert config.dtmf_mode is DtmfMode.INFO
    assert config.allow_file_origin is False
    assert config.sip_transport is SipTransport.TCP
    assert config.media_timeout == 2.5


def test_upstream_defaults_and_empty_means_none(tmp_path: Path) -> None:
    config = load_config(flags={"upstream": "sip:pbx.example.org"}, home=tmp_path)
    assert config.upstream == Upstream("pbx.example.org", 5060, SipTransport.UDP)
    assert config.upstream.uri() == "sip:pbx.example.org:5060"
    assert load_config(flags={"upstream": ""}, home=tmp_path).upstream is None


def test_toml_native_types(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.toml", "allow_file_origin = false\nauth_delay = 0\nwss_port = 0\n")
    config = load_config(config_path=path, home=tmp_path)
    assert (config.allow_file_origin, config.auth_delay, config.wss_port) == (False, 0.0, 0)


ERRORS = [
    ("wss_port", "abc", "wss_port: must be an integer 0-65535, got 'abc'"),
    ("wss_port", "70000", "wss_port: must be an integer 0-65535, got '70000'"),
    ("listen", "localhost", "listen: must be an IPv4 or IPv6 address, got 'localhost'"),
    ("sip_transport", "sctp", "sip_transport: must be one of 'udp', 'tcp', got 'sctp'"),
    ("rtp_ports", "3000", "rtp_ports: must be LOW-HIGH with 1024 <= LOW < HIGH <= 65535, got '3000'"),
    (
        "rtp_ports",
        "5000-4000",
        "rtp_ports: must be LOW-HIGH with 1024 <= LOW < HIGH <= 65535, got '5000-4000'",
    ),
    (
        "upstream",
        "pbx.example.org",
        "upstream: must be a SIP URI sip:HOST[:PORT][;transport=udp|tcp], got 'pbx.example.org'",
    ),
    (
        "upstream",
        "sip:pbx;transport=sctp",
        "upstream: must be a SIP URI sip:HOST[:PORT][;transport=udp|tcp], got 'sip:pbx;transport=sctp'",
    ),
    ("public_address", "bad host!", "public_address: must be a hostname or an IP address, got 'bad host!'"),
    ("log_level", "loud", "log_level: must be one of 'debug', 'info', 'warning', 'error', got 'loud'"),
    ("ring_timeout", "0", "ring_timeout: must be a number of seconds 1-3600, got '0'"),
    ("media_timeout", "-1", "media_timeout: must be a number of seconds 1-3600, got '-1'"),
    (
        "echo_extension",
        "6 0 0",
        "echo_extension: must be 1-32 characters of digits, letters or *#+._-, got '6 0 0'",
    ),
    (
        "realm",
        'a"b',
        "realm: must be 1-64 printable ASCII characters without quotes or backslashes, got 'a\"b'",
    ),
    ("dtmf_mode", "inband", "dtmf_mode: must be one of 'rfc4733', 'info', got 'inband'"),
    ("workers", "65", "workers: must be \"auto\" (one per CPU core) or an integer 1-64, got '65'"),
    ("workers", "0", "workers: must be \"auto\" (one per CPU core) or an integer 1-64, got '0'"),
    ("allow_file_origin", "maybe", "allow_file_origin: must be true or false, got 'maybe'"),
    ("auth_max_failures", "0", "auth_max_failures: must be an integer 1-1000, got '0'"),
    ("data_dir", " ", "data_dir: must be a directory path, got ' '"),
    ("data_dir", "~nobody-0", "data_dir: names an unknown user's home directory, got '~nobody-0'"),
    ("log_file", "~0/bridge.log", "log_file: names an unknown user's home directory, got '~0/bridge.log'"),
    ("media_coalesce", "0.5", "media_coalesce: must be a number of seconds 0-0.02, got '0.5'"),
]


@pytest.mark.parametrize(("key", "value", "message"), ERRORS, ids=[f"{k}={v}" for k, v, _ in ERRORS])
def test_error_line_from_flag(tmp_path: Path, key: str, value: str, message: str) -> None:
    flag = "--" + key.replace("_", "-")
    with pytest.raises(ConfigError) as info:
        load_config(flags={key: value}, home=tmp_path)
    assert str(info.value) == f"{message} (from {flag})"
    assert "\n" not in str(info.value)


def test_error_line_from_env(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"MCCP_BRIDGE_WSS_PORT": "abc"}, home=tmp_path)
    assert str(info.value) == "wss_port: must be an integer 0-65535, got 'abc' (from MCCP_BRIDGE_WSS_PORT)"


def test_error_line_from_file_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path / ".mccp-bridge" / "config.toml", 'wss_port = "abc"\n')
    with pytest.raises(ConfigError) as info:
        load_config(home=tmp_path)
    assert str(info.value) == f"wss_port: must be an integer 0-65535, got 'abc' (from {path})"


def test_toml_typed_values_are_checked(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.toml", "allow_file_origin = 1\nwss_port = true\n")
    with pytest.raises(ConfigError) as info:
        load_config(config_path=path, home=tmp_path)
    assert str(info.value) == f"allow_file_origin: must be true or false, got 1 (from {path})"
    _write(path, "wss_port = true\n")
    with pytest.raises(ConfigError) as info:
        load_config(config_path=path, home=tmp_path)
    assert str(info.value) == f"wss_port: must be an integer 0-65535, got True (from {path})"
    _write(path, "rtp_ports = [1, 2]\n")
    with pytest.raises(ConfigError) as info:
        load_config(config_path=path, home=tmp_path)
    assert "rtp_ports: must be LOW-HIGH" in str(info.value)


def test_unknown_keys(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.toml", "wss_prot = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(config_path=path, home=tmp_path)
    assert str(info.value) == f"wss_prot: unknown setting (see mccp-bridge --help) (from {path})"
    with pytest.raises(ConfigError) as info:
        load_config(env={"MCCP_BRIDGE_WSS_PROT": "1"}, home=tmp_path)
    assert (
        str(info.value) == "MCCP_BRIDGE_WSS_PROT: unknown setting (see mccp-bridge --help) (from environment)"
    )


def test_other_env_variables_are_ignored(tmp_path: Path) -> None:
    assert load_config(env={"HOME": "/nowhere", "MCCP_WSS_PORT": "x"}, home=tmp_path).wss_port == 5062


def test_bad_toml_and_missing_explicit_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.toml", "wss_port = = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(config_path=path, home=tmp_path)
    assert str(info.value).startswith("invalid TOML: ")
    assert str(info.value).endswith(f"(from {path})")
    _write(path, "\xff")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError) as info:
        load_config(config_path=path, home=tmp_path)
    assert str(info.value) == f"config file is not UTF-8 text (from {path})"
    with pytest.raises(ConfigError) as info:
        load_config(config_path=tmp_path / "missing.toml", home=tmp_path)
    assert str(info.value) == f"config file not found (from --config {tmp_path / 'missing.toml'})"


def test_cross_check_lockout_after_delays(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(flags={"auth_max_failures": "8", "auth_lockout_failures": "4"}, home=tmp_path)
    assert str(info.value) == (
        "auth_lockout_failures: must be at least auth_max_failures (8), got 4 (from --auth-lockout-failures)"
    )


def test_template_lists_every_setting_and_parses_to_defaults(tmp_path: Path) -> None:
    text = default_config_text()
    for setting in SETTINGS:
        if setting.key != "data_dir":
            assert f"# {setting.key} = " in text
    assert tomllib.loads(text) == {}
    uncommented = "\n".join(line[2:] if " = " in line else "" for line in text.splitlines())
    path = _write(tmp_path / "c.toml", uncommented)
    assert load_config(config_path=path, home=tmp_path) == Config(data_dir=tmp_path / ".mccp-bridge")


@pytest.mark.parametrize(("raw", "expected"), [("auto", 0), (" AUTO ", 0), ("1", 1), ("4", 4), ("64", 64)])
def test_workers_auto_or_count(tmp_path: Path, raw: str, expected: int) -> None:
    config = load_config(flags={"workers": raw}, home=tmp_path)
    assert config.workers == expected
    assert config.worker_count == (expected or os.cpu_count() or 1)


def test_workers_in_toml(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("workers = 3\n")
    assert load_config(config_path=path, home=tmp_path).worker_count == 3
    path.write_text('workers = "auto"\n')
    assert load_config(config_path=path, home=tmp_path).workers == 0


def test_the_collector_is_settled_once_the_bridge_is_up() -> None:
    """bridge.cli freezes what start-up built and raises the young-generation threshold."""
    import gc

    from bridge.cli import GC_YOUNG_THRESHOLD, _settle_collector

    before = gc.get_threshold()
    try:
        _settle_collector()
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
