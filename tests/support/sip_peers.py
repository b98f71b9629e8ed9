"""Real SIP peers for the tests, started and stopped by the test itself (loopback only).

    with Kamailio(tmp / "kam") as kam:                        # registrar + proxy on 127.0.0.1:5070
        with Baresip(tmp / "bs", mic_wav, ext="101") as phone:  # registered, auto-answering
            ...                                               # call sip:101@127.0.0.1 via :5070
            phone.received_wav()                              # what the phone heard
    with SippUas("uas_echo", tmp / "sipp") as uas:            # one scripted call on 127.0.0.1:5090
        ...
        assert uas.wait(10) == 0                              # SIPp exit code 0 = the call passed

Configs and scenarios live in tests/support/sip/ (adapted from the team's peer recipes). Every peer
runs as a child of the test process in its own session, logs to WORKDIR/<name>.log, and is stopped
by PID (SIGTERM, then SIGKILL) and reaped. `start()` blocks until the peer is ready; from Trio code,
call it through `trio.to_thread.run_sync` when the peer needs the test's own SIP endpoint to become
ready (baresip registering to the bridge's embedded registrar).

Fixed ports (recipe): Kamailio 5070 (UDP+TCP), baresip SIP 5072 (+TLS 5073), ctrl 5075, RTP
10000-10100, SIPp 5090 with RTP echo on 16000. Kamailio aliases 127.0.0.1:5060, so no test UA may
listen on 127.0.0.1:5060 while it runs.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Self

HERE = Path(__file__).resolve().parent / "sip"

KAMAILIO_PORT = 5070
BARESIP_SIP_PORT = 5072
BARESIP_CTRL_PORT = 5075
SIPP_PORT = 5090
SIPP_MEDIA_PORT = 16000
# The subscribers of make-db.sh (realm 127.0.0.1).
KAMAILIO_USERS = {"100": "pass100", "101": "pass101", "102": "pass102"}


def options_ok(host: str, port: int, timeout: float = 0.3) -> bool:
    """True when host:port answers an OPTIONS over UDP with 200 (Kamailio's readiness)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        lport = s.getsockname()[1]
        cid = secrets.token_hex(6)
        msg = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK{cid};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag={cid}\r\nTo: <sip:{host}:{port}>\r\n"
            f"Call-ID: {cid}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        try:
            s.sendto(msg, (host, port))
            return s.recv(65535).startswith(b"SIP/2.0 200")
        except OSError:  # timeout or ICMP port unreachable
            return False


def udp_bound(host: str, port: int) -> bool:
    """True when some process has a UDP socket bound on host:port (or the wildcard)."""
    hexip = "".join(f"{int(x):02X}" for x in reversed(host.split(".")))
    with open("/proc/net/udp") as f:
        for line in f.readlines()[1:]:
            ip, _, p = line.split()[1].partition(":")
            if int(p, 16) == port and ip in (hexip, "00000000"):
                return True
    return False


class Peer:
    """A peer process: spawn, wait until ready, stop by PID, reap."""

    name = "peer"

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None
        self.t_spawn = 0.0
        self._log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self, timeout: float = 10.0) -> Self:
        raise NotImplementedError

    def _spawn(self, argv: list[str]) -> None:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.t_spawn = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            start_new_session=True,
        )

    def _wait_ready(self, check: Callable[[], bool], timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if check():
                self.startup_s = time.monotonic() - self.t_spawn
                return
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM this PID, SIGKILL after `timeout`, reap; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
        return self.proc.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class Kamailio(Peer):
    """Registrar + proxy for domain/realm 127.0.0.1 (sip/kamailio.cfg) with SQLite subscribers
    100/pass100, 101/pass101, 102/pass102: REGISTER -> 401, other initial requests -> 407.
    Ready = answers OPTIONS with 200."""

    name = "kamailio"

    def __init__(self, workdir: Path, port: int = KAMAILIO_PORT, qop: bool = True) -> None:
        super().__init__(workdir)
        self.port, self.qop = port, qop

    def start(self, timeout: float = 10.0) -> Self:
        db = self.workdir / "kamailio.sqlite"
        subprocess.run([str(HERE / "make-db.sh"), str(db)], check=True, timeout=10)
        self._spawn(
            [
                "kamailio", "-DD", "-E", "-f", str(HERE / "kamailio.cfg"),
                "-Y", str(self.workdir), "-P", str(self.workdir / "kamailio.pid"), "-w", str(self.workdir),
                "-m", "64", "-M", "8",
                "-A", f'DBURL="sqlite:///{db}"',  # absolute path -> four slashes
                "-A", f"LISTEN_UDP=udp:127.0.0.1:{self.port}",
                "-A", f"LISTEN_TCP=tcp:127.0.0.1:{self.port}",
                "-A", f'QOP_FLAGS="{1 if self.qop else 0}"',
            ]
        )  # fmt: skip
        self._wait_ready(lambda: options_ok("127.0.0.1", self.port), timeout)
        return self

    def register_contact(self, ext: str, contact: str, expires: int = 600) -> None:
        """Third-party REGISTER with digest: bind sip:EXT@127.0.0.1 to CONTACT (e.g. a SIPp UAS)."""
        register_contact(("127.0.0.1", self.port), ext, KAMAILIO_USERS[ext], contact, expires=expires)


def _parse_challenge(value: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for m in re.finditer(r'(\w+)=("([^"]*)"|[^,\s]+)', value.partition(" ")[2]):
        params[m.group(1).lower()] = m.group(3) if m.group(3) is not None else m.group(2)
    return params


def register_contact(
    registrar: tuple[str, int],
    ext: str,
    password: str,
    contact: str,
    *,
    expires: int = 600,
    timeout: float = 3.0,
) -> int:
    """A blocking third-party REGISTER over UDP (MD5 digest, qop=auth); returns the final status.

    Independent of our own SIP code on purpose: a tiny stdlib client as a second implementation.
    """
    import hashlib

    host, port = registrar
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(timeout)
        lport = s.getsockname()[1]
        cid, tag = secrets.token_hex(8), secrets.token_hex(4)
        auth = ""
        for cseq in (1, 2):
            msg = (
                f"REGISTER sip:{host} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:{ext}@{host}>;tag={tag}\r\nTo: <sip:{ext}@{host}>\r\n"
                f"Call-ID: {cid}\r\nCSeq: {cseq} REGISTER\r\nContact: <{contact}>\r\nExpires: {expires}\r\n"
                f"{auth}Content-Length: 0\r\n\r\n"
            ).encode()
            s.sendto(msg, (host, port))
            while True:
                data = s.recv(65535).decode(errors="replace")
                code = int(data.split(" ", 2)[1])
                if code >= 200:
                    break
            if code != 401 or auth:
                return code
            m = re.search(r"^WWW-Authenticate:\s*(.*)$", data, re.MULTILINE | re.IGNORECASE)
            if m is None:
                return code
            ch = _parse_challenge(m.group(1).strip())
            uri = f"sip:{host}"

            def h(x: str) -> str:
                return hashlib.md5(x.encode()).hexdigest()

            ha1, ha2 = h(f"{ext}:{ch['realm']}:{password}"), h(f"REGISTER:{uri}")
            cnonce = secrets.token_hex(4)
            resp = h(f"{ha1}:{ch['nonce']}:00000001:{cnonce}:auth:{ha2}")
            auth = (
                f'Authorization: Digest username="{ext}", realm="{ch["realm"]}", nonce="{ch["nonce"]}", '
                f'uri="{uri}", response="{resp}", algorithm=MD5, cnonce="{cnonce}", qop=auth, nc=00000001\r\n'
            )
        return code


class Baresip(Peer):
    """baresip 1.0.0 as a registered, auto-answering phone. Microphone = PLAY_WAV (8 kHz mono
    S16, not looped), what it hears -> WORKDIR/rec/dump-*-dec.wav. Registers to 127.0.0.1:REGISTRAR_PORT
    (Kamailio by default, or the bridge's embedded registrar). Ready = REGISTER answered 200."""

    name = "baresip"

    def __init__(
        self,
        workdir: Path,
        play_wav: Path,
        *,
        ext: str = "101",
        password: str = "pass101",
        registrar_port: int = KAMAILIO_PORT,
        sip_port: int = BARESIP_SIP_PORT,
        ctrl_port: int = BARESIP_CTRL_PORT,
        rtp_ports: str = "10000-10100",
    ) -> None:
        super().__init__(workdir)
        self.play_wav = Path(play_wav).resolve()
        self.ext, self.password, self.registrar_port = ext, password, registrar_port
        self.sip_port, self.ctrl_port, self.rtp_ports = sip_port, ctrl_port, rtp_ports
        assert ctrl_port != sip_port + 1, "baresip listens for SIP over TLS on SIP_PORT+1"

    def _render(self) -> None:
        rec = self.workdir / "rec"
        rec.mkdir(exist_ok=True)
        subst = {
            "@SIP_PORT@": str(self.sip_port),
            "@PLAY_WAV@": str(self.play_wav),
            "@REC_DIR@": str(rec),
            "@RTP_PORTS@": self.rtp_ports,
            "@CTRL_PORT@": str(self.ctrl_port),
            "@EXT@": self.ext,
            "@PASSWORD@": self.password,
            "@PROXY_PORT@": str(self.registrar_port),
        }
        for src, dst in (("baresip-config.template", "config"), ("baresip-accounts.template", "accounts")):
            text = (HERE / src).read_text()
            for key, value in subst.items():
                text = text.replace(key, value)
            (self.workdir / dst).write_text(text)
        (self.workdir / "contacts").write_text("")

    def start(self, timeout: float = 10.0) -> Self:
        self._render()
        self._spawn(["baresip", "-4", "-f", str(self.workdir)])
        self._wait_ready(lambda: re.search(r"\{0/UDP/v4\} 200 OK", self.log()) is not None, timeout)
        if "ctrl_tcp: failed" in self.log():
            self.stop()
            raise RuntimeError(f"baresip ctrl_tcp could not listen:\n{self.log()[-2000:]}")
        return self

    def ctrl(self, command: str, params: str | None = None, timeout: float = 5.0) -> dict[str, object]:
        """One ctrl_tcp command (JSON in a netstring), e.g. ctrl("hangup"); returns the response."""
        msg: dict[str, str] = {"command": command, "token": "t1"}
        if params:
            msg["params"] = params
        body = json.dumps(msg).encode()
        with socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=timeout) as s:
            s.sendall(str(len(body)).encode() + b":" + body + b",")
            buf = b""
            while True:
                while b":" not in buf:
                    chunk = s.recv(4096)
                    if not chunk:
                        raise ConnectionError("baresip ctrl closed before a response")
                    buf += chunk
                n, _, rest = buf.partition(b":")
                while len(rest) < int(n) + 1:
                    chunk = s.recv(4096)
                    if not chunk:
                        raise ConnectionError("baresip ctrl closed mid-message")
                    rest += chunk
                obj = json.loads(rest[: int(n)])
                buf = rest[int(n) + 1 :]
                if isinstance(obj, dict) and obj.get("response"):
                    return obj

    def stop(self, timeout: float = 3.0) -> int | None:
        """baresip un-REGISTERs on SIGTERM (slow if the registrar is gone): a second SIGTERM forces it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)
        return super().stop(2.0)

    def received_wav(self) -> Path | None:
        """The newest recording of what the phone heard (sndfile's dump-*-dec.wav)."""
        files = sorted((self.workdir / "rec").glob("dump-*-dec.wav"), key=os.path.getmtime)
        return files[-1] if files else None


class SippUas(Peer):
    """One SIPp UAS scenario from sip/<scenario>.xml, one call (-m 1), RTP echo on MEDIA_PORT.
    Ready = its UDP port is bound (never probe it with OPTIONS: that would be its one call).
    `delay_ms` feeds -d (the <pause/> of the ring-delay and bye-after scenarios)."""

    def __init__(
        self,
        scenario: str,
        workdir: Path,
        *,
        port: int = SIPP_PORT,
        media_port: int = SIPP_MEDIA_PORT,
        delay_ms: int | None = None,
        timeout_s: int = 30,
        transport: str = "u1",
    ) -> None:
        self.name = f"sipp-{scenario}"
        super().__init__(workdir)
        self.port = port
        self.argv = [
            "sipp", "-sf", str(HERE / f"{scenario}.xml"), "-i", "127.0.0.1", "-bind_local",
            "-p", str(port), "-t", transport, "-mi", "127.0.0.1", "-mp", str(media_port), "-rtp_echo",
            "-m", "1", "-nostdin", "-timeout", f"{timeout_s}s", "-timeout_error",
            "-trace_err", "-error_file", str(self.workdir / f"{self.name}-errors.log"),
            "-trace_msg", "-message_file", str(self.workdir / f"{self.name}-messages.log"),
        ]  # fmt: skip
        if delay_ms is not None:
            self.argv += ["-d", str(delay_ms)]

    def start(self, timeout: float = 10.0) -> Self:
        self._spawn(self.argv)
        if "-t" in self.argv and self.argv[self.argv.index("-t") + 1].startswith("t"):
            self._wait_ready(lambda: _tcp_listening(self.port), timeout)
        else:
            self._wait_ready(lambda: udp_bound("127.0.0.1", self.port), timeout)
        return self

    def wait(self, timeout: float = 30.0) -> int:
        """SIPp's exit status: 0 = its call passed, 1 = it failed, 97/99/255 see `sipp -h`."""
        assert self.proc is not None
        rc = self.proc.wait(timeout)
        if self._log is not None:
            self._log.close()
        return rc

    def messages(self) -> str:
        """SIPp's trace of every message sent and received (for assertions and failure reports)."""
        try:
            return (self.workdir / f"{self.name}-messages.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def errors(self) -> str:
        try:
            return (self.workdir / f"{self.name}-errors.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _tcp_listening(port: int) -> bool:
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if int(fields[1].partition(":")[2], 16) == port and fields[3] == "0A":
                return True
    return False
