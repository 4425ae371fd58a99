"""minibt.udpio: cutting GRO buffers, grouping datagrams for GSO, and the fallbacks (fake sockets)."""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Sequence
from typing import Any

import pytest

from minibt.udpio import (
    GSO_MAX_BYTES,
    GSO_MAX_SEGMENTS,
    SOL_UDP,
    UDP_GRO,
    UDP_SEGMENT,
    UdpIO,
    gso_runs,
    split_gro,
)

A, B = ("127.0.0.2", 1000), ("127.0.0.3", 1000)


def test_split_gro_cuts_every_segment_and_keeps_a_short_last_one() -> None:
    data = bytes(range(256)) * 4  # 1024 bytes
    buf = bytearray(data) + bytearray(100)  # the buffer is larger than what was read
    parts = split_gro(memoryview(buf), 1000, 300)
    assert [len(p) for p in parts] == [300, 300, 300, 100]
    assert b"".join(bytes(p) for p in parts) == data[:1000]


@pytest.mark.parametrize(("n", "seg", "lens"), [(900, 300, [300] * 3), (300, 300, [300]), (200, 300, [200]),
                                                (50, 0, [50])])
def test_split_gro_exact_multiples_and_single_datagrams(n: int, seg: int, lens: list[int]) -> None:
    assert [len(p) for p in split_gro(memoryview(bytearray(1000)), n, seg)] == lens


def test_gso_runs_group_one_address_one_size_with_a_shorter_last() -> None:
    sizes = [1400, 1400, 1400, 900, 1400, 1400, 20, 20]
    addrs = [A, A, A, A, A, B, B, B]
    # a shorter one ends a run; a new address starts one; a single datagram is a run of one
    assert gso_runs(sizes, addrs) == [(0, 4), (4, 5), (5, 7), (7, 8)]


def test_gso_runs_a_larger_one_starts_a_new_run() -> None:
    assert gso_runs([100, 100, 200, 200], [A] * 4) == [(0, 2), (2, 4)]


def test_gso_runs_respect_the_segment_and_byte_limits() -> None:
    runs = gso_runs([1000] * 150, [A] * 150)
    assert runs == [(0, 64), (64, 128), (128, 150)] and GSO_MAX_SEGMENTS == 64
    big = 16000
    runs = gso_runs([big] * 9, [A] * 9)
    assert all(sum([big] * (j - i)) <= GSO_MAX_BYTES for i, j in runs) and runs[0] == (0, 4)
    assert runs[-1][1] == 9


class FakeSock:
    """Records sends; fails setsockopt/sendmsg on demand."""

    family = socket.AF_INET

    def __init__(self, *, setsockopt_error: int | None = None, sendmsg_error: int | None = None) -> None:
        self.setsockopt_error = setsockopt_error
        self.sendmsg_error = sendmsg_error
        self.sent: list[tuple[str, Any, tuple[str, int]]] = []
        self.opts: list[tuple[int, int, int]] = []
        self.inbox: list[tuple[bytes, int, tuple[str, int]]] = []  # (data, GRO segment size or 0, source)

    def setsockopt(self, level: int, opt: int, value: int) -> None:
        if self.setsockopt_error is not None:
            raise OSError(self.setsockopt_error, "nope")
        self.opts.append((level, opt, value))

    def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
        self.sent.append(("sendto", data, addr))
        return len(data)

    def sendmsg(self, bufs: list[bytes], anc: list[tuple[int, int, bytes]], flags: int,
                addr: tuple[str, int]) -> int:
        if self.sendmsg_error is not None:
            raise OSError(self.sendmsg_error, "nope")
        ((level, typ, val),) = anc
        assert (level, typ) == (SOL_UDP, UDP_SEGMENT)
        self.sent.append(("gso", (struct.unpack("=H", val)[0], list(bufs)), addr))
        return sum(map(len, bufs))

    def _next(self, buf: bytearray) -> tuple[int, int, tuple[str, int]]:
        if not self.inbox:
            raise BlockingIOError(errno.EAGAIN, "empty")
        data, seg, src = self.inbox.pop(0)
        buf[: len(data)] = data
        return len(data), seg, src

    def recvfrom_into(self, buf: bytearray) -> tuple[int, tuple[str, int]]:
        n, seg, src = self._next(buf)
        assert not seg, "a GRO buffer read without GRO"
        return n, src

    def recvmsg_into(self, bufs: tuple[bytearray], space: int) -> tuple[int, list[Any], int, tuple[str, int]]:
        n, seg, src = self._next(bufs[0])
        anc = [(SOL_UDP, UDP_GRO, struct.pack("=i", seg))] if seg else []
        return n, anc, 0, src


def make_io(sock: FakeSock, **kw: bool) -> tuple[UdpIO, dict[str, int]]:
    counters: dict[str, int] = {}
    return UdpIO(sock, counters, **kw), counters  # type: ignore[arg-type]


def test_gso_sends_runs_in_one_sendmsg_and_singles_with_sendto() -> None:
    sock = FakeSock()
    io, c = make_io(sock)
    dgrams = [b"a" * 1400, b"b" * 1400, b"c" * 600, b"d" * 20]
    io.send_many(dgrams, [A, A, A, B])
    assert sock.sent == [("gso", (1400, dgrams[:3]), A), ("sendto", dgrams[3], B)]
    assert c["udp_gso_sends"] == 1 and c["udp_gso_datagrams"] == 3 and c["udp_send_errors"] == 0


@pytest.mark.parametrize("err", [errno.EINVAL, errno.EIO, errno.ENOPROTOOPT])
def test_gso_failure_falls_back_to_sendto_and_turns_gso_off(err: int) -> None:
    sock = FakeSock(sendmsg_error=err)
    io, c = make_io(sock)
    dgrams = [b"a" * 100, b"b" * 100]
    io.send_many(dgrams, [A, A])
    assert io.gso is False
    assert sock.sent == [("sendto", dgrams[0], A), ("sendto", dgrams[1], A)]  # nothing lost
    sock.sendmsg_error = None  # even if it would work now: off for this socket's life
    io.send_many(dgrams, [A, A])
    assert [s[0] for s in sock.sent] == ["sendto"] * 4 and c["udp_gso_sends"] == 0


def test_gso_buffer_full_counts_errors_and_keeps_gso() -> None:
    sock = FakeSock(sendmsg_error=errno.EAGAIN)
    io, c = make_io(sock)
    io.send_many([b"a" * 100] * 3, [A] * 3)
    assert io.gso is True and c["udp_send_errors"] == 3 and sock.sent == []


def test_gro_unavailable_reads_with_recvfrom() -> None:
    sock = FakeSock(setsockopt_error=errno.ENOPROTOOPT)
    io, c = make_io(sock)
    assert io.gro is False
    sock.inbox = [(b"\x01" + bytes(30), 0, A), (b"d1:ae", 0, B)]
    utp: list[tuple[bytes, tuple[str, int]]] = []
    other: list[tuple[bytes, tuple[str, int]]] = []
    io.read(bytearray(2048), 10,
            lambda ds, ss, *, now, on_error: utp.extend((bytes(d), s) for d, s in zip(ds, ss, strict=True)),
            lambda d, s, *, now: other.append((bytes(d), s)), 1.0, lambda s, e: None)
    assert utp == [(b"\x01" + bytes(30), A)] and other == [(b"d1:ae", B)]
    assert c["udp_gro_buffers"] == 0


def test_gro_buffer_is_cut_into_datagrams_for_the_handler() -> None:
    sock = FakeSock()
    io, c = make_io(sock, gso=False)
    assert io.gro is True and sock.opts == [(SOL_UDP, UDP_GRO, 1)]
    dgrams = [bytes((0x01, i)) + bytes(98) for i in range(3)] + [bytes((0x01, 9)) + bytes(38)]
    sock.inbox = [(b"".join(dgrams), 100, A), (dgrams[0], 0, B)]
    got: list[tuple[bytes, tuple[str, int]]] = []
    errors: list[Exception] = []

    def on_utp(ds: Sequence[memoryview], ss: Sequence[tuple[str, int]], *, now: float, on_error: object) -> None:
        assert len(ds) == 1  # the plain path reads one datagram (or GRO buffer) per system call
        got.append((bytes(ds[0]), ss[0]))
        if ds[0][1] == 1:
            raise ValueError("one bad datagram")

    io.read(bytearray(65536), 10, on_utp, lambda d, s, *, now: None, 1.0, lambda s, e: errors.append(e))
    assert got == [(d, A) for d in dgrams] + [(dgrams[0], B)]  # the failing one did not stop the rest
    assert len(errors) == 1
    assert c["udp_gro_buffers"] == 1 and c["udp_gro_datagrams"] == 4


def test_offload_off_uses_neither() -> None:
    sock = FakeSock()
    io, _ = make_io(sock, gro=False, gso=False)
    assert io.gro is False and io.gso is False and sock.opts == []
    io.send_many([b"a" * 10, b"b" * 10], [A, A])
    assert [s[0] for s in sock.sent] == ["sendto", "sendto"]
