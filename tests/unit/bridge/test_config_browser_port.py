"""bridge.config: `rtp_browser_port`, the single-port mode's setting, and its checks against
`rtp_ports` and the worker count (one port per worker: rtp_browser_port + I)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bridge.config import ConfigError, default_config_text, load_config


def test_off_by_default(tmp_path: Path) -> None:
    assert load_config(home=tmp_path).rtp_browser_port == 0
    assert "# rtp_browser_port = 0" in default_config_text()


@pytest.mark.parametrize(
    ("flags", "port"),
    [
        ({"rtp_browser_port": "19302", "workers": "1"}, 19302),
        ({"rtp_browser_port": "30000", "workers": "4"}, 30000),  # 30000-30003, right after 20000-29999
        ({"rtp_browser_port": "19997", "workers": "3"}, 19997),  # 19997-19999, right before
        ({"rtp_browser_port": "65532", "workers": "4"}, 65532),  # 65532-65535
        ({"rtp_browser_port": "1024", "workers": "1"}, 1024),
        ({"rtp_browser_port": "0", "workers": "8"}, 0),
    ],
)
def test_accepted(tmp_path: Path, flags: dict[str, str], port: int) -> None:
    assert load_config(flags=flags, home=tmp_path).rtp_browser_port == port


def test_from_toml_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("rtp_browser_port = 40000\nworkers = 2\n")
    assert load_config(config_path=path, home=tmp_path).rtp_browser_port == 40000
    env = {"MCCP_BRIDGE_RTP_BROWSER_PORT": "40002"}
    assert load_config(config_path=path, env=env, home=tmp_path).rtp_browser_port == 40002


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            {"rtp_browser_port": "25000", "workers": "1"},
            "rtp_browser_port: 25000 must not fall inside rtp_ports 20000-29999",
        ),
        (
            {"rtp_browser_port": "19998", "workers": "3"},  # 19998-20000: the last one is inside
            "rtp_browser_port: 19998-20000 (3 workers) must not fall inside rtp_ports 20000-29999",
        ),
        (
            {"rtp_browser_port": "29999", "workers": "1"},
            "rtp_browser_port: 29999 must not fall inside rtp_ports 20000-29999",
        ),
        (
            {"rtp_browser_port": "65534", "workers": "4"},
            "rtp_browser_port: must be 0 or 1024-65532 (one port per worker: 4), got 65534",
        ),
        (
            {"rtp_browser_port": "1023", "workers": "1"},
            "rtp_browser_port: must be 0 or 1024-65535 (one port per worker: 1), got 1023",
        ),
    ],
)
def test_refused(tmp_path: Path, flags: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(flags=flags, home=tmp_path)
    assert str(info.value) == f"{message} (from --rtp-browser-port)"


def test_not_a_port(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(flags={"rtp_browser_port": "70000"}, home=tmp_path)
    assert (
        str(info.value)
        == "rtp_browser_port: must be an integer 0-65535, got '70000' (from --rtp-browser-port)"
    )


def test_auto_workers_count_the_cpu_cores(tmp_path: Path) -> None:
    """With workers = auto (one per core), the ports of every core's worker must fit."""
    cores = os.cpu_count() or 1
    top = 65535 - cores + 1
    assert load_config(flags={"rtp_browser_port": str(top)}, home=tmp_path).rtp_browser_port == top
    with pytest.raises(ConfigError, match="rtp_browser_port: must be"):
        load_config(flags={"rtp_browser_port": str(top + 1)}, home=tmp_path)
