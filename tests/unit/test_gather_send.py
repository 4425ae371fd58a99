"""TCP sends gather the outbox's buffers (issue 15): ``PeerWire.parts_to_send`` hands over the queued
buffers themselves, ``peer.drop_sent`` keeps what a short ``sendmsg`` left, and the loop sends them in
order, at most ``IOV_MAX`` at a time, whatever the kernel takes per call."""

from __future__ import annotations

import random
import socket

from minibt.loop import EventLoop, _PeerSock
from minibt.peer import IOV_MAX, drop_sent
from minibt.session import Session
from minibt.settings import SessionConfig
from minibt.workers import InlineHasher
from tests.helpers import FakeClock
from tests.unit.test_wire import make_wire


def test_drop_sent_leaves_exactly_the_unsent_bytes(rng: random.Random) -> None:
    for _ in range(300):
        parts: list[bytes | memoryview] = [rng.randbytes(rng.randint(1, 40)) for _ in range(rng.randint(1, 12))]
        if rng.random() < 0.5:
            parts[0] = memoryview(bytes(parts[0]))
        whole = b"".join(parts)
        sent = rng.randint(0, len(whole))
        left = drop_sent(list(parts), sent)
        if sent == len(whole):
            assert left is None
        else:
            assert left is not None and b"".join(left) == whole[sent:]
            assert all(len(p) for p in left)


def test_parts_to_send_drains_what_data_to_send_would(rng: random.Random) -> None:
    for _ in range(50):
        a, b = make_wire(), make_wire()
        block = rng.randbytes(5000)
        for w in (a, b):
            w.send_have_all()
            w.have(3)
            w.piece(1, 0, memoryview(block)[:4000])
            w.keepalive()
            w.piece(2, 100, block)
        while a.outbox_len:
            limit = rng.randint(1, 6000)
            assert b"".join(a.parts_to_send(limit, now=1.0)) == b.data_to_send(limit, now=1.0)
        assert b.outbox_len == 0 and a.stats() == b.stats()


def test_the_loop_sends_more_buffers_than_one_sendmsg_takes_in_order_through_short_sends(
    clock: FakeClock,
) -> None:
    lp = EventLoop(Session(rng=random.Random(1), config=SessionConfig(encryption="none")), clock=clock,
                   hasher=InlineHasher(), bind="127.0.0.1", port=0)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # many short sends
    rng = random.Random(7)
    parts: list[bytes | memoryview] = [rng.randbytes(rng.randint(1, 300)) for _ in range(3 * IOV_MAX + 5)]
    expected = b"".join(parts)
    queue = [parts]

    def parts_to_send(cid: int, limit: int, *, now: float) -> list[bytes | memoryview]:
        return queue.pop() if queue else []

    lp.session.parts_to_send = parts_to_send  # type: ignore[method-assign]
    ps = _PeerSock(9, ours, connecting=False)
    got = b""
    try:
        for _ in range(10_000):
            lp._flush(ps, 0.0)
            if ps.out is None and not queue:
                break
            got += theirs.recv(1 << 20)
        theirs.setblocking(False)
        while len(got) < len(expected):
            got += theirs.recv(1 << 20)
    finally:
        if ps.events:
            lp.sel.unregister(ours)
        ours.close()
        theirs.close()
        lp.close()
    assert got == expected
