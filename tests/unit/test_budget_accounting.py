"""budget.py's per-connection, per-torrent and per-session terms, measured (issue 10).

Each test builds the real object, grows it to its cap through its public API, measures the bytes
it holds with tracemalloc (the object kept alive), and checks the measurement against the term
budget.py charges for it.  A term may overstate (it is a worst case, and it also stands for the
small objects around the one measured) but never by more than TOLERANCE: a term that is far too
large wastes budget the connections could use.
"""

from __future__ import annotations

import gc
import random
import struct
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from test_utp import established

from minibt.budget import (
    CANDIDATE_BYTES,
    CONN_OBJECTS_BYTES,
    INCOMING_REQUEST_BYTES,
    OUTSTANDING_REQUEST_BYTES,
    PEX_CONN_BYTES,
    PICKER_PEER_FIXED_BYTES,
    PICKER_PIECE_BYTES,
    SESSION_TABLES_BYTES,
    UTP_CONN_FIXED_BYTES,
    MiB,
    conn_bytes,
    fit_budget,
    utp_conn_bytes,
    wire_recv_bytes,
    worst_case_bytes,
)
from minibt.dialer import CandidatePool
from minibt.download import MAX_ALLOWED_FAST_IN
from minibt.errors import CloseReason
from minibt.extension import apply_peer_handshake
from minibt.peer import Active, IncomingRequest, PeerConnection, PeerSource
from minibt.pex import PEX_MAX_PEERS_PER_SOURCE, PexReceiver, PexSender
from minibt.picker import Block, PiecePicker
from minibt.reputation import MAX_IPS, MAX_LEDGER_RECORDS, BlockRecord, Reputation
from minibt.settings import DEFAULT_MAX_CANDIDATES
from minibt.utp_codec import decode_packet
from minibt.utp_config import UtpConfig
from minibt.wire import PeerWire, RequestsReceived
from minibt.wire_codec import BLOCK_LEN, MAX_EXT_LEN

TOLERANCE = 3.0  # a term is at most this many times what was measured
PIECE_LEN = 256 * 1024
PIECES = 16384  # a 4 GiB torrent: the per-piece terms dominate


def traced(build: Callable[[], Any]) -> tuple[int, Any]:
    """Bytes allocated by ``build()`` and still held by what it returns."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = build()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before, kept
    finally:
        tracemalloc.stop()


def within(measured: int, term: int) -> None:
    assert measured <= term, f"measured {measured} B > budget term {term} B"
    assert term <= TOLERANCE * measured, f"budget term {term} B > {TOLERANCE} x measured {measured} B"


def make_wire(num_pieces: int = PIECES) -> PeerWire:
    return PeerWire(num_pieces=num_pieces, piece_length=PIECE_LEN, total_length=num_pieces * PIECE_LEN,
                    fast=True, extension=True, now=0.0)


# ---------------------------------------------------------------------- per connection


@pytest.mark.parametrize("frame", ["extended", "piece", "bitfield"])
def test_receive_buffer_at_its_largest_partial_frame_fits_its_term(frame: str) -> None:
    def grow() -> PeerWire:
        w = make_wire()
        if frame == "extended":  # the largest legal frame: one byte short of a MAX_EXT_LEN message
            head, body = struct.pack(">IBB", 2 + MAX_EXT_LEN, 20, 1), MAX_EXT_LEN - 1
        elif frame == "piece":
            head, body = struct.pack(">IBII", 9 + BLOCK_LEN, 7, 0, 0), BLOCK_LEN - 1
        else:
            head, body = struct.pack(">IB", 1 + PIECES // 8, 5), PIECES // 8 - 1
        w.receive_data(head, now=0.0)
        for off in range(0, body, 1000):  # the way a slow peer trickles it in
            w.receive_data(b"\x00" * min(1000, body - off), now=0.0)
        assert w.stats()["rx_buffered"] == len(head) + body  # one byte short of the whole frame
        return w

    empty, _ = traced(make_wire)
    measured, _ = traced(grow)
    biggest = {"extended": MAX_EXT_LEN, "piece": BLOCK_LEN, "bitfield": PIECES // 8}[frame]
    assert biggest <= measured - empty <= wire_recv_bytes(PIECES)


def test_receive_buffer_over_the_extended_cap_closes_the_connection() -> None:
    from minibt.errors import RemoteProtocolError

    w = make_wire()
    with pytest.raises(RemoteProtocolError) as e:
        w.receive_data(struct.pack(">IBB", 3 + MAX_EXT_LEN, 20, 1), now=0.0)
    assert e.value.reason is CloseReason.MESSAGE_TOO_LARGE


def test_connection_objects_fit_their_term() -> None:
    """PeerConnection + PeerWire, with a maximal BEP 10 handshake applied and allowed-fast at its cap."""
    def grow() -> PeerConnection:
        c = PeerConnection(1, ("10.0.0.1", 6881), outgoing=True, source=PeerSource.TRACKER, handshake=None,  # type: ignore[arg-type]
                           now=0.0)
        c.enter(Active(make_wire()))
        d: dict[bytes, object] = {b"m": {b"ut_pex": 1, b"ut_metadata": 2}, b"v": b"x" * 64, b"yourip": bytes(16),
                                  b"metadata_size": 1 << 20, b"reqq": 500, b"p": 6881}
        d.update({b"junk%d" % i: b"y" * 30 for i in range(800)})  # ~32 KiB: the frame cap
        apply_peer_handshake(c, d)
        c.allowed_fast_in.update(range(MAX_ALLOWED_FAST_IN))
        c.allowed_fast_out.update(range(10))
        return c

    measured, c = traced(grow)
    assert len(c.ext) == 5  # only the kept keys; the 800 others are gone
    within(measured, CONN_OBJECTS_BYTES)


def test_incoming_request_queue_at_its_cap_fits_its_term() -> None:
    n = 500

    def grow() -> dict[IncomingRequest, None]:
        w = make_wire()
        frames = b"".join(struct.pack(">IBIII", 13, 6, 1000 + i // 16, (i % 16) * BLOCK_LEN, BLOCK_LEN)
                          for i in range(n))
        q: dict[IncomingRequest, None] = {}
        for m in w.receive_data(frames, now=0.0, runs=True):  # as the session reads them
            assert isinstance(m, RequestsReceived)
            for r in m.requests:
                q[r] = None  # what upload.py queues per request
        return q

    wire_only, _ = traced(make_wire)
    measured, q = traced(grow)
    assert len(q) == n
    within(measured - wire_only, n * INCOMING_REQUEST_BYTES)


def test_picker_peer_state_with_outstanding_requests_fits_its_terms() -> None:
    picker = PiecePicker(PIECES, PIECE_LEN, PIECES * PIECE_LEN, random.Random(1))
    out = 250

    def grow() -> list[Block]:
        picker.peer_bitfield(7, b"\xff" * (PIECES // 8))
        return picker.pick(7, out)

    measured, blocks = traced(grow)
    assert len(blocks) == out == picker.num_outstanding(7)
    within(measured, PICKER_PEER_FIXED_BYTES + PIECES + out * OUTSTANDING_REQUEST_BYTES)


def test_pex_state_of_one_connection_at_its_caps_fits_its_term() -> None:
    connected = {(f"10.1.{i // 250}.{i % 250}", 6881 + i): 0 for i in range(200)}

    def grow() -> tuple[PexSender, PexReceiver]:
        sender = PexSender(peer_addr=("10.9.9.9", 6881))
        payload = sender.poll(connected, now=0.0)
        assert payload is not None
        receiver = PexReceiver()
        receiver.receive(payload, now=0.0)
        return sender, receiver

    measured, (_, receiver) = traced(grow)
    assert len(receiver.learned()) == PEX_MAX_PEERS_PER_SOURCE
    within(measured, PEX_CONN_BYTES)


@pytest.mark.parametrize("buffer_kib", [64, 256, 1024])
@pytest.mark.parametrize("payload_len", [1, 1200])
def test_utp_send_and_reorder_buffers_at_their_caps_fit_their_term(buffer_kib: int, payload_len: int) -> None:
    """Both buffers full: the sender's queue at send_buffer_bytes, the receiver holding out-of-order
    packets (tiny ones cost more per byte: the count cap bounds them)."""
    buf = buffer_kib * 1024
    cfg = UtpConfig(send_buffer_bytes=buf, reorder_buffer_bytes=buf)

    def grow() -> tuple[Any, Any]:
        a, b = established(0.0, random.Random(1), cfg)
        a.send(b"z")
        (d,) = a.datagrams_to_send(now=0.0)
        h = decode_packet(d)[0]
        for k in range(1, 3000):  # seq + 0 never arrives: everything after it waits
            b.receive_packet(h._replace(seq_nr=(h.seq_nr + k) & 0xFFFF), None,
                             bytes([k & 255]) * payload_len, now=0.0)
        while a.send(b"y" * 65536):
            pass
        a.datagrams_to_send(now=0.0)
        return a, b

    measured, (a, b) = traced(grow)
    assert a.send_room() == 0 and b.stats()["reorder_drops"] > 0
    within(measured, utp_conn_bytes(buf) + UTP_CONN_FIXED_BYTES)  # a's send side, b's receive side


# ---------------------------------------------------------------------- per torrent and per session


def test_picker_per_piece_arrays_fit_their_term() -> None:
    measured, _ = traced(lambda: PiecePicker(PIECES, PIECE_LEN, PIECES * PIECE_LEN, random.Random(1)))
    within(measured, PIECES * PICKER_PIECE_BYTES)


def test_candidate_pool_at_its_cap_fits_its_term() -> None:
    def grow() -> CandidatePool:
        pool = CandidatePool()
        for i in range(DEFAULT_MAX_CANDIDATES + 200):
            pool.add((f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 6881 + i % 1000), source=PeerSource.TRACKER)
        return pool

    measured, pool = traced(grow)
    assert pool.stats()["candidates"] == DEFAULT_MAX_CANDIDATES
    within(measured, DEFAULT_MAX_CANDIDATES * CANDIDATE_BYTES)


def test_reputation_scores_and_smart_ban_ledger_at_their_caps_fit_the_session_term() -> None:
    def grow() -> Reputation:
        rep = Reputation()
        for i in range(MAX_IPS + 100):
            rep.adjust(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 1, "piece verified")
        blocks = [BlockRecord(j, f"10.0.{j % 7}.1", bytes([j % 256]) * 20) for j in range(256)]  # a 4 MiB piece
        for piece in range(64):
            for _ in range(8):
                rep.piece_failed(b"k" * 20, piece, blocks)
        assert rep.ledger_records() <= MAX_LEDGER_RECORDS
        return rep

    measured, rep = traced(grow)
    assert rep.ledger_records() > MAX_LEDGER_RECORDS - 256
    within(measured, SESSION_TABLES_BYTES)


# ---------------------------------------------------------------------- fit_budget uses the terms


def test_fit_budget_charges_the_bitfield_and_the_utp_buffers() -> None:
    small = fit_budget(64 * MiB, torrents=1, max_connections=200, max_peers=200, num_pieces=64, piece_length=PIECE_LEN)
    big = fit_budget(64 * MiB, torrents=1, max_connections=200, max_peers=200, num_pieces=PIECES, piece_length=PIECE_LEN)
    args = dict(piece_length=PIECE_LEN, cache_bytes=MiB, outbox_bytes=MiB, incoming_requests=100, utp_buffer_bytes=0)
    # one byte per piece in the picker, one bit per piece in the bitfield we send
    assert conn_bytes(num_pieces=PIECES, **args) - conn_bytes(num_pieces=64, **args) == PIECES - 64 + (PIECES - 64) // 8
    assert big.max_connections < small.max_connections
    utp = fit_budget(64 * MiB, torrents=1, max_connections=200, max_peers=200, num_pieces=64,
                     piece_length=PIECE_LEN, utp=True)
    assert small.utp_buffer_bytes == 0 < utp.utp_buffer_bytes < 1 * MiB  # smaller windows on a small budget
    assert utp.max_connections < small.max_connections
    for lim in (small, big, utp):
        assert worst_case_bytes(lim, torrents=4) <= 64 * MiB
        assert lim.conn_bytes == conn_bytes(num_pieces=64 if lim is not big else PIECES, piece_length=PIECE_LEN,
                                            cache_bytes=lim.cache_bytes, outbox_bytes=lim.outbox_bytes,
                                            incoming_requests=lim.incoming_requests,
                                            utp_buffer_bytes=lim.utp_buffer_bytes)


def test_fit_budget_keeps_full_utp_buffers_when_memory_is_plenty() -> None:
    lim = fit_budget(1024 * MiB, torrents=1, max_connections=50, max_peers=50, utp=True)
    assert lim.utp_buffer_bytes == 1 * MiB and lim.max_connections == 50 and lim.incoming_requests == 500


def test_the_dht_node_at_its_caps_fits_its_term() -> None:
    """Issue 12: the DHT stays under the memory budget: both storage caps full (IPv6 peers, the larger
    entries), a routing table from 5,000 contacts, 32 searches, and a full outbox of answers."""
    import hashlib

    from minibt import krpc
    from minibt.budget import DHT_BYTES
    from minibt.dht import MAX_DATAGRAMS_OUT, MAX_SEARCHES, DhtNode
    from minibt.dhtstore import MAX_INFO_HASHES, MAX_PEERS_PER_HASH

    rng = random.Random(4)
    peers = [(f"2001:db8::{i:x}:{j:x}", 6881) for i in range(MAX_INFO_HASHES) for j in range(MAX_PEERS_PER_HASH)]
    contacts = [(rng.randbytes(20), (f"10.{i >> 8 & 255}.{i & 255}.1", 6881)) for i in range(5000)]
    targets = [rng.randbytes(20) for _ in range(MAX_SEARCHES)]

    def grow() -> DhtNode:
        n = DhtNode(node_id=hashlib.sha1(b"me").digest(), rng=random.Random(1), now=0.0)
        for k, addr in enumerate(peers):
            n.store.add(hashlib.sha1(b"%d" % (k // MAX_PEERS_PER_HASH)).digest(), addr, now=1.0)
        for node_id, addr in contacts:
            n.table.heard_from(node_id, addr, now=1.0, replied=True)
        for t in targets:
            n.search(t, now=2.0)
        ping = krpc.encode(krpc.Ping(b"tt", bytes(20)))
        while len(n._out) < MAX_DATAGRAMS_OUT:
            n._out.append((ping + bytes(400), ("10.0.0.1", 1)))  # answers of a few hundred bytes
        return n

    measured, _ = traced(grow)
    assert measured <= DHT_BYTES, f"measured {measured} B > DHT_BYTES {DHT_BYTES} B"
    assert DHT_BYTES <= 2 * measured


def test_encryption_of_one_connection_fits_its_term() -> None:
    """MSE_CONN_BYTES: the larger of an MSE responder mid-handshake (peer's key and a 512-byte pad
    buffered, our key and pad queued) and the two RC4 keystreams a connection keeps after it."""
    from minibt.budget import MSE_CONN_BYTES
    from minibt.mse import MseInitiator, MseResponder, Rc4Stream, rc4_available, req2_hash

    if not rc4_available():
        pytest.skip("no RC4 back end")
    ih = bytes(range(20))
    lookup = {req2_hash(ih): ih}
    Rc4Stream(bytes(20), bytes(20))  # the back end's one-time setup is not per connection

    def handshake() -> MseResponder:
        r = MseResponder(lookup.get, rng=random.Random(1), now=0.0, pads=(bytes(512), bytes(512)))
        m = MseInitiator(ih, ia=bytes(68), rng=random.Random(2), now=0.0, pads=(bytes(512), bytes(512)))
        r.receive_data(m.data_to_send()[:96 + 500], now=0.0)  # key + most of PadA: still looking for req1
        return r

    def streams() -> Rc4Stream:
        return Rc4Stream(bytes(20), bytes(range(20)))

    mid, _ = traced(handshake)
    after, _ = traced(streams)
    within(max(mid, after), MSE_CONN_BYTES)


def test_encryption_is_charged_per_connection() -> None:
    from minibt.budget import MSE_CONN_BYTES

    plain = fit_budget(48 * MiB, torrents=1, max_connections=500, max_peers=500, num_pieces=64, piece_length=PIECE_LEN)
    enc = fit_budget(48 * MiB, torrents=1, max_connections=500, max_peers=500, num_pieces=64, piece_length=PIECE_LEN,
                     encryption=True)
    kw = dict(num_pieces=64, piece_length=PIECE_LEN, cache_bytes=enc.cache_bytes, outbox_bytes=enc.outbox_bytes,
              incoming_requests=enc.incoming_requests, utp_buffer_bytes=0)
    assert conn_bytes(**kw, encryption=True) - conn_bytes(**kw) == MSE_CONN_BYTES  # type: ignore[arg-type]
    assert enc.conn_bytes == conn_bytes(**kw, encryption=True)  # type: ignore[arg-type]
    assert enc.max_connections <= plain.max_connections
    assert worst_case_bytes(enc, torrents=1) <= 48 * MiB


def test_default_write_cache_holds_one_peers_request_pipeline() -> None:
    """Issue 15: the default write cache is no larger than one fast peer's whole pipeline (every block
    it has outstanding belongs to a piece in the cache, so a larger cache would only hold verified
    pieces longer), and holds the 4 pieces of 256 KiB that measured as fast as 12 on loopback (storage.py);
    the CLI, TorrentConfig and Storage agree on it.  Writes do not depend on its size: a piece is written
    whole once verified."""
    from minibt.cli import build_parser
    from minibt.settings import TorrentConfig
    from minibt.storage import DEFAULT_CACHE_BYTES, default_cache_bytes

    pipeline = TorrentConfig().request_queue_max * BLOCK_LEN
    assert 4 * 256 * 1024 <= DEFAULT_CACHE_BYTES <= pipeline
    assert TorrentConfig().cache_bytes is None  # Storage sizes it from the piece length
    assert build_parser().parse_args(["download", "x.torrent", "--dir", "d"]).cache is None
    assert default_cache_bytes(256 * 1024) == DEFAULT_CACHE_BYTES  # the usual pieces: unchanged


def test_budget_counts_the_request_pipeline_torrents_use() -> None:
    """budget.REQUEST_QUEUE_MAX is TorrentConfig's default; the runner sets every torrent's cache_bytes
    from the budget, which keeps the requests in flight within that cache (no long-path reservation)."""
    from minibt.budget import REQUEST_QUEUE_MAX
    from minibt.settings import TorrentConfig

    assert REQUEST_QUEUE_MAX == TorrentConfig().request_queue_max
    assert TorrentConfig(cache_bytes=4 * MiB).reserve_max == 0
    assert TorrentConfig().reserve_max == TorrentConfig().cache_reserve_max > 4 * MiB
