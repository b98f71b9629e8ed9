"""rtpengine's ng control protocol (bencode over UDP), async on Trio, loopback only."""

from __future__ import annotations

import os

import trio

Value = int | str | bytes | list["Value"] | dict[str, "Value"]


def bencode(value: Value) -> bytes:
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    return b"d" + b"".join(bencode(k) + bencode(value[k]) for k in sorted(value)) + b"e"


def bdecode(data: bytes, i: int = 0) -> tuple[Value, int]:
    c = data[i : i + 1]
    if c == b"i":
        j = data.index(b"e", i)
        return int(data[i + 1 : j]), j + 1
    if c == b"l":
        i += 1
        items: list[Value] = []
        while data[i : i + 1] != b"e":
            v, i = bdecode(data, i)
            items.append(v)
        return items, i + 1
    if c == b"d":
        i += 1
        out: dict[str, Value] = {}
        while data[i : i + 1] != b"e":
            k, i = bdecode(data, i)
            v, i = bdecode(data, i)
            out[k.decode() if isinstance(k, bytes) else str(k)] = v
        return out, i + 1
    j = data.index(b":", i)
    n = int(data[i:j])
    raw = data[j + 1 : j + 1 + n]
    try:
        return raw.decode(), j + 1 + n
    except UnicodeDecodeError:
        return raw, j + 1 + n


class NgClient:
    """One ng socket; `await cmd({...})` returns the decoded reply dict."""

    def __init__(self, port: int) -> None:
        self.addr = ("127.0.0.1", port)
        self.sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        self.lock = trio.Lock()

    async def cmd(self, command: dict[str, Value], timeout: float = 5.0) -> dict[str, Value]:
        async with self.lock:
            cookie = os.urandom(6).hex().encode()
            await self.sock.sendto(cookie + b" " + bencode(command), self.addr)
            with trio.fail_after(timeout):
                while True:
                    data = await self.sock.recv(65535)
                    got, _, body = data.partition(b" ")
                    if got == cookie:
                        reply, _ = bdecode(body)
                        if not isinstance(reply, dict):
                            raise RuntimeError(f"ng: unexpected reply {reply!r}")
                        return reply

    def close(self) -> None:
        self.sock.close()
