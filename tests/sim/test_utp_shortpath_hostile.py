"""The mux's short path for in-order data (``UtpConnection.take_run``) against hostile batches.

``test_utp_link.py`` shows that the short path changes nothing over lossy, reordering links of honest peers.
Here the datagrams of each read are an honest sender's, then tampered with as a hostile peer would: acks of
data never sent, older acks, sequence numbers out of place, extensions, other packet types, truncated
headers, delay fields and windows of any value, another connection id or another source address, in runs
the short path would otherwise take.  Two receivers in the same state, one taking in-order runs by the
short path and one sending every datagram through ``receive_packet``, must end every read in the same
state: the bytes they took in, their events, counters, ACK datagrams and deadlines.  A difference is a
place where a peer could make the fast path accept what the general one refuses (or the reverse).
"""

from __future__ import annotations

import random
import re
import struct
from collections.abc import Sequence

import pytest

from minibt.urls import Addr
from minibt.utp import UtpState
from minibt.utp_codec import Payload
from minibt.utp_mux import UtpMux

A_ADDR: Addr = ("127.0.0.1", 1000)  # the receiver
B_ADDR: Addr = ("127.0.0.1", 2000)  # the (tampered-with) sender
OTHER: Addr = ("127.0.0.1", 2001)


class _Pair:
    """A receiver ``a`` (collecting into ``conn.received``, as utp_peers.py) and an honest sender ``b``."""

    def __init__(self, seed: int, *, short_path: bool) -> None:
        self.a, self.b = UtpMux(random.Random(seed)), UtpMux(random.Random(seed + 1))
        self.now = 0.0
        self.conn = self.a.connect(B_ADDR, now=self.now)
        self.conn.received = bytearray()
        if not short_path:
            def general_only(datas: Sequence[Payload], addrs: Sequence[Addr], i: int, addr: Addr, now: float) -> int:
                return i

            self.conn.take_run = general_only  # type: ignore[method-assign]
        self.taken = bytearray()
        self.events: list[object] = []
        self.deliver(self.b, A_ADDR, self.out(self.a))  # SYN
        self.deliver(self.a, B_ADDR, self.out(self.b))  # its ST_STATE
        self.conn.send(b"hi")  # the initiator's first data proves it saw the acceptor's seq_nr (BEP 29)
        self.deliver(self.b, A_ADDR, self.out(self.a))
        self.deliver(self.a, B_ADDR, self.out(self.b))
        self.sender = next(iter(self.b._conns.values()))

    def out(self, mux: UtpMux) -> list[bytes]:
        """What ``mux`` sends to the other side (a reset to a spoofed source goes elsewhere: not delivered)."""
        to = B_ADDR if mux is self.a else A_ADDR
        return [od.data for od in mux.datagrams_to_send(now=self.now) if od.addr == to]

    def deliver(self, dst: UtpMux, src_addr: Addr, datas: Sequence[bytes],
                addrs: Sequence[Addr] | None = None) -> list[object]:
        """One read's datagrams into ``dst`` as utp_peers.UtpPeers.receive_batch hands them over."""
        addrs = list(addrs) if addrs is not None else [src_addr] * len(datas)
        views = [memoryview(d) for d in datas]
        evs: list[object] = []
        i = 0
        while i < len(views):
            i = dst.receive_run(views, addrs, i, evs, now=self.now)  # type: ignore[arg-type]
        dst.socket_drained(now=self.now)
        if dst is self.a and self.conn.received:
            self.taken += self.conn.received
            self.conn.received = bytearray()
        return evs

    def state(self) -> tuple[object, ...]:
        """What the receiver took in and everything it would act on later, LEDBAT's delay history included."""
        c = self.conn
        cc = c._cc
        ledbat = [(name, repr(getattr(cc, name, None))) for name in type(cc).__slots__]
        return (bytes(self.taken), c.state, c.stats(), self.a.stats(), c.next_deadline(), c.held_bytes, ledbat)


_FIELD = struct.Struct(">BBHIIIHH")
_ALL = ("ack_unsent_all", "ack_older_all", "tsd_all")
KINDS = ("none", "ack_unsent", "ack_older", "ack_far", "seq_ahead", "seq_behind", "seq_same", "ext", "type",
         "version", "short", "header_only", "tsd", "wnd", "cid", "source", "swap", "dup", "drop", *_ALL)


def _tamper(rng: random.Random, datas: list[bytes]) -> tuple[list[bytes], list[Addr], str]:
    """The honest read ``datas`` with one hostile change (its name returned, for the failure message)."""
    out = [bytearray(d) for d in datas]
    addrs = [B_ADDR] * len(out)
    kind = rng.choice(KINDS) if rng.random() < 0.35 else "none"  # honest reads between, so runs form again
    if not out or kind == "none":
        return [bytes(d) for d in out], addrs, "none"
    k = rng.randrange(len(out))
    typ, ext, cid, ts, tsd, wnd, seq, ack = _FIELD.unpack_from(out[k], 0)  # ack: what the receiver sent last
    if kind == "ack_unsent":
        ack = (ack + rng.randrange(1, 200)) & 0xFFFF
    elif kind == "ack_older":
        ack = (ack - rng.randrange(1, 200)) & 0xFFFF
    elif kind == "ack_far":
        ack = (ack + 0x8000 + rng.randrange(-3, 4)) & 0xFFFF
    elif kind == "seq_ahead":
        seq = (seq + rng.randrange(1, 100)) & 0xFFFF
    elif kind == "seq_behind":
        seq = (seq - rng.randrange(1, 100)) & 0xFFFF
    elif kind == "seq_same" and k > 0:
        seq = _FIELD.unpack_from(out[k - 1], 0)[6]
    elif kind == "ext":
        ext = rng.choice([1, 2, 0xFF])
    elif kind == "type":
        typ = (rng.choice([1, 2, 3, 4]) << 4) | 1  # ST_FIN, ST_STATE, ST_RESET, ST_SYN
    elif kind == "version":
        typ = (typ & 0xF0) | rng.choice([0, 2])
    elif kind == "cid":
        cid = (cid + rng.randrange(1, 0x10000)) & 0xFFFF
    elif kind == "tsd":
        tsd = rng.getrandbits(32)
    elif kind == "wnd":
        wnd = rng.choice([0, 1, rng.getrandbits(32)])
    if kind in _ALL:
        delta = 7 if kind == "ack_unsent_all" else -1
        for d in out:
            f = list(_FIELD.unpack_from(d, 0))
            if kind == "tsd_all":
                f[4] = rng.getrandbits(32)
            else:
                f[7] = (f[7] + delta) & 0xFFFF
            _FIELD.pack_into(d, 0, *f)
    else:
        _FIELD.pack_into(out[k], 0, typ, ext, cid, ts, tsd, wnd, seq, ack)
    if kind == "short":
        del out[k][rng.randrange(1, 20):]
    elif kind == "header_only":
        del out[k][20:]
    elif kind == "source":
        addrs[k] = OTHER
    elif kind == "swap" and len(out) > 1:
        j = rng.randrange(len(out))
        out[k], out[j] = out[j], out[k]
    elif kind == "dup":
        out.insert(k, bytearray(out[k]))
        addrs.insert(k, B_ADDR)
    elif kind == "drop":
        del out[k]
        del addrs[k]
    return [bytes(d) for d in out], addrs, kind


def _events(evs: Sequence[object]) -> list[str]:
    return [re.sub(r" at 0x[0-9a-f]+", "", repr(e)) for e in evs]  # a new connection's object, by its type


@pytest.mark.parametrize("seed", range(12))
def test_hostile_reads_end_in_the_same_state_with_and_without_the_short_path(seed: int) -> None:
    """Rounds of: the sender's next datagrams, tampered with, read by both receivers; their ACKs back (each
    way takes a while, so packets carry delay samples); time moves on (timeouts and retransmissions
    included).  A connection that a hostile change ended (a spoofed reset, say) is replaced by a new pair,
    so every seed runs all its rounds."""
    rng = random.Random(1000 + seed)
    kinds: list[str] = []
    taken = [0]

    def pairs(n: int) -> tuple[_Pair, _Pair]:
        short, general = _Pair(seed * 1000 + n, short_path=True), _Pair(seed * 1000 + n, short_path=False)
        take = short.conn.take_run

        def counting(datas: Sequence[Payload], addrs: Sequence[Addr], i: int, addr: Addr, now: float) -> int:
            j = take(datas, addrs, i, addr, now)
            taken[0] += j - i
            return j

        short.conn.take_run = counting  # type: ignore[method-assign]
        return short, general

    short, general = pairs(0)
    for round_no in range(200):
        where = f"seed {seed} round {round_no} after {kinds[-3:]}"
        assert short.state() == general.state(), where
        if short.conn.state is not UtpState.CONNECTED or short.sender.state is not UtpState.CONNECTED:
            short, general = pairs(round_no)
        payload = rng.randbytes(rng.choice([1, 700, 3000, 20_000, 60_000]))
        assert short.sender.send(payload) == general.sender.send(payload), where
        datas = short.out(short.b)
        assert datas == general.out(general.b), where
        tampered, addrs, kind = _tamper(rng, datas)
        kinds.append(kind)
        hop = rng.choice([0.0005, 0.002, 0.02])  # one way: each data packet and each ACK carries a delay sample
        short.now += hop
        general.now += hop
        ev_s = short.deliver(short.a, B_ADDR, tampered, addrs)
        ev_g = general.deliver(general.a, B_ADDR, tampered, addrs)
        assert _events(ev_s) == _events(ev_g), where
        assert short.state() == general.state(), where
        acks = short.out(short.a)
        assert acks == general.out(general.a), where
        dt = rng.choice([0.001, 0.01, 0.01, 0.2, 1.5])
        for p in (short, general):
            p.now += hop
            p.deliver(p.b, A_ADDR, acks)
            p.now += dt
            p.events.append((_events(p.a.handle_timeout(now=p.now)), _events(p.b.handle_timeout(now=p.now))))
        assert short.events == general.events, where
    assert short.state() == general.state()
    # The comparison means something: the short path took in-order runs, and most kinds of change were made.
    assert taken[0] >= 50, (taken, kinds)
    assert len(set(kinds)) >= 8, kinds
