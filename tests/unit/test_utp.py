from __future__ import annotations

import random
from pathlib import Path

import pytest
from helpers import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from minibt.errors import LocalProtocolError, UtpError
from minibt.ledbat import LedbatConfig
from minibt.utp import (
    Connected,
    ConnectionClosed,
    ConnectionReset,
    ConnectionTimedOut,
    DataReceived,
    IncomingConnection,
    UtpConnection,
    UtpEvent,
    UtpState,
)
from minibt.utp_codec import (
    ST_DATA,
    ST_FIN,
    ST_RESET,
    ST_STATE,
    ST_SYN,
    UtpHeader,
    decode_packet,
    encode_packet,
    is_utp_datagram,
    timestamp_us,
)
from minibt.utp_config import UtpConfig
from minibt.utp_mux import UtpMux

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "bep29"
A = ("192.0.2.1", 6881)
WIDE = UtpConfig(ledbat=LedbatConfig(initial_window_bytes=200_000))  # many packets in flight at once
B = ("192.0.2.2", 51413)


def vector(name: str) -> bytes:
    lines = (VECTORS / f"{name}.hex").read_text().splitlines()
    assert lines[0].startswith("# BEP 29")
    return bytes.fromhex("".join(line for line in lines if not line.startswith("#")).replace(" ", ""))


class FixedRng(random.Random):
    """randrange() returns a chosen value: pins connection ids and initial sequence numbers."""

    def __init__(self, value: int) -> None:
        super().__init__(0)
        self.value = value

    def randrange(self, *args: object, **kwargs: object) -> int:  # type: ignore[override]
        return self.value


def feed(conn: UtpConnection, datagrams: list[bytes], now: float) -> list[UtpEvent]:
    events: list[UtpEvent] = []
    for d in datagrams:
        h, sack, payload = decode_packet(d)
        events += conn.receive_packet(h, sack, payload, now=now)
    return events


def pair(
    now: float, rng: random.Random, config: UtpConfig | None = None, config_b: UtpConfig | None = None
) -> tuple[UtpConnection, UtpConnection]:
    """Initiator and acceptor after SYN / ST_STATE; the acceptor is still in SYN_RECV."""
    a = UtpConnection.connect(rng, now=now, config=config)
    (syn,) = a.datagrams_to_send(now=now)
    b = UtpConnection.accept(decode_packet(syn)[0], rng, now=now, config=config_b or config)
    assert feed(a, b.datagrams_to_send(now=now), now) == [Connected()]
    return a, b


def established(
    now: float, rng: random.Random, config: UtpConfig | None = None, config_b: UtpConfig | None = None
) -> tuple[UtpConnection, UtpConnection]:
    a, b = pair(now, rng, config, config_b)
    a.send(b"hi")
    assert feed(b, a.datagrams_to_send(now=now), now) == [Connected(), DataReceived(b"hi")]
    b.flush_acks(now=now)
    feed(a, b.datagrams_to_send(now=now), now)
    return a, b


def headers(datagrams: list[bytes]) -> list[UtpHeader]:
    return [decode_packet(d)[0] for d in datagrams]


# ---------------------------------------------------------------- codec vectors (BEP 29 text)

EXPECTED = {
    "syn": dict(type=ST_SYN, extension=0, connection_id=0x1234, timestamp_us=0x01020304, timestamp_diff_us=0,
                wnd_size=0x100000, seq_nr=1, ack_nr=0),
    "state": dict(type=ST_STATE, extension=0, connection_id=0x1234, timestamp_us=0x05060708,
                  timestamp_diff_us=10000, wnd_size=0x100000, seq_nr=0xABCD, ack_nr=1),
    "data": dict(type=ST_DATA, extension=0, connection_id=0x1235, timestamp_us=0x0A0B0C0D,
                 timestamp_diff_us=5000, wnd_size=0xFFFF, seq_nr=2, ack_nr=0xABCC),
    "fin": dict(type=ST_FIN, extension=0, connection_id=0x1235, timestamp_us=0x0A0B0C0E,
                timestamp_diff_us=5000, wnd_size=0xFFFF, seq_nr=3, ack_nr=0xABCC),
    "reset": dict(type=ST_RESET, extension=0, connection_id=0x1234, timestamp_us=1, timestamp_diff_us=0,
                  wnd_size=0, seq_nr=0xABCE, ack_nr=3),
    "sack": dict(type=ST_STATE, extension=1, connection_id=0x1235, timestamp_us=0x11223344,
                 timestamp_diff_us=0x100, wnd_size=0x80000, seq_nr=0x10, ack_nr=100),
}  # fmt: skip
PAYLOADS = {"data": b"hello"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_vector_decodes_to_bep_fields_and_reencodes(name: str) -> None:
    raw = vector(name)
    header, sack, payload = decode_packet(raw)
    assert header == UtpHeader(**EXPECTED[name])
    assert payload == PAYLOADS.get(name, b"")
    assert encode_packet(header, sack, payload) == raw


def test_first_bytes_have_type_in_high_nibble() -> None:
    # BEP 29 (and PROTOCOL.md 1.7.1): type << 4 | version; a SYN starts 0x41
    firsts = {name: vector(name)[0] for name in ("syn", "state", "data", "fin", "reset")}
    assert firsts == {"syn": 0x41, "state": 0x21, "data": 0x01, "fin": 0x11, "reset": 0x31}
    assert all(is_utp_datagram(vector(n)) for n in firsts)


def test_sack_bitmask_layout_lsb_first() -> None:
    header, sack, _ = decode_packet(vector("sack"))
    assert sack == bytes([0x05, 0x01, 0x00, 0x80])
    bits = int.from_bytes(sack, "little")
    acked = {header.ack_nr + 2 + i for i in range(32) if bits >> i & 1}
    assert acked == {102, 104, 110, 133}


def test_sack_emitted_by_receiver_matches_bep_layout(clock: FakeClock, rng: random.Random) -> None:
    now = clock.now()
    a, b = established(now, rng, WIDE)
    a.send(bytes(1200 * 40))
    pkts = a.datagrams_to_send(now=now)
    base = decode_packet(pkts[0])[0].seq_nr  # b's ack_nr + 1: withheld
    keep = [p for p in pkts if (decode_packet(p)[0].seq_nr - base) & 0xFFFF in (1, 3, 9, 32)]
    feed(b, keep, now)
    b.flush_acks(now=now)
    (ack,) = b.datagrams_to_send(now=now)
    h, sack, _ = decode_packet(ack)
    assert h.type == ST_STATE and h.ack_nr == (base - 1) & 0xFFFF and h.extension == 1
    assert sack == bytes([0x05, 0x01, 0x00, 0x80])  # same offsets as tests/vectors/bep29/sack.hex


def test_unknown_extension_is_skipped() -> None:
    header, sack, payload = decode_packet(vector("unknown_ext"))
    assert header.extension == 3 and sack == b"\x01\x00\x00\x00" and payload == b"x"


BAD = {
    "short": vector("syn")[:19],
    "version 2": bytes([0x42]) + vector("syn")[1:],
    "type 5": bytes([0x51]) + vector("syn")[1:],
    "extension header truncated": bytes([0x21, 0x01]) + vector("state")[2:] + b"\x00",
    "extension body truncated": bytes([0x21, 0x01]) + vector("state")[2:] + b"\x00\x08\x00\x00",
    "second extension truncated": bytes([0x21, 0x01]) + vector("state")[2:] + b"\x03\x01\x01\x00",
}


def test_sack_of_any_length_is_accepted() -> None:
    # libtorrent sizes its SACK as (span + 7) // 8 bytes, not the BEP's multiple of 4
    state = vector("state")
    for body in (b"\x05", b"\x05\x01\x00"):
        raw = bytes([0x21, 0x01]) + state[2:] + bytes([0, len(body)]) + body
        assert decode_packet(raw)[1] == body
    two = bytes([0x21, 0x01]) + state[2:] + b"\x01\x01\x07\x00\x01\x09"
    assert decode_packet(two)[1] == b"\x07"  # a second SACK is skipped like an unknown extension


@pytest.mark.parametrize("name", sorted(BAD))
def test_malformed_datagram_raises_utp_error(name: str) -> None:
    with pytest.raises(UtpError):
        decode_packet(BAD[name])


u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


@given(
    typ=st.integers(0, 4), cid=u16, ts=u32, tsd=u32, wnd=u32, seq=u16, ack=u16,
    sack=st.none() | st.integers(1, 8).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n)),
    payload=st.binary(max_size=64),
)  # fmt: skip
def test_round_trip(typ: int, cid: int, ts: int, tsd: int, wnd: int, seq: int, ack: int,
                    sack: bytes | None, payload: bytes) -> None:  # fmt: skip
    h = UtpHeader(type=typ, extension=int(sack is not None), connection_id=cid, timestamp_us=ts,
                  timestamp_diff_us=tsd, wnd_size=wnd, seq_nr=seq, ack_nr=ack)  # fmt: skip
    raw = encode_packet(h, sack, payload)
    assert decode_packet(raw) == (h, sack, payload)
    assert decode_packet(memoryview(raw)) == (h, sack, payload)


@settings(max_examples=400)
@given(st.binary(max_size=80) | st.binary(max_size=40).map(lambda b: bytes([0x21, 0x01]) + bytes(18) + b))
def test_garbage_only_raises_utp_error(data: bytes) -> None:
    try:
        decode_packet(data)
    except UtpError:
        pass


def test_encode_rejects_inconsistent_extension() -> None:
    h = UtpHeader(type=ST_STATE, connection_id=1, timestamp_us=0, timestamp_diff_us=0, wnd_size=0, seq_nr=0, ack_nr=0)
    with pytest.raises(LocalProtocolError):
        encode_packet(h, b"\x01\x00\x00\x00")
    with pytest.raises(LocalProtocolError):
        encode_packet(h, b"\x01\x00\x00")


# ---------------------------------------------------------------- connection setup (BEP 29 roles)


def test_connection_id_roles_and_syn_fields(clock: FakeClock) -> None:
    now = clock.now()
    a = UtpConnection.connect(FixedRng(0x1234), now=now)
    assert (a.recv_id, a.send_id) == (0x1234, 0x1235)
    (syn,) = a.datagrams_to_send(now=now)
    assert syn[0] == 0x41
    h = decode_packet(syn)[0]
    assert (h.connection_id, h.seq_nr, h.timestamp_diff_us) == (0x1234, 1, 0)
    assert h.timestamp_us == timestamp_us(now)
    b = UtpConnection.accept(h, FixedRng(0xABCD), now=now + 0.01)
    assert (b.recv_id, b.send_id) == (0x1235, 0x1234)
    (state,) = b.datagrams_to_send(now=now + 0.01)
    hs = decode_packet(state)[0]
    assert (hs.type, hs.connection_id, hs.seq_nr, hs.ack_nr) == (ST_STATE, 0x1234, 0xABCD, 1)
    assert hs.timestamp_diff_us == 10_000  # BEP 29: our clock minus the packet's timestamp
    assert feed(a, [state], now + 0.02) == [Connected()]
    a.send(b"hello")
    (data,) = a.datagrams_to_send(now=now + 0.02)
    hd = decode_packet(data)[0]
    assert (hd.type, hd.connection_id, hd.seq_nr, hd.ack_nr) == (ST_DATA, 0x1235, 2, 0xABCC)
    assert hd.timestamp_diff_us == 10_000
    assert feed(b, [data], now + 0.03) == [Connected(), DataReceived(b"hello")]


def test_acceptor_sends_no_data_before_initiators_first_data(clock: FakeClock, rng: random.Random) -> None:
    now = clock.now()
    a, b = pair(now, rng)
    assert b.state is UtpState.SYN_RECV
    assert b.send(b"bitfield") == 8
    clock.advance(0.5)
    assert b.datagrams_to_send(now=clock.now()) == []
    # a spoofed first ST_DATA that does not ack the acceptor's random seq_nr is ignored (2015 fix)
    spoof = UtpHeader(type=ST_DATA, connection_id=b.recv_id, timestamp_us=0, timestamp_diff_us=0,
                      wnd_size=65535, seq_nr=2, ack_nr=0x1111)  # fmt: skip
    assert b.receive_packet(spoof, None, b"x", now=clock.now()) == []
    assert b.datagrams_to_send(now=clock.now()) == [] and b.state is UtpState.SYN_RECV
    a.send(b"handshake")
    assert feed(b, a.datagrams_to_send(now=clock.now()), clock.now()) == [Connected(), DataReceived(b"handshake")]
    out = headers(b.datagrams_to_send(now=clock.now()))
    assert [h.type for h in out] == [ST_DATA]


def test_duplicate_syn_repeats_state(clock: FakeClock, rng: random.Random) -> None:
    a = UtpConnection.connect(rng, now=clock.now())
    (syn,) = a.datagrams_to_send(now=clock.now())
    b = UtpConnection.accept(decode_packet(syn)[0], rng, now=clock.now())
    first = b.datagrams_to_send(now=clock.now())
    assert feed(b, [syn], clock.now()) == []
    again = b.datagrams_to_send(now=clock.now())
    assert [h.seq_nr for h in headers(again)] == [h.seq_nr for h in headers(first)]


def test_connect_timeout_after_two_syn_resends(clock: FakeClock, rng: random.Random) -> None:
    a = UtpConnection.connect(rng, now=clock.now())
    sent = len(a.datagrams_to_send(now=clock.now()))
    events: list[UtpEvent] = []
    while not events:
        deadline = a.next_deadline()
        assert deadline is not None
        clock.jump_to(deadline)
        events = a.handle_timeout(now=clock.now())
        sent += len(a.datagrams_to_send(now=clock.now()))
    assert events == [ConnectionTimedOut()]
    assert sent == 3  # SYN + utp_syn_resends (2)
    assert clock.now() == pytest.approx(1000.0 + 3.0)  # utp_connect_timeout
    assert a.state is UtpState.CLOSED and a.next_deadline() is None


def test_syn_recv_times_out_without_data(clock: FakeClock, rng: random.Random) -> None:
    _, b = pair(clock.now(), rng)
    deadline = b.next_deadline()
    assert deadline is not None
    clock.jump_to(deadline)
    assert b.handle_timeout(now=clock.now()) == [ConnectionTimedOut()]


# ---------------------------------------------------------------- data, ordering, wrap-around


def test_sequence_numbers_wrap(clock: FakeClock) -> None:
    now = clock.now()
    a = UtpConnection.connect(FixedRng(7), now=now)
    (syn,) = a.datagrams_to_send(now=now)
    b = UtpConnection.accept(decode_packet(syn)[0], FixedRng(0xFFF0), now=now)
    feed(a, b.datagrams_to_send(now=now), now)
    a.send(b"go")
    feed(b, a.datagrams_to_send(now=now), now)
    data = random.Random(1).randbytes(1200 * 40)
    assert b.send(data) == len(data)
    got = bytearray()
    for _ in range(50):
        now += 0.01
        pkts = b.datagrams_to_send(now=now)
        got += b"".join(e.data for e in feed(a, pkts, now) if isinstance(e, DataReceived))
        a.flush_acks(now=now)
        feed(b, a.datagrams_to_send(now=now), now)
    seqs = {h.seq_nr for h in headers(pkts)} if pkts else set()
    assert bytes(got) == data
    assert b.stats()["retransmits"] == 0 and b.stats()["outstanding_packets"] == 0
    assert seqs.isdisjoint(range(0xFFF0, 0x10000))  # the last packets are past the wrap


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32), dup=st.booleans())
def test_any_arrival_order_delivers_the_same_bytes(seed: int, dup: bool) -> None:
    """Split invariance for datagrams: permuted (and duplicated) arrival gives the same stream."""
    rng = random.Random(seed)
    now = 1000.0
    a, b = established(now, rng, WIDE)
    data = rng.randbytes(rng.randrange(1, 30 * 1200))
    a.send(data)
    a.close()
    pkts = a.datagrams_to_send(now=now)
    assert decode_packet(pkts[-1])[0].type == ST_FIN
    order = pkts + (rng.sample(pkts, len(pkts) // 2) if dup else [])
    rng.shuffle(order)
    events = feed(b, order, now)
    assert b"".join(e.data for e in events if isinstance(e, DataReceived)) == data
    assert events[-1] == ConnectionClosed("fin")
    assert sum(isinstance(e, ConnectionClosed) for e in events) == 1


def test_fin_waits_for_missing_data(clock: FakeClock, rng: random.Random) -> None:
    now = clock.now()
    a, b = established(now, rng)
    a.send(b"x" * 3000)
    a.close()
    pkts = a.datagrams_to_send(now=now)
    assert [h.type for h in headers(pkts)] == [ST_DATA, ST_DATA, ST_DATA, ST_FIN]
    assert feed(b, [pkts[0], pkts[3], pkts[2]], now) == [DataReceived(b"x" * 1200)]
    assert feed(b, [pkts[1]], now) == [DataReceived(b"x" * 1800), ConnectionClosed("fin")]


def test_close_after_peers_fin_sends_no_fin_and_both_finish(clock: FakeClock, rng: random.Random) -> None:
    cfg = UtpConfig()
    a, b = established(clock.now(), rng)
    a.send(b"last words")
    a.close()
    with pytest.raises(LocalProtocolError):
        a.send(b"late")
    fin = a.datagrams_to_send(now=clock.now())
    assert [h.type for h in headers(fin)] == [ST_DATA, ST_FIN]
    assert feed(b, fin, clock.now()) == [DataReceived(b"last words"), ConnectionClosed("fin")]
    b.flush_acks(now=clock.now())
    (ack,) = b.datagrams_to_send(now=clock.now())
    assert decode_packet(ack)[0].ack_nr == headers(fin)[1].seq_nr  # the FIN takes a sequence number
    feed(a, [ack], clock.now())
    b.close()  # libtorrent would ignore a FIN acking its own FIN: b only lingers to re-ACK
    assert b.datagrams_to_send(now=clock.now()) == []
    assert b.next_deadline() == pytest.approx(clock.now() + cfg.linger_s)
    assert a.next_deadline() == pytest.approx(clock.now() + cfg.fin_wait_s)
    clock.advance(max(cfg.linger_s, cfg.fin_wait_s))
    for c in (a, b):
        assert c.handle_timeout(now=clock.now()) == []
        assert c.is_finished and c.next_deadline() is None


def test_simultaneous_close_exchanges_fins(clock: FakeClock, rng: random.Random) -> None:
    a, b = established(clock.now(), rng)
    a.close()
    b.close()
    fa, fb = a.datagrams_to_send(now=clock.now()), b.datagrams_to_send(now=clock.now())
    assert [h.type for h in headers(fa) + headers(fb)] == [ST_FIN, ST_FIN]
    assert feed(a, fb, clock.now()) == [ConnectionClosed("fin")]
    assert feed(b, fa, clock.now()) == [ConnectionClosed("fin")]
    for c, other in ((a, b), (b, a)):
        c.flush_acks(now=clock.now())
        feed(other, c.datagrams_to_send(now=clock.now()), clock.now())
    clock.advance(UtpConfig().linger_s)
    for c in (a, b):
        c.handle_timeout(now=clock.now())
        assert c.is_finished


def test_spoofed_reset_with_future_ack_is_ignored(clock: FakeClock, rng: random.Random) -> None:
    a, _ = established(clock.now(), rng)  # a sent SYN (seq 1) and one ST_DATA (seq 2)

    def rst(ack_nr: int) -> UtpHeader:
        return UtpHeader(type=ST_RESET, connection_id=a.recv_id, timestamp_us=0, timestamp_diff_us=0,
                         wnd_size=0, seq_nr=0, ack_nr=ack_nr)  # fmt: skip

    assert a.receive_packet(rst(503), None, b"", now=clock.now()) == []
    assert a.state is UtpState.CONNECTED
    assert a.receive_packet(rst(2), None, b"", now=clock.now()) == [ConnectionReset()]


# ---------------------------------------------------------------- windows, buffers, ACKs


def test_send_buffer_cap_gives_backpressure(clock: FakeClock, rng: random.Random) -> None:
    cfg = UtpConfig(send_buffer_bytes=10_000)
    a, _ = established(clock.now(), rng, cfg)
    assert a.send(bytes(25_000)) == 10_000
    assert a.send(b"more") == 0 and a.send_room() == 0
    a.datagrams_to_send(now=clock.now())  # sent but unacked still counts against the cap
    assert a.send_room() == 0


def test_advertised_window_and_reorder_cap(clock: FakeClock, rng: random.Random) -> None:
    small = UtpConfig(reorder_buffer_bytes=3000, payload_bytes=1000)
    now = clock.now()
    a, b = established(now, rng, UtpConfig(payload_bytes=1000, ledbat=WIDE.ledbat), small)
    a.send(bytes(5000))
    first = headers(a.datagrams_to_send(now=now))
    assert len(first) == 3  # BEP 29: b advertised a 3000-byte receive window

    def data(k: int) -> bytes:
        h = UtpHeader(type=ST_DATA, connection_id=b.recv_id, timestamp_us=0, timestamp_diff_us=0,
                      wnd_size=1 << 20, seq_nr=(first[0].seq_nr + k) & 0xFFFF, ack_nr=first[0].ack_nr)  # fmt: skip
        return encode_packet(h, None, bytes(1000))

    feed(b, [data(k) for k in range(1, 6)], now)  # a hole at k = 0: all five wait for it
    b.flush_acks(now=now)
    (ack,) = b.datagrams_to_send(now=now)
    assert decode_packet(ack)[0].wnd_size == 0  # BEP 29: bytes left in the receive buffer
    assert (b.stats()["reorder_drops"], b.stats()["reorder_bytes"]) == (2, 3000)
    assert feed(b, [data(0)], now) == [DataReceived(bytes(4000))]
    b.flush_acks(now=now)
    assert decode_packet(b.datagrams_to_send(now=now)[0])[0].wnd_size == 3000


def test_congestion_window_limits_packets_in_flight(clock: FakeClock, rng: random.Random) -> None:
    a, _ = established(clock.now(), rng)
    a.send(bytes(200_000))
    pkts = a.datagrams_to_send(now=clock.now())
    inflight = sum(len(decode_packet(p)[2]) for p in pkts)
    assert 0 < inflight <= a.stats()["max_window"] + 1200


def test_acks_are_coalesced_until_flush(clock: FakeClock, rng: random.Random) -> None:
    now = clock.now()
    a, b = established(now, rng)
    a.send(bytes(1200 * 2))
    feed(b, a.datagrams_to_send(now=now), now)
    assert b.datagrams_to_send(now=now) == []  # deferred
    b.flush_acks(now=now)
    (ack,) = b.datagrams_to_send(now=now)
    assert decode_packet(ack)[0].type == ST_STATE
    # without a flush, the delayed-ACK timer sends it
    a.send(bytes(100))
    feed(b, a.datagrams_to_send(now=now), now)
    deadline = b.next_deadline()
    assert deadline == pytest.approx(now + UtpConfig().ack_delay_s)
    clock.jump_to(deadline)
    b.handle_timeout(now=clock.now())
    assert [h.type for h in headers(b.datagrams_to_send(now=clock.now()))] == [ST_STATE]


def test_ack_piggybacks_on_data(clock: FakeClock, rng: random.Random) -> None:
    now = clock.now()
    a, b = established(now, rng)
    acks = b.stats()["acks_sent"]
    a.send(b"request")
    req = a.datagrams_to_send(now=now)
    feed(b, req, now)
    b.send(b"piece")
    b.flush_acks(now=now)
    out = headers(b.datagrams_to_send(now=now))
    assert [h.type for h in out] == [ST_DATA]
    assert out[0].ack_nr == headers(req)[0].seq_nr
    assert b.stats()["acks_sent"] == acks  # no separate ST_STATE


def test_keepalive_after_idle(clock: FakeClock, rng: random.Random) -> None:
    a, _ = established(clock.now(), rng)
    deadline = a.next_deadline()
    assert deadline == pytest.approx(clock.now() + 29.0)
    clock.jump_to(deadline)
    assert a.handle_timeout(now=clock.now()) == []
    assert [h.type for h in headers(a.datagrams_to_send(now=clock.now()))] == [ST_STATE]
    assert a.stats()["keepalives"] == 1


# ---------------------------------------------------------------- loss recovery, RTT


def _ack_from(b: UtpConnection, ack_nr: int, now: float, sack: bytes | None = None) -> UtpHeader:
    return UtpHeader(type=ST_STATE, extension=int(sack is not None), connection_id=b.send_id,
                     timestamp_us=timestamp_us(now), timestamp_diff_us=1000, wnd_size=1 << 20,
                     seq_nr=0, ack_nr=ack_nr)  # fmt: skip


def test_fast_retransmit_after_three_duplicate_acks(clock: FakeClock, rng: random.Random) -> None:
    now = clock.now()
    a, b = established(now, rng, WIDE)
    a.send(bytes(1200 * 3))
    pkts = headers(a.datagrams_to_send(now=now))
    assert len(pkts) == 3
    first = pkts[0].seq_nr
    now += 0.05
    a.receive_packet(_ack_from(b, first, now), None, b"", now=now)  # progress: not a duplicate
    for _ in range(2):
        a.receive_packet(_ack_from(b, first, now), None, b"", now=now)
    assert a.datagrams_to_send(now=now) == []
    a.receive_packet(_ack_from(b, first, now), None, b"", now=now)
    out = headers(a.datagrams_to_send(now=now))
    assert [h.seq_nr for h in out] == [(first + 1) & 0xFFFF]
    s = a.stats()
    assert (s["fast_retransmits"], s["retransmits"], s["dup_acks"], s["timeouts"]) == (1, 1, 3, 0)


def test_fast_retransmit_on_sack_evidence(clock: FakeClock, rng: random.Random) -> None:
    now = clock.now()
    a, b = established(now, rng, WIDE)
    a.send(bytes(1200 * 6))
    first = headers(a.datagrams_to_send(now=now))[0].seq_nr
    # ack_nr = first - 1; SACK first+1..first+3 (bits 0..2) -> 'first' has 3 acked after it: lost
    a.receive_packet(_ack_from(b, (first - 1) & 0xFFFF, now, b"\x07\x00\x00\x00"), b"\x07\x00\x00\x00", b"", now=now)
    out = headers(a.datagrams_to_send(now=now))
    assert [h.seq_nr for h in out] == [first]
    assert a.stats()["fast_retransmits"] == 1
    assert a.stats()["loss_cuts"] == 1


def test_rto_backoff_and_window_collapse(clock: FakeClock, rng: random.Random) -> None:
    now = clock.now()
    a, b = established(now, rng)
    rto = a.stats()["rto_ms"] / 1000
    assert rto == pytest.approx(0.5)  # max(rtt + 4 * rtt_var, 500 ms) with a ~0 RTT
    a.send(bytes(1200 * 4))
    assert len(a.datagrams_to_send(now=now)) == 2  # initial window 3000 bytes
    deadline = a.next_deadline()
    assert deadline == pytest.approx(now + rto)
    times = []
    for _ in range(3):
        clock.jump_to(a.next_deadline() or 0)
        assert a.handle_timeout(now=clock.now()) == []
        times.append(clock.now())
        out = headers(a.datagrams_to_send(now=clock.now()))
        assert len(out) == 1  # BEP 29: window = one (minimum) packet after a timeout
        assert a.stats()["max_window"] == 150
    assert times[1] - times[0] == pytest.approx(2 * rto) and times[2] - times[1] == pytest.approx(4 * rto)
    clock.jump_to(a.next_deadline() or 0)
    assert a.handle_timeout(now=clock.now()) == [ConnectionTimedOut()]  # utp_num_resends = 3
    assert a.stats()["timeouts"] == 4  # the last one is fatal


def test_rtt_estimate_follows_bep_formula(clock: FakeClock, rng: random.Random) -> None:
    now = clock.now()
    a, b = established(now, rng)
    samples = []
    for rtt in (0.2, 0.3, 0.25):
        a.send(b"x")
        (p,) = headers(a.datagrams_to_send(now=now))
        now += rtt
        a.receive_packet(_ack_from(b, p.seq_nr, now), None, b"", now=now)
        samples.append(rtt)
    expect_rtt, expect_var = 0.0, 0.0
    for i, s in enumerate([0.0] + samples):  # first sample: established()'s ~0 s round trip
        if i == 0:
            expect_rtt, expect_var = s, s / 2
        else:
            expect_var += (abs(expect_rtt - s) - expect_var) / 4
            expect_rtt += (s - expect_rtt) / 8
    st_ = a.stats()
    assert st_["rtt_ms"] == pytest.approx(expect_rtt * 1000)
    assert st_["rto_ms"] == pytest.approx(max(expect_rtt + 4 * expect_var, 0.5) * 1000)


def test_ack_for_unsent_packet_is_ignored(clock: FakeClock, rng: random.Random) -> None:
    now = clock.now()
    a, b = established(now, rng)
    a.send(bytes(100))
    (p,) = headers(a.datagrams_to_send(now=now))
    bogus = UtpHeader(type=ST_DATA, connection_id=b.send_id, timestamp_us=0, timestamp_diff_us=0,
                      wnd_size=1 << 20, seq_nr=(p.ack_nr + 1) & 0xFFFF, ack_nr=(p.seq_nr + 100) & 0xFFFF)  # fmt: skip
    assert a.receive_packet(bogus, None, b"evil", now=now) == []
    assert a.stats()["invalid_acks"] == 1 and a.stats()["outstanding_packets"] == 1


# ---------------------------------------------------------------- multiplexer


def mux_pair(clock: FakeClock) -> tuple[UtpMux, UtpMux, UtpConnection, UtpConnection]:
    ma, mb = UtpMux(random.Random(1)), UtpMux(random.Random(2))
    now = clock.now()
    ca = ma.connect(B, now=now)
    ev = [e for d in ma.datagrams_to_send(now=now) for e in mb.receive_datagram(d.data, A, now=now)]
    assert len(ev) == 1 and isinstance(ev[0][1], IncomingConnection) and ev[0][0] == (A, ca.send_id)
    cb = ev[0][1].conn
    for d in mb.datagrams_to_send(now=now):
        assert ma.receive_datagram(d.data, B, now=now) == [((B, ca.recv_id), Connected())]
    return ma, mb, ca, cb


def shuttle(src: UtpMux, dst: UtpMux, src_addr: tuple[str, int], now: float) -> list[object]:
    events: list[object] = []
    for d in src.datagrams_to_send(now=now):
        events += dst.receive_datagram(d.data, src_addr, now=now)
    dst.socket_drained(now=now)
    return events


@settings(max_examples=200, deadline=None)
@given(junk=st.lists(st.binary(max_size=60) | st.tuples(st.integers(0, 4), u16, st.binary(max_size=40)).map(
    lambda t: bytes([t[0] << 4 | 1, 0]) + t[1].to_bytes(2, "big") + bytes(16) + t[2]), max_size=8))
def test_mux_survives_garbage_and_other_connections_keep_working(junk: list[bytes]) -> None:
    clock = FakeClock()
    ma, mb, ca, cb = mux_pair(clock)
    ca.send(b"before")
    assert shuttle(ma, mb, A, clock.now())[-1][1] == DataReceived(b"before")  # type: ignore[index]
    for d in junk:
        mb.receive_datagram(d, ("198.51.100.7", 9), now=clock.now())
    mb.datagrams_to_send(now=clock.now())
    shuttle(mb, ma, B, clock.now())
    ca.send(b"after")
    assert shuttle(ma, mb, A, clock.now())[-1][1] == DataReceived(b"after")  # type: ignore[index]
    assert cb.state is UtpState.CONNECTED


def test_mux_counts_garbage(clock: FakeClock) -> None:
    m = UtpMux(random.Random(1))
    assert m.receive_datagram(b"\x41garbage", A, now=clock.now()) == []
    assert m.receive_datagram(b"d1:ad2:id20:", A, now=clock.now()) == []
    assert m.stats()["garbage"] == 2


def test_mux_resets_unknown_connection_rate_limited(clock: FakeClock) -> None:
    m = UtpMux(random.Random(1), config=UtpConfig(rst_per_s=2.0))
    stray = vector("data")
    for _ in range(5):
        m.receive_datagram(stray, A, now=clock.now())
    out = m.datagrams_to_send(now=clock.now())
    assert len(out) == 2 and all(d.addr == A for d in out)
    h = decode_packet(out[0].data)[0]
    assert (h.type, h.connection_id, h.ack_nr) == (ST_RESET, 0x1235, 2)
    assert m.stats()["resets_suppressed"] == 3
    m.receive_datagram(vector("reset"), A, now=clock.now())  # never answer a RESET
    assert m.datagrams_to_send(now=clock.now()) == []
    clock.advance(1.0)
    m.receive_datagram(stray, A, now=clock.now())
    assert len(m.datagrams_to_send(now=clock.now())) == 1


def test_mux_half_open_cap(clock: FakeClock) -> None:
    m = UtpMux(random.Random(1), config=UtpConfig(max_half_open=3, rst_per_s=100))
    syn = vector("syn")
    accepted = 0
    for i in range(5):
        evs = m.receive_datagram(syn, ("203.0.113.1", 1000 + i), now=clock.now())
        accepted += len(evs)
    assert accepted == 3 and m.stats()["half_open"] == 3 and m.stats()["syns_refused"] == 2


def test_mux_syn_looks_only_at_half_open_connections(clock: FakeClock) -> None:
    """A SYN does not walk every connection (a flood of them cost 71 us each at 500); the half-open slots of
    connections that timed out are free again."""

    class NoWalk(dict):  # type: ignore[type-arg]
        syn = False

        def values(self):  # type: ignore[no-untyped-def]
            assert not NoWalk.syn, "a SYN walked every connection"
            return super().values()

    m = UtpMux(random.Random(1), config=UtpConfig(max_half_open=3, rst_per_s=100))
    m._conns = NoWalk(m._conns)  # type: ignore[assignment]
    syn = vector("syn")

    def syns(host: str) -> int:
        NoWalk.syn = True
        try:
            return sum(len(m.receive_datagram(syn, (host, 1000 + i), now=clock.now())) for i in range(5))
        finally:
            NoWalk.syn = False

    assert syns("203.0.113.1") == 3
    while (deadline := m.next_deadline()) is not None:  # the three never complete: they time out
        clock.jump_to(deadline)
        list(m.handle_timeout(now=clock.now()))
        m.datagrams_to_send(now=clock.now())
    assert len(m) == 0
    assert syns("203.0.113.2") == 3


def test_mux_reset_matches_either_connection_id(clock: FakeClock) -> None:
    ma, mb, ca, cb = mux_pair(clock)
    # libutp answers stray packets with a RESET carrying the id it saw: for us that is our send id
    rst = encode_packet(UtpHeader(type=ST_RESET, connection_id=ca.send_id, timestamp_us=0, timestamp_diff_us=0,
                                  wnd_size=0, seq_nr=9, ack_nr=1), None)  # fmt: skip
    assert ma.receive_datagram(rst, B, now=clock.now()) == [((B, ca.recv_id), ConnectionReset())]
    ma.datagrams_to_send(now=clock.now())
    assert len(ma) == 0  # the closed connection is forgotten


def test_mux_timeouts_and_reaping(clock: FakeClock) -> None:
    m = UtpMux(random.Random(1))
    c = m.connect(B, now=clock.now())
    key = (B, c.recv_id)
    events: list[object] = []
    while not events:
        deadline = m.next_deadline()
        assert deadline is not None
        clock.jump_to(deadline)
        events = list(m.handle_timeout(now=clock.now()))
        m.datagrams_to_send(now=clock.now())
    assert events == [(key, ConnectionTimedOut())]
    assert m.connection(key) is None and m.next_deadline() is None


def test_is_utp_datagram() -> None:
    assert is_utp_datagram(vector("syn"))
    assert not is_utp_datagram(vector("syn")[:19])
    assert not is_utp_datagram(b"d1:ad2:id20:" + bytes(20))  # DHT
    assert not is_utp_datagram(bytes(20))  # UDP tracker connect starts 0x00


@given(st.integers(0, 0xFFFF), st.sets(st.integers(0, 0xFFFF), max_size=1200), st.integers(0, 300))
@settings(max_examples=200, deadline=None)
def test_sack_of_many_held_packets_looks_at_its_window_only(ack_nr: int, far: set[int], near: int) -> None:
    """However many packets are held, the SACK is the window's bits (the walk is bounded by the window)."""
    from minibt.utp_codec import MAX_SACK_BYTES, build_sack

    held = far | {(ack_nr + 2 + i * 3) & 0xFFFF for i in range(near)}  # often over the window's 256
    window = MAX_SACK_BYTES * 8
    mask = sum(1 << off for off in range(window) if (ack_nr + 2 + off) & 0xFFFF in held)
    want = mask.to_bytes((mask.bit_length() + 31) // 32 * 4, "little") if mask else None
    assert build_sack(ack_nr, held) == want
