"""`mccp-bridge extension add|list|remove` and `mccp-bridge cert`, run as subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bridge.extensions import load_extensions


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCCP_BRIDGE_")}
    env["HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args], env=env, capture_output=True, text=True, timeout=20
    )


def test_add_list_remove(tmp_path: Path) -> None:
    path = tmp_path / ".mccp-bridge" / "extensions.toml"  # the default data dir under $HOME
    assert run(tmp_path, "extension", "list").stdout == f"no extensions in {path}\n"

    added = run(tmp_path, "extension", "add", "200", "--password", "s3cret-200")
    assert added.returncode == 0
    assert added.stdout.splitlines()[0] == f"extension 200 added in {path}"
    assert "s3cret-200" not in added.stdout + added.stderr

    generated = run(tmp_path, "extension", "add", "201", "--realm", "pbx.example")
    assert generated.returncode == 0
    password = generated.stdout.splitlines()[1].removeprefix("password for 201: ")
    assert len(password) == 16

    replaced = run(tmp_path, "extension", "add", "200", "--password", "new-200")
    assert replaced.stdout.splitlines()[0] == f"extension 200 updated in {path}"

    listed = run(tmp_path, "extension", "list")
    assert listed.stdout == "200\trealm=mccp-bridge\n201\trealm=pbx.example\n"
    table = load_extensions(path)
    assert table.get("200").check_password("new-200")  # type: ignore[union-attr]
    assert table.get("201").check_password(password)  # type: ignore[union-attr]
    text = path.read_text()
    assert "new-200" not in text
    assert password not in text

    removed = run(tmp_path, "extension", "remove", "200")
    assert removed.returncode == 0
    assert removed.stdout == f"extension 200 removed from {path}\n"
    assert run(tmp_path, "extension", "list").stdout == "201\trealm=pbx.example\n"


def test_extension_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    missing = run(tmp_path, "extension", "remove", "999")
    assert (missing.returncode, missing.stderr) == (2, "mccp-bridge: config error: 999: no such extension\n")
    bad = run(tmp_path, "extension", "add", "1 2", "--password", "x")
    assert bad.returncode == 2
    assert bad.stderr == (
        "mccp-bridge: config error: NUMBER: must be 1-32 characters of digits, letters or *#+._-, "
        "got '1 2' (from command line)\n"
    )
    empty = run(tmp_path, "extension", "add", "300", "--password", "")
    assert (empty.returncode, empty.stderr) == (
        2,
        "mccp-bridge: config error: password: must be 1-128 characters\n",
    )
    no_action = run(tmp_path, "extension")
    assert no_action.returncode == 2
    assert len(no_action.stderr.splitlines()) == 1


def test_cert_command(tmp_path: Path) -> None:
    data = tmp_path / "d"
    created = run(tmp_path, "cert", "--data-dir", str(data), "--public-address", "bridge.example.org")
    assert created.returncode == 0
    lines = created.stdout.splitlines()
    assert lines[0].startswith(f"created a self-signed certificate {data / 'wrtcCert' / 'server.crt'} for ")
    assert "bridge.example.org" in lines[0]
    fingerprint = lines[1]
    assert fingerprint.startswith("SHA-256 fingerprint ")
    again = run(tmp_path, "cert", "--data-dir", str(data))
    assert again.stdout.splitlines()[0].endswith("(use --force to replace)")
    assert again.stdout.splitlines()[1] == fingerprint
    forced = run(tmp_path, "cert", "--data-dir", str(data), "--force")
    assert forced.stdout.splitlines()[1] != fingerprint
    (data / "wrtcCert" / "server.key").write_text("junk")
    broken = run(tmp_path, "cert", "--data-dir", str(data))
    assert broken.returncode == 2
    assert broken.stderr.startswith(f"mccp-bridge: certificate error: {data / 'wrtcCert' / 'server.key'}: ")
    assert len(broken.stderr.splitlines()) == 1
