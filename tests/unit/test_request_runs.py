"""A seeder takes a read's requests as one run (``wire.RequestsReceived`` -> ``Uploader.on_request``) and
serves them from as few reads as it can (issue 15): a run of one piece's requests is one ``pread``; requests
that come one per read are served from what the first read took in ahead (``upload.READ_AHEAD``). What
each request does is unchanged: answered in order with the right bytes, rejected while choked, a request
for a piece we lack closes the peer and nothing after it in the run is served."""

from __future__ import annotations

import hashlib
import random
import struct
from pathlib import Path

from minibt.actions import Close
from minibt.effects import HashPiece
from minibt.errors import CloseReason
from minibt.handshake import make_reserved
from minibt.metainfo import Metainfo, create_torrent, parse_metainfo
from minibt.session import Session
from minibt.settings import Encryption, Mode, SessionConfig, TorrentState
from minibt.torrent import Torrent
from minibt.upload import READ_AHEAD
from minibt.wire_codec import BLOCK_LEN
from minibt.workers import InlineHasher
from tests.helpers import take_frames

PIECE = 256 * 1024
NUM_PIECES = 4


class Seeder:
    """A seeding Session with one unchoked leecher that has nothing, driven by hand."""

    def __init__(self, tmp_path: Path, *, last_short: int = 0, lacking: int | None = None) -> None:
        size = NUM_PIECES * PIECE - last_short
        self.payload = hashlib.shake_128(b"request runs").digest(size)
        (tmp_path / "payload.bin").write_bytes(self.payload)
        self.meta: Metainfo = parse_metainfo(create_torrent(str(tmp_path / "payload.bin"), piece_length=PIECE))
        if lacking is not None:  # that piece's data differs from the torrent: the check finds it missing
            with open(tmp_path / "payload.bin", "r+b") as f:
                f.seek(lacking * PIECE)
                f.write(bytes(8))
        self.now = 1.0
        self.s = Session(rng=random.Random(3), config=SessionConfig(encryption=Encryption.NONE, pex=False,
                                                                        holepunch=False), wall_clock=lambda: 1e9)
        self.s.set_listen("127.0.0.1", 6881)
        self.t: Torrent = self.s.add_torrent(self.meta, str(tmp_path), mode=Mode.SEED, resume_path=None, now=self.now)
        hasher = InlineHasher()
        for _ in range(100):
            for a in self.s.take_actions():
                if isinstance(a, HashPiece):
                    hasher.submit(a.job)
                    for res in hasher.results():
                        self.s.on_hash_result(res, now=self.now)
            if self.t.state is not TorrentState.CHECKING:
                break
        assert self.t.state is (TorrentState.SEEDING if lacking is None else TorrentState.DOWNLOADING)
        cid = self.s.on_incoming(("127.0.0.2", 51413), now=self.now)
        assert cid is not None
        self.cid = cid
        hs = b"\x13BitTorrent protocol" + make_reserved(fast=True, extension=False) + self.meta.info_hash + bytes(20)
        self.s.on_data(cid, memoryview(hs + struct.pack(">IB", 1, 15) + struct.pack(">IB", 1, 2)), now=self.now)
        self.inbox = b""
        assert b"\x01" in self.messages()  # interested: unchoked at once (a free slot)
        self.peer = self.s.conns[cid]
        self.reads0 = self.reads()
        self.bytes0 = int(self.t.storage.stats()["bytes_read"])

    def reads(self) -> int:
        return int(self.t.storage.stats()["read_calls"])

    def request(self, *reqs: tuple[int, int, int]) -> None:
        """One read holding these requests."""
        data = b"".join(struct.pack(">IBIII", 13, 6, *r) for r in reqs)
        self.s.on_data(self.cid, memoryview(bytearray(data)), now=self.now)

    def messages(self) -> list[bytes]:
        """The session's actions carried out, then the frames it sent (message id first)."""
        self.s.take_actions()
        frames, self.inbox = take_frames(self.inbox + self.s.data_to_send(self.cid, 1 << 24, now=self.now))
        return frames

    def pieces(self) -> list[tuple[int, int, bytes]]:
        return [(*struct.unpack_from(">II", m, 1), m[9:]) for m in self.messages() if m[0] == 7]

    def block(self, index: int, begin: int, length: int) -> bytes:
        at = index * PIECE + begin
        return self.payload[at : at + length]


def test_a_run_of_one_piece_is_one_read_and_answered_in_order(tmp_path: Path) -> None:
    sd = Seeder(tmp_path)
    reqs = [(1, b * BLOCK_LEN, BLOCK_LEN) for b in range(PIECE // BLOCK_LEN)]
    sd.request(*reqs)
    assert sd.pieces() == [(i, b, sd.block(i, b, n)) for i, b, n in reqs]
    assert sd.reads() - sd.reads0 == 1
    assert sd.t.stats.uploaded == PIECE


def test_requests_one_per_read_are_served_from_the_read_ahead(tmp_path: Path) -> None:
    """Each request in a read of its own: the first of a piece reads its block, the next (continuing it)
    READ_AHEAD bytes, and so on: one read per READ_AHEAD bytes of a piece, not one a block. The last
    piece's shorter tail ends its read-ahead at the piece's end; a jump elsewhere reads afresh."""
    sd = Seeder(tmp_path, last_short=3 * BLOCK_LEN + 100)
    last = NUM_PIECES - 1
    size = sd.meta.piece_size(last)
    reqs = [(0, b, BLOCK_LEN) for b in range(0, PIECE, BLOCK_LEN)]
    reqs += [(last, b, min(BLOCK_LEN, size - b)) for b in range(0, size, BLOCK_LEN)]
    reqs += [(2, 5 * BLOCK_LEN, BLOCK_LEN), (0, 0, BLOCK_LEN), (0, BLOCK_LEN, BLOCK_LEN)]  # elsewhere: read again
    got = []
    for r in reqs:
        sd.request(r)
        got += sd.pieces()
    assert got == [(i, b, sd.block(i, b, n)) for i, b, n in reqs]
    expected = 1 + -(-(PIECE - BLOCK_LEN) // READ_AHEAD) + 1 + -(-(size - BLOCK_LEN) // READ_AHEAD) + 3
    assert sd.reads() - sd.reads0 == expected
    peer = sd.peer
    assert peer.read_ahead is not None  # the last read took in more than its request ...
    sd.t.choke_peer(peer, now=sd.now)
    sd.messages()
    assert peer.read_ahead is None  # ... and a choke lets it go


def test_requests_out_of_order_read_only_their_blocks(tmp_path: Path) -> None:
    """Two pieces asked for in turn (and then at random): no run continues the last one served, so no
    read takes in more than its request and nothing is held for the peer."""
    sd = Seeder(tmp_path)
    reqs = [(p, b * BLOCK_LEN, BLOCK_LEN) for b in range(PIECE // BLOCK_LEN) for p in (1, 2)]
    reqs += random.Random(4).sample([(p, b * BLOCK_LEN, BLOCK_LEN) for p in (0, 3) for b in range(16)], 20)
    got = []
    for r in reqs:
        sd.request(r)
        got += sd.pieces()
        assert sd.peer.read_ahead is None
    assert got == [(i, b, sd.block(i, b, n)) for i, b, n in reqs]
    assert sd.reads() - sd.reads0 == len(reqs)
    assert sd.t.storage.stats()["bytes_read"] - sd.bytes0 == len(reqs) * BLOCK_LEN


def test_a_run_while_choked_is_rejected_in_order(tmp_path: Path) -> None:
    sd = Seeder(tmp_path)
    sd.t.choke_peer(sd.peer, now=sd.now)
    assert sd.messages() == [b"\x00"]
    reqs = [(0, 0, BLOCK_LEN), (2, BLOCK_LEN, BLOCK_LEN), (1, 0, 7)]
    sd.request(*reqs)
    rejects = [struct.unpack_from(">III", m, 1) for m in sd.messages() if m[0] == 16]
    assert rejects == reqs
    assert sd.reads() == sd.reads0


def test_a_request_for_a_piece_we_lack_closes_the_peer_mid_run(tmp_path: Path) -> None:
    sd = Seeder(tmp_path, lacking=2)
    assert not sd.t.have[2] and sd.t.have[0] and sd.t.have[1]
    sd.request((0, 0, BLOCK_LEN), (2, 0, BLOCK_LEN), (1, 0, BLOCK_LEN))
    closes = [a for a in sd.s.take_actions() if isinstance(a, Close) and a.cid == sd.cid]
    assert [c.reason for c in closes] == [CloseReason.PROTOCOL_VIOLATION]
    assert sd.reads() == sd.reads0 and sd.t.stats.uploaded == 0


class NoWalk(dict):  # type: ignore[type-arg]
    """A request queue that fails the test if anything walks it (a cancel must find its request directly)."""

    walking = True

    def __iter__(self):  # type: ignore[no-untyped-def]
        if not NoWalk.walking:
            raise AssertionError("the request queue was walked")
        return super().__iter__()


def test_cancels_take_queued_requests_out_in_place_without_walking_the_queue(tmp_path: Path) -> None:
    """The peer reads nothing: 40 requests, of which the outbox (256 KiB) takes 16 at once; cancels then
    take out queued ones (and ones never asked or served already: nothing happens), and the rest are served in
    the order asked once the peer reads.  A request repeated while queued is answered once."""
    sd = Seeder(tmp_path)
    reqs = [(i // 16, (i % 16) * BLOCK_LEN, BLOCK_LEN) for i in range(40)]
    sd.request(*reqs, reqs[30])
    assert len(sd.peer.requests_in) == 40 - 16 and list(sd.peer.requests_in) == reqs[16:]
    sd.peer.requests_in = NoWalk(sd.peer.requests_in)
    NoWalk.walking = False
    try:
        cancels = [reqs[20], reqs[39], reqs[3], (3, 0, BLOCK_LEN), reqs[25], reqs[20]]
        sd.s.on_data(sd.cid, memoryview(b"".join(struct.pack(">IBIII", 13, 8, *c) for c in cancels)), now=sd.now)
    finally:
        NoWalk.walking = True
    left = [r for r in reqs[16:] if r not in (reqs[20], reqs[39], reqs[25])]
    assert list(sd.peer.requests_in) == left
    served = [(i, b, len(d)) for i, b, d in sd.pieces()]  # the first 16, then the peer reads and the rest go out
    for _ in range(5):
        sd.s.on_writable(sd.cid, now=sd.now)
        served += [(i, b, len(d)) for i, b, d in sd.pieces()]
    assert served == reqs[:16] + left
    assert sd.peer.dup_requests == 1


def test_a_peer_repeating_queued_requests_is_closed_for_flooding(tmp_path: Path) -> None:
    sd = Seeder(tmp_path)
    reqs = [(i // 16, (i % 16) * BLOCK_LEN, BLOCK_LEN) for i in range(40)]  # 16 served, 24 queued (nothing read)
    sd.request(*reqs)
    sd.request(*(reqs[16:] * 20))  # 480 repeats: still open
    assert sd.cid in sd.s.conns and not sd.s.conns[sd.cid].closing and len(sd.peer.requests_in) == 24
    sd.request(*reqs[16:])  # past the queue's cap (500) in repeats
    closes = [a for a in sd.s.take_actions() if isinstance(a, Close) and a.cid == sd.cid]
    assert [c.reason for c in closes] == [CloseReason.PROTOCOL_VIOLATION]
