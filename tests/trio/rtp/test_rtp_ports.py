"""The media port allocator on loopback: leases, release, exhaustion, busy ports, pairs."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

import trio
from rtp.ports import SOCKET_BUFFER_BYTES, PortAllocator, PortsExhausted


def _free_range(n: int, host: str = "127.0.0.1") -> int:
    """An even base port with `n` consecutive ports free right now (checked by binding them)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        base = random.randrange(40000, 60000 - n) & ~1
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket(family, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((host, port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base
    raise AssertionError("no free port range found")


async def test_lease_release_and_exhaustion() -> None:
    base = _free_range(4)
    alloc = PortAllocator(base, base + 3)
    with trio.fail_after(5):
        async with alloc.udp() as a, alloc.udp() as b, alloc.udp() as c, alloc.udp() as d:
            ports = [s.getsockname()[1] for s in (a, b, c, d)]
            assert sorted(ports) == list(range(base, base + 4))
            assert alloc.in_use == frozenset(ports)
            with pytest.raises(PortsExhausted, match=f"no free UDP port in {base}-{base + 3}"):
                async with alloc.udp():
                    pass  # pragma: no cover
            assert alloc.in_use == frozenset(ports)
        assert alloc.in_use == frozenset()
        assert all(s.fileno() == -1 for s in (a, b, c, d))  # closed at exit
        async with alloc.udp() as again:
            assert base <= again.getsockname()[1] <= base + 3


async def test_released_port_is_not_reused_at_once() -> None:
    base = _free_range(3)
    alloc = PortAllocator(base, base + 2)
    with trio.fail_after(5):
        async with alloc.udp() as first:
            p1 = first.getsockname()[1]
        async with alloc.udp() as second:
            p2 = second.getsockname()[1]
        async with alloc.udp() as third:
            p3 = third.getsockname()[1]
        async with alloc.udp() as fourth:
            p4 = fourth.getsockname()[1]
    assert [p1, p2, p3, p4] == [base, base + 1, base + 2, base]


async def test_busy_ports_are_skipped() -> None:
    base = _free_range(3)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", base))
        alloc = PortAllocator(base, base + 1)
        with trio.fail_after(5):
            async with alloc.udp() as sock:
                assert sock.getsockname()[1] == base + 1
                assert alloc.skipped_busy == 1
                with pytest.raises(PortsExhausted):
                    async with alloc.udp():
                        pass  # pragma: no cover
    assert alloc.in_use == frozenset()


async def test_a_port_another_reuseport_socket_holds_is_busy_too() -> None:
    """Media sockets are bound with SO_REUSEPORT (rtp.media's twins need it), yet a port that
    another SO_REUSEPORT socket of this user holds (another bridge, say) is skipped, not shared;
    and the port handed out does accept a twin."""
    base = _free_range(3)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        squatter.bind(("127.0.0.1", base))
        alloc = PortAllocator(base, base + 1)
        with trio.fail_after(5):
            async with alloc.udp() as sock:
                assert sock.getsockname()[1] == base + 1
                assert alloc.skipped_busy == 1
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as twin:
                    twin.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    twin.bind(("127.0.0.1", base + 1))  # would raise EADDRINUSE without the option


async def test_pairs_are_even_odd_and_skip_half_busy_pairs() -> None:
    base = _free_range(6)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", base + 1))  # the first pair's RTCP port is taken
        alloc = PortAllocator(base, base + 5)
        with trio.fail_after(5):
            async with alloc.udp_pair() as (rtp1, rtcp1), alloc.udp_pair() as (rtp2, rtcp2):
                got = [s.getsockname()[1] for s in (rtp1, rtcp1, rtp2, rtcp2)]
                assert got == [base + 2, base + 3, base + 4, base + 5]
                with pytest.raises(PortsExhausted, match="pair"):
                    async with alloc.udp_pair():
                        pass  # pragma: no cover
                assert alloc.in_use == frozenset(got)
    assert alloc.in_use == frozenset()


async def test_odd_low_bound_and_sockets_carry_traffic_with_big_buffers() -> None:
    base = _free_range(4)
    alloc = PortAllocator(base + 1, base + 3)
    with trio.fail_after(5):
        async with alloc.udp_pair() as (rtp, rtcp):
            assert rtp.getsockname()[1] == base + 2  # the even port, RTCP on the next
            assert rtcp.getsockname()[1] == base + 3
            await rtp.sendto(b"ping", rtcp.getsockname())
            data, addr = await rtcp.recvfrom(100)
            assert (data, addr) == (b"ping", rtp.getsockname())
            rmem = int(Path("/proc/sys/net/core/rmem_max").read_text())
            wmem = int(Path("/proc/sys/net/core/wmem_max").read_text())
            # Linux doubles the value set, capped at *mem_max (socket(7))
            assert rtp.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * min(SOCKET_BUFFER_BYTES, rmem)
            assert rtp.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * min(SOCKET_BUFFER_BYTES, wmem)


async def test_concurrent_leases_are_distinct_and_cancellation_releases() -> None:
    base = _free_range(8)
    alloc = PortAllocator(base, base + 7)
    got: list[int] = []

    async def lease(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with alloc.udp() as sock:
            got.append(sock.getsockname()[1])
            task_status.started()
            await trio.sleep_forever()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                await nursery.start(lease)
            assert sorted(got) == list(range(base, base + 8))
            with pytest.raises(PortsExhausted):
                async with alloc.udp():
                    pass  # pragma: no cover
            nursery.cancel_scope.cancel()
    assert alloc.in_use == frozenset()


async def test_ipv6_loopback_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match="invalid"):
        PortAllocator(5000, 4000)
    base = _free_range(2, "::1")
    alloc = PortAllocator(base, base + 1, "::1")
    with trio.fail_after(5):
        async with alloc.udp() as sock:
            assert sock.family == socket.AF_INET6
            assert sock.getsockname()[1] == base
    # an address that is not ours is a configuration error, not exhaustion
    with trio.fail_after(5):
        with pytest.raises(OSError, match="assign"):
            async with PortAllocator(base, base + 1, "192.0.2.1").udp():
                pass  # pragma: no cover


async def test_host_name_is_resolved_and_sockets_bind_to_its_address() -> None:
    base = _free_range(4)
    alloc = PortAllocator(base, base + 3, host="localhost")
    with trio.fail_after(5):
        async with alloc.udp() as one, alloc.udp_pair() as (rtp, rtcp):
            names = [s.getsockname() for s in (one, rtp, rtcp)]
    assert {name[0] for name in names} == {"127.0.0.1"}
    ports = [name[1] for name in names]
    assert len(set(ports)) == 3
    assert all(base <= port <= base + 3 for port in ports)
    assert ports[1] % 2 == 0
    assert ports[2] == ports[1] + 1


async def test_unresolvable_host_is_an_os_error_not_a_busy_port() -> None:
    base = _free_range(2)
    alloc = PortAllocator(base, base + 1, host="no-such-host.invalid")
    with trio.fail_after(5), pytest.raises(OSError):
        async with alloc.udp():
            pass  # pragma: no cover
    assert alloc.in_use == frozenset()
    assert alloc.skipped_busy == 0
