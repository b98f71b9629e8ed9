"""A loopback packet capture for measuring timings in end-to-end tests (root, inside the test netns).

`LoopbackSniffer` reads every IPv4 UDP datagram crossing `lo` with an AF_PACKET socket in a thread and
keeps (wall-clock time, source port, destination port, first payload byte, length). Tests use it to find
when the first audio packet reached a peer, next to the log records' timestamps. Stdlib only.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Self

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4  # each loopback packet is seen leaving and arriving: keep one of the two


@dataclass(frozen=True, slots=True)
class Datagram:
    at: float  # time.time() when captured
    src_port: int
    dst_port: int
    first_byte: int
    length: int

    @property
    def is_rtp(self) -> bool:
        """RTP, RTCP, SRTP or SRTCP by its first byte (version 2; RFC 7983)."""
        return 128 <= self.first_byte <= 191


class LoopbackSniffer:
    """Capture UDP on `lo` while the `with` block runs; `.datagrams` is the list, in order."""

    def __init__(self) -> None:
        self.datagrams: list[Datagram] = []
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self._sock.bind(("lo", 0))
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sniffer", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, address = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if address[2] == PACKET_OUTGOING or len(frame) < 14 + 20 + 8:
                continue
            ip = frame[14:]
            if ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_UDP:
                continue
            ihl = (ip[0] & 0x0F) * 4
            src, dst, length = struct.unpack_from("!HHH", ip, ihl)
            payload = ip[ihl + 8 :]
            first = payload[0] if payload else -1
            self.datagrams.append(Datagram(time.time(), src, dst, first, length - 8))
