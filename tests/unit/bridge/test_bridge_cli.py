"""bridge.cli in-process: first start files and welcome text, argument errors, and the config fuzz."""

from __future__ import annotations

import io
import tomllib
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.cli import FirstStart, first_start, main, welcome_text
from bridge.config import SETTINGS, Config, ConfigError, load_config
from bridge.extensions import load_extensions


def test_first_start_writes_config_and_demo_extensions_once(tmp_path: Path) -> None:
    config = load_config(flags={"data_dir": str(tmp_path / "d")}, home=tmp_path)
    first = first_start(config)
    assert first is not None
    assert first.config_file == tmp_path / "d" / "config.toml"
    assert tomllib.loads(first.config_file.read_text()) == {}  # every setting commented out
    table = load_extensions(tmp_path / "d" / "extensions.toml")
    assert [e.number for e in table] == ["100", "101"]
    assert table.get("100").check_password(first.passwords["100"])  # type: ignore[union-attr]
    assert first.passwords["100"] not in repr(first)
    # now the config file exists: not a first start any more
    again = load_config(flags={"data_dir": str(tmp_path / "d")}, home=tmp_path)
    assert first_start(again) is None


def test_first_start_keeps_existing_extensions(tmp_path: Path) -> None:
    (tmp_path / "extensions.toml").write_text("")
    first = first_start(Config(data_dir=tmp_path))
    assert first is not None
    assert first.extensions_file is None
    assert (tmp_path / "extensions.toml").read_text() == ""


def test_welcome_text_url() -> None:
    first = FirstStart(Path("/d/config.toml"), Path("/d/extensions.toml"), {"100": "p100", "101": "p101"})
    text = welcome_text(Config(data_dir=Path("/d")), first, 40001)
    [url] = [line.strip() for line in text.splitlines() if line.strip().startswith("https://")]
    assert url == "https://127.0.0.1:40001/lite.html?server=127.0.0.1:40001&clr=100&pwd=p100&cld=600"
    assert (
        "SIP phone for 101: user 101, password p101, realm mccp-bridge, registrar sip:127.0.0.1:5060" in text
    )
    public = Config(data_dir=Path("/d"), public_address="2001:db8::5", echo_extension="700")
    url6 = next(word for word in welcome_text(public, first, 5062).split() if word.startswith("https://"))
    parts = urlsplit(url6)
    assert parts.netloc == "[2001:db8::5]:5062"
    assert parse_qs(parts.query) == {
        "server": ["[2001:db8::5]:5062"],
        "clr": ["100"],
        "pwd": ["p100"],
        "cld": ["700"],
    }


def _main(*argv: str, env: dict[str, str] | None = None, home: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), env=env or {}, home=home, stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def test_main_errors_are_one_line(tmp_path: Path) -> None:
    assert _main("serve", "--rtp-ports", "1-2", home=tmp_path) == (
        2,
        "",
        "mccp-bridge: config error: rtp_ports: must be LOW-HIGH with 1024 <= LOW < HIGH <= 65535, got '1-2' "
        "(from --rtp-ports)\n",
    )
    status, _, err = _main("serve", "--wss-port", home=tmp_path)
    assert (status, err) == (
        2,
        "mccp-bridge: error: argument --wss-port: expected one argument (see mccp-bridge serve --help)\n",
    )
    status, _, err = _main(home=tmp_path)
    assert (status, err) == (
        2,
        "mccp-bridge: error: the following arguments are required: COMMAND (see mccp-bridge --help)\n",
    )
    status, _, err = _main("extension", "list", env={"MCCP_BRIDGE_NOPE": "1"}, home=tmp_path)
    assert (status, err) == (
        2,
        "mccp-bridge: config error: MCCP_BRIDGE_NOPE: unknown setting (see mccp-bridge --help) "
        "(from environment)\n",
    )


def test_global_options_before_the_command(tmp_path: Path) -> None:
    status, out, _ = _main("--data-dir", str(tmp_path / "x"), "extension", "list", home=tmp_path)
    assert (status, out) == (0, f"no extensions in {tmp_path / 'x' / 'extensions.toml'}\n")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([s.key for s in SETTINGS if s.key != "data_dir"]), st.text(max_size=40))
def test_any_flag_value_parses_or_gives_config_error(key: str, value: str) -> None:
    try:
        load_config(flags={key: value}, home=Path("/nonexistent-home"))
    except ConfigError as exc:
        text = str(exc)
        assert text.startswith(f"{key}: ")
        assert text.endswith(f"(from --{key.replace('_', '-')})")
