"""A peer that asks and never reads: what we queue for it stays bounded and it is closed (STYLE.md section 7).

Each ut_metadata request queues an answer (a 16 KiB piece or a reject), while seeding (wire.py's outbox) and
while fetching a magnet's metadata (fetchlink.py's).  Reads come as the loop makes them (at most its 256 KiB
receive buffer), and nothing is ever drained: the peer reads nothing.  Also: a peer that repeats its BEP 10
handshake with a new listen port each time keeps one address in the fetch's hand-over list, not one a handshake.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

from minibt import bencode
from minibt.effects import HashPiece
from minibt.errors import CloseReason
from minibt.fetchlink import FETCH_MAX_OUTBOX_BYTES
from minibt.handshake import encode_handshake, make_reserved
from minibt.loop import RECV_BUF
from minibt.magnet import parse_magnet
from minibt.magnetfetch import MAX_SERVED_BY
from minibt.metainfo import create_torrent, parse_metainfo
from minibt.session import Session
from minibt.settings import Mode, TorrentState
from minibt.wire import MAX_OUTBOX_BYTES, OUTBOX_HARD_SLACK
from minibt.workers import InlineHasher

PEER_ID = b"-XX0000-" + b"a" * 12


def ext(ext_id: int, d: dict[bytes, object]) -> bytes:
    payload = bencode.encode(d)
    return struct.pack(">IBB", 2 + len(payload), 20, ext_id) + payload


def reads(data: bytes) -> list[bytes]:
    return [data[i : i + RECV_BUF] for i in range(0, len(data), RECV_BUF)]


def seeding_session(tmp_path: Path) -> tuple[Session, bytes]:
    (tmp_path / "p.bin").write_bytes(random.Random(5).randbytes(120 * 16384))
    meta = parse_metainfo(create_torrent(str(tmp_path / "p.bin"), piece_length=16384))  # a 2.5 KB info dict
    s = Session(rng=random.Random(1))
    s.set_listen("127.0.0.1", 6881)
    t = s.add_torrent(meta, str(tmp_path), mode=Mode.SEED, resume_path=None, now=0.0)
    hasher = InlineHasher()
    while t.state is TorrentState.CHECKING:
        for a in s.take_actions():
            if isinstance(a, HashPiece):
                hasher.submit(a.job)
                for res in hasher.results():
                    s.on_hash_result(res, now=0.0)
    assert t.state is TorrentState.SEEDING
    return s, meta.info_hash


def test_a_seeder_closes_a_peer_that_asks_for_metadata_and_reads_nothing(tmp_path: Path) -> None:
    s, ih = seeding_session(tmp_path)
    cid = s.on_incoming(("203.0.113.7", 40000), now=0.0)
    assert cid is not None
    s.on_data(cid, encode_handshake(make_reserved(fast=True, extension=True), ih, PEER_ID), now=0.0)
    s.on_data(cid, struct.pack(">IB", 1, 15) + ext(0, {b"m": {b"ut_metadata": 3}}), now=0.1)
    conn = s.conns[cid]
    assert conn.wire is not None
    hard = MAX_OUTBOX_BYTES + OUTBOX_HARD_SLACK + 15  # our bitfield: 120 pieces
    most = 0
    now = 1.0
    # Requests for the one metadata piece, a window apart (the flood allowance starts again in each)
    for chunk in reads(ext(2, {b"msg_type": 0, b"piece": 0}) * 200_000):
        s.on_data(cid, chunk, now=now)
        now += 61.0
        if cid not in s.conns or s.conns[cid].closing:
            break
        most = max(most, conn.wire.outbox_len)
    s.take_actions()
    assert cid not in s.conns or s.conns[cid].closing
    assert most <= hard + RECV_BUF  # one read's answers past the cap at most
    (closed,) = [c for c in s.closed_log if c[0] == cid]
    assert closed[2] is CloseReason.PROTOCOL_VIOLATION and "reads nothing" in closed[3]
    stats = s.torrents[ih].extensions.stats()
    assert stats["metadata_busy"] > 0  # over the soft cap it got rejects, not 16 KiB pieces


def test_a_magnet_fetch_closes_a_peer_that_asks_and_reads_nothing(tmp_path: Path) -> None:
    ih = bytes(range(20))
    s = Session(rng=random.Random(1))
    s.set_listen("127.0.0.1", 6881)
    s.add_magnet(parse_magnet("magnet:?xt=urn:btih:" + ih.hex()), str(tmp_path), now=0.0)
    cid = s.on_incoming(("203.0.113.5", 40000), now=0.0)
    assert cid is not None
    s.on_data(cid, encode_handshake(make_reserved(fast=True, extension=True), ih, PEER_ID), now=0.0)
    s.take_actions()
    s.on_data(cid, ext(0, {b"m": {b"ut_metadata": 3}, b"metadata_size": 1000}), now=0.5)
    link = s.conns[cid].fetch_link
    assert link is not None
    most = 0
    for chunk in reads(ext(2, {b"msg_type": 0, b"piece": 0}) * 100_000):
        s.on_data(cid, chunk, now=1.0)
        if cid not in s.conns or s.conns[cid].closing:
            break
        most = max(most, len(link._out))
    assert cid not in s.conns or s.conns[cid].closing
    assert FETCH_MAX_OUTBOX_BYTES < most <= FETCH_MAX_OUTBOX_BYTES + RECV_BUF


def test_a_peer_repeating_its_handshake_keeps_one_address_for_the_hand_over(tmp_path: Path) -> None:
    ih = bytes(range(20))
    s = Session(rng=random.Random(1))
    s.set_listen("127.0.0.1", 6881)
    fetch = s.add_magnet(parse_magnet("magnet:?xt=urn:btih:" + ih.hex()), str(tmp_path), now=0.0)
    for n, ip in enumerate(("203.0.113.5", "203.0.113.6")):
        cid = s.on_incoming((ip, 40000), now=0.0)
        assert cid is not None
        s.on_data(cid, encode_handshake(make_reserved(fast=True, extension=True), ih, PEER_ID[:-1] + b"%d" % n), now=0.0)
        s.take_actions()
        s.on_data(cid, b"".join(ext(0, {b"p": p}) for p in range(1, 5000)), now=1.0)
    assert fetch.served_by == {("203.0.113.5", 4999): fetch.served_by[("203.0.113.5", 4999)],
                               ("203.0.113.6", 4999): fetch.served_by[("203.0.113.6", 4999)]}
    assert MAX_SERVED_BY >= 2
