"""bridge.services' single-port start: worker I's port, its log line, the kernel warning."""

from __future__ import annotations

import logging
import platform
import socket
from pathlib import Path

import pytest

from bridge.config import load_config
from bridge.services import _open_browser_port
from rtp.plane import MediaPlane


def free_run(count: int) -> int:
    """A UDP port P with P..P+count-1 free (checked, not reserved)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        if first + count - 1 > 65535:
            continue
        try:
            for port in range(first, first + count):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise AssertionError("no run of free UDP ports")


async def test_off_when_zero(tmp_path: Path) -> None:
    plane = MediaPlane()
    try:
        assert _open_browser_port(load_config(home=tmp_path), plane, "127.0.0.1", 0, 1) is None
        assert len(plane) == 0
    finally:
        plane.close()


@pytest.mark.parametrize(
    ("release", "steady", "warned"),
    [
        ("6.1.0-28-amd64", True, False),
        ("6.1.0-28-amd64", False, True),
        ("6.13.0", True, False),
        ("6.13.0", False, False),
    ],
)
async def test_worker_i_binds_port_plus_i_and_warns_on_old_kernels_with_twins(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    release: str,
    steady: bool,
    warned: bool,
) -> None:
    """Twins where the kernel hashes connected UDP sockets (6.13+), else the port read in C; with the
    relay in Python, twins on any kernel, and a warning on one that walks them per datagram."""
    first = free_run(3)
    config = load_config(flags={"rtp_browser_port": str(first), "workers": "3"}, home=tmp_path)
    monkeypatch.setattr(platform, "release", lambda: release)
    plane = MediaPlane(steady=steady)
    caplog.set_level(logging.INFO, logger="bridge.services")
    try:
        ports = [_open_browser_port(config, plane, "127.0.0.1", i, 3) for i in range(3)]
        try:
            assert [p.port if p is not None else None for p in ports] == [first, first + 1, first + 2]
            twins = not steady or release.startswith("6.13")
            assert all(p is not None and p.twins is twins for p in ports)
            assert len(plane) == 3  # each served by the plane
        finally:
            for p in ports:
                if p is not None:
                    p.close()
        assert len(plane) == 0
    finally:
        plane.close()
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    line = f"browser media on UDP 127.0.0.1:{first + 1} (single port, worker 1 of {first}-{first + 2})"
    assert any(line in m for m in infos), infos
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == (1 if warned else 0)  # worker 0 only
    if warned:
        assert "older than Linux 6.13" in warnings[0]
        assert release in warnings[0]


async def test_a_taken_port_is_an_error_naming_the_setting(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        taken = int(holder.getsockname()[1])
        config = load_config(flags={"rtp_browser_port": str(taken), "workers": "1"}, home=tmp_path)
        plane = MediaPlane()
        try:
            with pytest.raises(OSError, match=f"rtp_browser_port: cannot bind UDP 127.0.0.1:{taken}"):
                _open_browser_port(config, plane, "127.0.0.1", 0, 1)
            assert len(plane) == 0
        finally:
            plane.close()
