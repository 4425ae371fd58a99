"""The blocks of one read reach the torrent in one call (``PeerWire.receive_data(..., runs=True)`` ->
``wire.BlocksReceived`` -> ``Downloader.on_blocks``, issue 15): the runs carry exactly the blocks the plain
mode gives as Piece messages, messages between runs keep their place, what each block does is unchanged, a
stray block in a run costs only itself, and a storage failure in the middle of a run fails the torrent
without escaping."""

from __future__ import annotations

import hashlib
import random
import struct
from pathlib import Path

import pytest

from minibt.errors import CloseReason, StorageError, WireError
from minibt.handshake import make_reserved
from minibt.metainfo import Metainfo, create_torrent, parse_metainfo
from minibt.session import Session
from minibt.settings import Encryption, Mode, SessionConfig, TorrentState
from minibt.torrent import Torrent
from minibt.wire import BlocksReceived, RequestsReceived
from minibt.wire_codec import BLOCK_LEN, Have, Interested, Piece, Request, Unchoke, encode
from minibt.workers import InlineHasher
from tests.helpers import take_frames
from tests.unit.test_wire import LAST, PLEN, N, make_wire, sample_stream

PIECE = 2 * BLOCK_LEN
NUM_PIECES = 6


def flatten(events: list[object]) -> list[object]:
    """Runs mode's events with every run spelled out as the Piece messages the plain mode gives."""
    out: list[object] = []
    for ev in events:
        if isinstance(ev, BlocksReceived):
            assert ev.blocks, "a run is never empty"
            out += [Piece(i, b, bytes(d)) for i, b, d in ev.blocks]
        elif isinstance(ev, RequestsReceived):
            assert ev.requests, "a run is never empty"
            out += [Request(i, b, n) for i, b, n in ev.requests]
        else:
            out.append(ev)
    return out


def test_runs_group_consecutive_blocks_and_keep_every_message_in_place() -> None:
    a, b, c = Piece(0, 0, b"a"), Piece(0, 1, b"b"), Piece(1, 0, b"c")
    h, u = Have(3), Unchoke()

    def runs(*msgs: object) -> list[object]:
        wire = make_wire()
        return wire.receive_data(b"".join(encode(m) for m in msgs), now=0.0, runs=True)  # type: ignore[arg-type]

    got = runs(h, a, b, u, c)
    assert [type(ev) for ev in got] == [Have, BlocksReceived, Unchoke, BlocksReceived]
    assert flatten(got) == [h, a, b, u, c]
    got = runs(a, b, h, u, c, Interested())
    assert [type(ev) for ev in got] == [BlocksReceived, Have, Unchoke, BlocksReceived, Interested]
    assert runs() == []


def test_runs_group_consecutive_requests_apart_from_blocks() -> None:
    r1, r2, r3 = Request(0, 0, BLOCK_LEN), Request(0, BLOCK_LEN, BLOCK_LEN), Request(2, 0, 5)
    a, h = Piece(0, 0, b"a"), Have(3)
    got = make_wire().receive_data(b"".join(encode(m) for m in (r1, r2, a, r3, h, r1)), now=0.0, runs=True)
    assert [type(ev) for ev in got] == [RequestsReceived, BlocksReceived, RequestsReceived, Have, RequestsReceived]
    assert flatten(got) == [r1, r2, a, r3, h, r1]
    assert got[0] == RequestsReceived(((0, 0, BLOCK_LEN), (0, BLOCK_LEN, BLOCK_LEN)))


@pytest.mark.parametrize("bad", [Request(N, 0, 1), Request(0, 0, 0), Request(0, 0, BLOCK_LEN + 1),
                                 Request(0, PIECE - 1, 2), Request(N - 1, LAST - 1, 2)])
def test_runs_mode_checks_requests_as_the_plain_mode_does(bad: Request) -> None:
    """A bad request in the middle of a run closes the wire with the plain mode's reason and words."""
    assert_same_error_in_both_modes(encode(Request(0, 0, BLOCK_LEN)) + encode(bad))


def assert_same_error_in_both_modes(data: bytes) -> None:
    """``data`` closes the wire in the plain mode and in runs mode alike: a protocol violation, the same words."""
    errors = []
    for runs in (False, True):
        with pytest.raises(WireError) as e:
            make_wire().receive_data(data, now=0.0, runs=runs)
        errors.append((e.value.reason, str(e.value)))
    assert errors[0] == errors[1] and errors[0][0] is CloseReason.PROTOCOL_VIOLATION


def test_runs_mode_gives_the_same_messages_however_the_stream_is_cut(rng: random.Random) -> None:
    """Random streams of every message kind, cut into reads at random: runs mode, spelled out, equals
    the plain mode (which test_wire.py checks against the encoder), including blocks whose frames span
    reads (bytes) and runs that a read boundary splits."""
    for _ in range(20):
        data, msgs = sample_stream(rng)
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 300)))
        plain, grouped = make_wire(), make_wire()
        got_plain: list[object] = []
        got_runs: list[object] = []
        for lo, hi in zip([0, *cuts], [*cuts, len(data)], strict=True):
            chunk = bytearray(data[lo:hi])
            got_plain += [Piece(m.index, m.begin, bytes(m.data)) if isinstance(m, Piece) else m
                          for m in plain.receive_data(memoryview(chunk), now=0.0)]
            got_runs += flatten(grouped.receive_data(memoryview(chunk), now=0.0, runs=True))
            chunk[:] = bytes(len(chunk))  # the caller reuses its buffer: views must have been copied
        assert got_plain == msgs
        assert got_runs == msgs
        assert plain.stats() == grouped.stats()


@pytest.mark.parametrize("bad", [
    Piece(N, 0, b"x"),  # no such piece
    Piece(0, PLEN - BLOCK_LEN + 1, bytes(BLOCK_LEN)),  # past the end of a piece
    Piece(N - 2, PLEN, b"x"),  # starts at the end of the piece before the last
    Piece(N - 1, LAST - 1, b"xy"),  # past the end of the short last piece
    Piece(N - 1, BLOCK_LEN, bytes(LAST - BLOCK_LEN + 1)),
])
def test_runs_mode_checks_blocks_as_the_plain_mode_does(bad: Piece) -> None:
    """A bad block after a good one, in one read: both modes close with the same reason and words."""
    assert_same_error_in_both_modes(encode(Piece(0, 0, b"ok")) + encode(bad) + encode(Have(1)))
    wire = make_wire()  # the last good block of each kind of piece still passes
    good = [Piece(N - 2, PLEN - BLOCK_LEN, bytes(BLOCK_LEN)), Piece(N - 1, LAST - 5, bytes(5))]
    assert flatten(wire.receive_data(b"".join(encode(m) for m in good), now=0.0, runs=True)) == good


class Remote:
    """A scripted seeder that has pieces ``has`` (all but one), connected to a leecher Session."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.payload = hashlib.shake_128(b"block runs").digest(NUM_PIECES * PIECE)
        src = tmp_path / "payload.bin"
        src.write_bytes(self.payload)
        self.meta: Metainfo = parse_metainfo(create_torrent(str(src), piece_length=PIECE))
        src.unlink()
        self.now = 1.0
        self.s = Session(rng=random.Random(5), config=SessionConfig(encryption=Encryption.NONE, pex=False,
                                                                        holepunch=False), wall_clock=lambda: 1e9)
        self.s.set_listen("127.0.0.1", 6881)
        (tmp_path / "dl").mkdir()
        self.t: Torrent = self.s.add_torrent(self.meta, str(tmp_path / "dl"), mode=Mode.DOWNLOAD, resume_path=None,
                                             now=self.now)
        cid = self.s.on_incoming(("127.0.0.2", 51413), now=self.now)
        assert cid is not None
        self.cid = cid
        self.inbox = b""
        self.hasher = InlineHasher()
        hs = b"\x13BitTorrent protocol" + make_reserved(fast=True, extension=False) + self.meta.info_hash + bytes(20)
        bits = bytes([0b11111000])  # every piece but 5
        self.send(hs + struct.pack(">IB", 2, 5) + bits + struct.pack(">IB", 1, 1))

    def send(self, data: bytes) -> None:
        self.s.on_data(self.cid, memoryview(data), now=self.now)

    def requests(self) -> list[tuple[int, int, int]]:
        """Carry out the session's actions (hash jobs inline), then read the requests it sent."""
        for _ in range(10):
            acts = self.s.take_actions()
            for a in acts:
                job = getattr(a, "job", None)
                if job is not None:
                    self.hasher.submit(job)
                    for res in self.hasher.results():
                        self.s.on_hash_result(res, now=self.now)
            if not acts:
                break
        frames, self.inbox = take_frames(self.inbox + self.s.data_to_send(self.cid, 1 << 20, now=self.now))
        return [struct.unpack_from(">III", m, 1) for m in frames if len(m) == 13 and m[0] == 6]

    def finish(self, asked: list[tuple[int, int, int]], never: frozenset[tuple[int, int, int]] = frozenset()) -> None:
        """Answer ``asked`` and every request from here on (none of them in ``never``) until the download is
        complete, then check the file."""
        for _ in range(200):
            if self.t.state is TorrentState.SEEDING:
                break
            asked += self.requests()
            assert not never.intersection(asked)
            if asked:
                self.send(b"".join(self.piece_msg(*q) for q in asked))
                asked = []
            self.now += 0.01
            self.s.tick(now=self.now)
        assert self.t.state is TorrentState.SEEDING
        assert (self.tmp_path / "dl" / "payload.bin").read_bytes() == self.payload

    def piece_msg(self, index: int, begin: int, length: int = BLOCK_LEN) -> bytes:
        off = index * PIECE + begin
        return struct.pack(">IBII", 9 + length, 7, index, begin) + self.payload[off : off + length]


def test_a_read_of_blocks_and_messages_is_handled_in_order(tmp_path: Path) -> None:
    r = Remote(tmp_path)
    asked = r.requests()
    assert asked and all(i != 5 for i, _, _ in asked)
    (i0, b0, n0), (i1, b1, n1) = asked[0], asked[1]
    stray = next((i, b) for i in range(NUM_PIECES) for b in (0, BLOCK_LEN) if (i, b, BLOCK_LEN) not in asked)
    before = r.t.stats.wasted
    # one read: a requested block, a block never asked for, Have 5 (a message between two runs), another block
    r.send(r.piece_msg(i0, b0, n0) + r.piece_msg(*stray) + struct.pack(">IBI", 5, 4, 5) + r.piece_msg(i1, b1, n1))
    assert r.t.stats.wasted - before == BLOCK_LEN  # the stray block only
    assert r.t.picker.peer_has(r.cid, 5)  # the Have between the runs was handled
    stats = r.t.picker.stats()
    assert stats["blocks_received"] == 2
    r.finish(asked[2:])  # answer everything from here on: the download completes with the right bytes


def test_a_storage_failure_in_the_middle_of_a_read_fails_the_torrent_only(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    r = Remote(tmp_path)
    asked = r.requests()
    assert len(asked) >= 3
    calls = []
    real = r.t.storage.write_block

    def write_block(piece: int, begin: int, data: object) -> bool:
        calls.append((piece, begin))
        if len(calls) == 2:
            raise StorageError("write", "payload.bin", OSError(28, "No space left on device"))
        return real(piece, begin, data)  # type: ignore[arg-type]

    monkeypatch.setattr(r.t.storage, "write_block", write_block)
    r.send(b"".join(r.piece_msg(*q) for q in asked[:3]))  # no exception reaches the loop
    assert len(calls) == 2 and r.t.state is TorrentState.ERROR and "No space left" in (r.t.error or "")
