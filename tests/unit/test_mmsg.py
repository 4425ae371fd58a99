"""Batched UDP reads (minibt.mmsg, recvmmsg through ctypes) on real loopback sockets.

The batched path must hand the handlers exactly what the one-datagram-per-call path hands them: the same
bytes, in order, with the same source addresses (IPv4, IPv6, an IPv4-mapped source as plain IPv4), GRO
buffers cut apart, the read limit kept, a failing handler costing only its own datagram, and a datagram
longer than its slot dropped and counted, not delivered cut short.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterator, Sequence

import pytest

from minibt import mmsg
from minibt.mmsg import BatchReader, open_reader
from minibt.udpio import SOL_UDP, UDP_GRO, UDP_SEGMENT, UdpIO

pytestmark = pytest.mark.skipif(mmsg._recvmmsg() is None, reason="no recvmmsg in this libc")

Got = list[tuple[str, bytes, tuple[str, int]]]


@pytest.fixture
def v4() -> Iterator[tuple[socket.socket, socket.socket]]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", 0))
    yield rx, tx
    rx.close()
    tx.close()


def _datagrams(count: int) -> list[bytes]:
    """uTP-looking datagrams (version 1 ST_DATA first byte, over 20 bytes) and others, of varied sizes."""
    out = []
    for i in range(count):
        body = bytes((i * 7 + j) & 0xFF for j in range(20 + (i * 37) % 1400))
        out.append((b"\x01" if i % 3 else b"d") + body)
    return out


def _batch(per: Callable[..., object]) -> Callable[..., None]:
    """A per-datagram uTP handler as the batch handler the readers take (utp_peers.UtpPeers.receive_batch's
    contract: a fault costs only its own datagram)."""
    def handle(datas: Sequence[memoryview], srcs: Sequence[tuple[str, int]], *, now: float,
               on_error: Callable[[tuple[str, int], Exception], None]) -> None:
        for d, s in zip(datas, srcs, strict=True):
            try:
                per(d, s, now=now)
            except Exception as e:
                on_error(s, e)
    return handle


def _read_all(io: UdpIO, limit: int = 512) -> tuple[Got, list[Exception]]:
    got: Got = []
    errors: list[Exception] = []
    io.read(bytearray(65536), limit, _batch(lambda d, s, *, now: got.append(("utp", bytes(d), s))),
            lambda d, s, *, now: got.append(("other", bytes(d), s)), 1.0, lambda s, e: errors.append(e))
    return got, errors


def _both_ways(v4: tuple[socket.socket, socket.socket], dgrams: list[bytes],
               second: Callable[[int], bool]) -> tuple[Got, Got, tuple[str, int]]:
    """Send ``dgrams`` (datagram i from a second sender when ``second(i)``) and read them one at a time, then
    send them again and read them batched; returns both reads and the second sender's address."""
    rx, tx = v4
    tx2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx2.bind(("127.0.0.2", 0))
    results = []
    for batch in (False, True):
        for i, d in enumerate(dgrams):
            (tx2 if second(i) else tx).sendto(d, rx.getsockname())
        io = UdpIO(rx, {}, batch=batch)
        got, errors = _read_all(io)
        assert errors == [] and io.batch is batch and (io._reader is not None) is batch
        results.append(got)
    src2 = tx2.getsockname()
    tx2.close()
    return results[0], results[1], src2


def test_batched_reads_deliver_what_single_reads_deliver(v4: tuple[socket.socket, socket.socket]) -> None:
    tx = v4[1]
    dgrams = _datagrams(100)
    plain, batched, src2 = _both_ways(v4, dgrams, lambda i: i % 5 == 0)
    assert batched == plain
    assert [d for _, d, _ in batched] == dgrams
    assert {s for _, _, s in batched} == {tx.getsockname(), src2}
    assert [k for k, _, _ in batched] == ["other" if i % 3 == 0 else "utp" for i in range(100)]


@pytest.mark.parametrize("odd", ["none", "short", "other kind", "other sender"])
def test_a_call_of_utp_datagrams_from_one_sender_reads_as_single_reads_do(
        v4: tuple[socket.socket, socket.socket], odd: str) -> None:
    """A download's usual read (every datagram uTP, whole, one sender) is handled once for the whole call;
    one datagram that breaks that (too short, not uTP, another sender) sends its call the general way."""
    tx = v4[1]
    dgrams = [b"\x01" + bytes((i + j) & 0xFF for j in range(19 + (i * 53) % 1440)) for i in range(75)]
    if odd == "short":
        dgrams[40] = b"\x01" * 19  # shorter than a uTP header: not uTP
    elif odd == "other kind":
        dgrams[40] = b"d1:ad2:id20:" + bytes(30)
    plain, batched, src2 = _both_ways(v4, dgrams, lambda i: odd == "other sender" and i == 40)
    assert batched == plain
    assert [d for _, d, _ in batched] == dgrams
    kinds = ["other" if odd in ("short", "other kind") and i == 40 else "utp" for i in range(75)]
    assert [k for k, _, _ in batched] == kinds
    assert [s for _, _, s in batched] == [src2 if odd == "other sender" and i == 40 else tx.getsockname()
                                          for i in range(75)]


def test_the_limit_counts_datagrams_and_the_rest_waits(v4: tuple[socket.socket, socket.socket]) -> None:
    rx, tx = v4
    dgrams = _datagrams(80)
    for d in dgrams:
        tx.sendto(d, rx.getsockname())
    io = UdpIO(rx, {})
    first, _ = _read_all(io, limit=45)  # one full batch of 32, then 13
    rest, _ = _read_all(io)
    assert len(first) == 45 and [d for _, d, _ in first + rest] == dgrams
    again, _ = _read_all(io)
    assert again == []  # drained: EAGAIN is no error


def test_a_failing_handler_loses_only_its_datagram(v4: tuple[socket.socket, socket.socket]) -> None:
    rx, tx = v4
    for i in range(40):
        tx.sendto(b"\x01" + bytes([i]) * 30, rx.getsockname())
    io = UdpIO(rx, {})
    seen: list[int] = []
    errors: list[tuple[tuple[str, int], Exception]] = []

    def on_utp(d: memoryview, s: tuple[str, int], *, now: float) -> None:
        seen.append(d[1])
        if d[1] % 10 == 3:
            raise ValueError("bad datagram")

    io.read(bytearray(65536), 512, _batch(on_utp), lambda d, s, *, now: None, 1.0,
            lambda s, e: errors.append((s, e)))
    assert seen == list(range(40))
    assert len(errors) == 4 and all(s == tx.getsockname() for s, _ in errors)


@pytest.mark.parametrize("batch", [False, True])
def test_the_utp_datagrams_of_one_system_call_come_in_one_handler_call(
        v4: tuple[socket.socket, socket.socket], batch: bool) -> None:
    rx, tx = v4
    for i in range(70):  # a DHT-looking datagram after the 50th: the order of arrival is kept across kinds
        tx.sendto(b"d" * 30 if i == 50 else b"\x01" + bytes([i]) * 30, rx.getsockname())
    calls: list[list[int]] = []
    order: list[object] = []

    def on_utp(datas: Sequence[memoryview], srcs: Sequence[tuple[str, int]], *, now: float,
               on_error: Callable[[tuple[str, int], Exception], None]) -> None:
        assert list(srcs) == [tx.getsockname()] * len(datas)
        calls.append([d[1] for d in datas])
        order.extend(d[1] for d in datas)

    UdpIO(rx, {}, batch=batch).read(bytearray(65536), 512, on_utp, lambda d, s, *, now: order.append("dht"),
                                    1.0, lambda s, e: None)
    want = [*range(50), "dht", *range(51, 70)]
    assert order == want
    if batch:  # recvmmsg's calls of 32: 0-31; 32-49, the DHT one, 51-63; 64-69
        assert [len(c) for c in calls] == [32, 18, 13, 6]
    else:
        assert [len(c) for c in calls] == [1] * 69


def test_a_fault_out_of_the_batch_handler_costs_that_batch_only(v4: tuple[socket.socket, socket.socket]) -> None:
    rx, tx = v4
    for i in range(40):
        tx.sendto(b"\x01" + bytes([i]) * 30, rx.getsockname())
    seen: list[int] = []
    errors: list[tuple[tuple[str, int], Exception]] = []

    def on_utp(datas: Sequence[memoryview], srcs: Sequence[tuple[str, int]], *, now: float,
               on_error: Callable[[tuple[str, int], Exception], None]) -> None:
        seen.extend(d[1] for d in datas)
        if datas[0][1] == 0:
            raise RuntimeError("a bug in the handler")

    UdpIO(rx, {}).read(bytearray(65536), 512, on_utp, lambda d, s, *, now: None, 1.0,
                       lambda s, e: errors.append((s, e)))
    assert seen == list(range(40))  # the second system call's datagrams were still handled
    assert len(errors) == 1 and errors[0][0] == tx.getsockname() and isinstance(errors[0][1], RuntimeError)


def test_ipv6_sources_and_ipv4_mapped_ones_read_as_the_plain_path_gives_them() -> None:
    rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    rx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    rx.bind(("::", 0))  # dual stack; every datagram below still comes from loopback
    rx.setblocking(False)
    port = rx.getsockname()[1]
    t6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    t6.bind(("::1", 0))
    t4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    t4.bind(("127.0.0.1", 0))
    try:
        results = []
        for batch in (False, True):
            for i in range(10):
                if i % 2:
                    t6.sendto(b"\x01" + bytes([i]) * 25, ("::1", port))
                else:
                    t4.sendto(b"\x01" + bytes([i]) * 25, ("127.0.0.1", port))
            got, errors = _read_all(UdpIO(rx, {}, batch=batch))
            assert errors == []
            results.append(got)
        assert results[0] == results[1]
        assert [s for _, _, s in results[1]] == [("127.0.0.1", t4.getsockname()[1]), ("::1", t6.getsockname()[1])] * 5
    finally:
        for s in (rx, t6, t4):
            s.close()


def test_a_gso_run_read_with_gro_is_cut_back_into_its_datagrams(v4: tuple[socket.socket, socket.socket]) -> None:
    rx, tx = v4
    counters: dict[str, int] = {}
    io = UdpIO(rx, counters)
    if not io.gro:
        pytest.skip("no UDP_GRO on this kernel")
    run = [b"\x01" + bytes([i]) * 99 for i in range(5)] + [b"\x01" + b"z" * 39]
    try:
        tx.sendmsg(run, [(SOL_UDP, UDP_SEGMENT, (100).to_bytes(2, "little"))], 0, rx.getsockname())
    except OSError as e:
        pytest.skip(f"no UDP GSO here: {e}")
    tx.sendto(b"\x01" + b"single" * 5, rx.getsockname())
    got, errors = _read_all(io)
    assert errors == [] and io._reader is not None
    assert [d for _, d, _ in got] == [*run, b"\x01" + b"single" * 5]
    if counters["udp_gro_buffers"]:  # the kernel coalesced the run (it may also deliver it cut)
        assert counters["udp_gro_datagrams"] == 6


def test_a_datagram_longer_than_its_slot_is_dropped_and_counted(v4: tuple[socket.socket, socket.socket]) -> None:
    rx, tx = v4
    fn = mmsg._recvmmsg()
    assert fn is not None
    reader = BatchReader(fn, rx, slot_size=256, gro=None, slots=4)
    sizes = [100, 300, 256, 257, 50, 1000, 10]
    for i, n in enumerate(sizes):
        tx.sendto(b"\x01" + bytes([i]) * (n - 1), rx.getsockname())
    got: list[bytes] = []
    counters: dict[str, int] = {"udp_dropped": 0}
    for _ in range(3):
        reader.drain(512, _batch(lambda d, s, *, now: got.append(bytes(d))), 20, frozenset({1}),
                     lambda d, s, *, now: got.append(bytes(d)), 1.0, lambda s, e: None, counters)
    assert [len(d) for d in got] == [100, 256, 50, 10]
    assert counters["udp_dropped"] == 3


def test_a_hard_read_error_raises_and_the_reader_stays_usable(v4: tuple[socket.socket, socket.socket]) -> None:
    rx, tx = v4
    fn = mmsg._recvmmsg()
    assert fn is not None
    calls: list[int] = []

    def failing(fd: int, hdrs: int, n: int, flags: int, timeout: None) -> int:
        calls.append(n)
        if len(calls) == 1:
            import ctypes

            ctypes.set_errno(errno.ENOMEM)
            return -1
        return fn(fd, hdrs, n, flags, timeout)

    reader = BatchReader(failing, rx, slot_size=2048, gro=None)
    tx.sendto(b"\x01" + b"x" * 40, rx.getsockname())
    got: list[bytes] = []
    args = (_batch(lambda d, s, *, now: got.append(bytes(d))), 20, frozenset({1}), lambda d, s, *, now: None, 1.0,
            lambda s, e: None, {})
    with pytest.raises(OSError) as info:
        reader.drain(512, *args)  # type: ignore[arg-type]
    assert info.value.errno == errno.ENOMEM
    reader.drain(512, *args)  # type: ignore[arg-type]
    assert got == [b"\x01" + b"x" * 40]


def test_without_recvmmsg_the_plain_reads_go_on(v4: tuple[socket.socket, socket.socket],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    rx, tx = v4
    monkeypatch.setattr(mmsg, "_recvmmsg", lambda: None)
    assert open_reader(rx, slot_size=2048, gro=None) is None
    io = UdpIO(rx, {})
    dgrams = _datagrams(10)
    for d in dgrams:
        tx.sendto(d, rx.getsockname())
    got, _ = _read_all(io)
    assert [d for _, d, _ in got] == dgrams and io.batch is False and io._reader is None


def test_without_utp_a_datagram_is_read_the_plain_way(v4: tuple[socket.socket, socket.socket]) -> None:
    rx, tx = v4
    io = UdpIO(rx, {})
    tx.sendto(b"d1:y1:re", rx.getsockname())
    other: list[bytes] = []
    io.read(bytearray(65536), 512, None, lambda d, s, *, now: other.append(bytes(d)), 1.0, lambda s, e: None)
    assert other == [b"d1:y1:re"] and io._reader is None  # no ctypes for a TCP-only client's odd datagram
    assert (SOL_UDP, UDP_GRO) == (17, 104)


def test_many_sources_keep_their_addresses_and_the_cache_stays_bounded(
        v4: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch) -> None:
    rx, _ = v4
    monkeypatch.setattr(mmsg, "ADDR_CACHE_MAX", 4)
    senders = []
    for i in range(12):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"127.0.0.{i + 2}", 0))
        senders.append(s)
    try:
        io = UdpIO(rx, {})
        want = []
        for rnd in range(3):
            for i, s in enumerate(senders):
                data = b"\x01" + bytes([rnd, i]) * 12
                s.sendto(data, rx.getsockname())
                want.append((data, s.getsockname()))
        got, errors = _read_all(io)
        assert errors == [] and [(d, src) for _, d, src in got] == want
        assert io._reader is not None and len(io._reader._addrs) <= 4
    finally:
        for s in senders:
            s.close()


def test_recvmmsg_keeps_the_gil() -> None:
    """The call never blocks (MSG_DONTWAIT), so it holds on to the GIL: letting go of it handed the GIL to
    a hash thread that the loop then waited for (a PyDLL function; a CDLL one releases the GIL)."""
    import ctypes

    fn = mmsg._recvmmsg()
    assert fn is not None
    flags = fn._flags_  # type: ignore[attr-defined]
    assert flags & ctypes._FUNCFLAG_PYTHONAPI  # type: ignore[attr-defined]
    assert flags & ctypes._FUNCFLAG_USE_ERRNO  # type: ignore[attr-defined]
