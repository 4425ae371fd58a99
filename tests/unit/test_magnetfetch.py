"""magnetfetch.py: the BEP 10-only framing used while fetching metadata, the .torrent writer, and
the CLI's magnet input checks; extension.py: what we advertise for a connection (BEP 11 flags)."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minibt.cli import main
from minibt.errors import CloseReason, WireError
from minibt.extension import dialable_addr, pex_flags
from minibt.fetchlink import FETCH_MAX_MESSAGE_BYTES, FetchLink
from minibt.handshake import Handshake
from minibt.magnetfetch import torrent_file_bytes
from minibt.metainfo import create_torrent, metainfo_from_info, parse_metainfo
from minibt.peer import PeerConnection, PeerSource
from minibt.pex import PexFlag


def frame(mid: int, body: bytes = b"") -> bytes:
    return struct.pack(">IB", 1 + len(body), mid) + body


STREAM = (
    bytes(4)  # keep-alive
    + frame(0x0E)  # have_all: skipped
    + frame(5, b"\xff" * 300)  # bitfield of any length: skipped, never validated
    + frame(20, b"\x00d1:md11:ut_metadatai3eee")  # extension handshake
    + frame(4, b"\0\0\0\1")
    + frame(20, b"\x02d8:msg_typei1e5:piecei0ee" + b"x" * 100)  # to our ut_metadata id
)
EXPECTED = [(0, b"d1:md11:ut_metadatai3eee"), (2, b"d8:msg_typei1e5:piecei0ee" + b"x" * 100)]


def test_fetch_link_returns_only_extended_messages_whole_or_split(rng: random.Random) -> None:
    assert FetchLink(now=0.0).receive_data(STREAM) == EXPECTED
    one = FetchLink(now=0.0)
    got = [m for b in STREAM for m in one.receive_data(bytes([b]))]
    assert got == EXPECTED
    for _ in range(20):
        link, got, pos = FetchLink(now=0.0), [], 0
        while pos < len(STREAM):
            n = rng.randint(1, 40)
            got += link.receive_data(STREAM[pos : pos + n])
            pos += n
        assert got == EXPECTED


def test_fetch_link_refuses_an_oversized_frame_before_buffering_it() -> None:
    link = FetchLink(now=0.0)
    with pytest.raises(WireError) as ei:
        link.receive_data(struct.pack(">I", FETCH_MAX_MESSAGE_BYTES + 1) + b"\x05")
    assert ei.value.reason is CloseReason.MESSAGE_TOO_LARGE


def test_fetch_link_outbox_and_keepalive() -> None:
    link = FetchLink(now=0.0)
    link.extended(7, b"abc", now=1.0)
    assert link.wants_write and link.data_to_send(3) == b"\0\0\0\x05" [:3]
    assert link.data_to_send(100) == b"\x05\x14\x07abc" and not link.wants_write
    assert not link.keepalive_due(60.0) and link.keepalive_due(61.0)
    link.keepalive(now=61.0)
    assert link.data_to_send(100) == bytes(4)


def test_saved_torrent_keeps_the_exact_info_bytes_and_trackers(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(b"z" * 40000)
    meta = parse_metainfo(create_torrent(str(tmp_path / "f.bin"), piece_length=16384))
    fetched = metainfo_from_info(meta.info_bytes, announce_tiers=[["http://t1/announce"], ["udp://t2:80"]])
    again = parse_metainfo(torrent_file_bytes(fetched))
    assert again.info_hash == meta.info_hash and again.info_bytes == meta.info_bytes
    assert [list(t) for t in again.announce_tiers] == [["http://t1/announce"], ["udp://t2:80"]]
    bare = parse_metainfo(torrent_file_bytes(metainfo_from_info(meta.info_bytes)))
    assert bare.info_hash == meta.info_hash and not bare.announce_tiers


@pytest.mark.parametrize(
    "uri, why",
    [
        ("magnet:?dn=x", "no 'xt=urn:btih:'"),
        ("magnet:?xt=urn:btih:1234", "expected 40 (hex) or 32 (base32)"),
        ("magnet:?xt=urn:btih:" + "a" * 40 + "&x.pe=1.2.3.4", "no port"),
    ],
)
def test_cli_refuses_a_malformed_magnet_with_exit_2(
    uri: str, why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["download", uri, "--dir", str(tmp_path / "d"), "--port", "0", "--bind", "127.0.0.1"]) == 2
    err = capsys.readouterr().err
    assert why in err and err.count("\n") == 1
    assert not (tmp_path / "d").exists()


def test_cli_refuses_seeding_a_magnet_and_save_torrent_without_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = "magnet:?xt=urn:btih:" + "a" * 40
    assert main(["seed", uri, "--dir", str(tmp_path)]) == 2
    assert "not a magnet link" in capsys.readouterr().err
    (tmp_path / "f.bin").write_bytes(b"z" * 100)
    (tmp_path / "f.torrent").write_bytes(create_torrent(str(tmp_path / "f.bin")))
    assert main(["download", str(tmp_path / "f.torrent"), "--dir", str(tmp_path / "d"),
                 "--save-torrent", str(tmp_path / "x.torrent")]) == 2
    assert "--save-torrent is for magnet links" in capsys.readouterr().err


def conn(*, outgoing: bool, addr: tuple[str, int] = ("10.0.0.5", 50000)) -> PeerConnection:
    hs = Handshake(peer_id=bytes(20), reserved=bytes(8), info_hash=None, now=0.0)
    src = PeerSource.TRACKER if outgoing else PeerSource.INCOMING
    return PeerConnection(1, addr, outgoing=outgoing, source=src, handshake=hs, now=0.0)


def test_advertised_address_is_the_dialled_one_or_the_bep10_listen_port() -> None:
    out = conn(outgoing=True, addr=("::ffff:10.0.0.5", 6881))
    assert dialable_addr(out) == ("10.0.0.5", 6881)  # canonical form, IPv4-mapped unwrapped
    inc = conn(outgoing=False)
    assert dialable_addr(inc) is None  # BEP 11: not without a port other peers can dial
    inc.listen_port = 6889
    assert dialable_addr(inc) == ("10.0.0.5", 6889)


def test_advertised_flags_follow_bep11() -> None:
    c = conn(outgoing=True)
    assert pex_flags(c) == PexFlag.REACHABLE
    c.is_seed = True
    c.transport = "utp"
    c.ext = {b"e": 1}
    c.ext_ids = {"ut_holepunch": 4}
    assert pex_flags(c) == PexFlag.REACHABLE | PexFlag.SEED | PexFlag.UTP | PexFlag.ENCRYPTION | PexFlag.HOLEPUNCH
    assert pex_flags(conn(outgoing=False)) == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_fetch_link_garbage_gives_messages_or_wire_error_only(chunks: list[bytes]) -> None:
    link = FetchLink(now=0.0)
    try:
        for c in chunks:
            for ext_id, payload in link.receive_data(c):
                assert 0 <= ext_id <= 255 and isinstance(payload, bytes)
    except WireError:
        pass


def test_bep21_upload_only_is_advertised_as_a_seed() -> None:
    c = conn(outgoing=False)
    c.ext = {b"upload_only": 1}
    assert pex_flags(c) == PexFlag.SEED


def test_fetch_link_hands_over_skipped_frames_in_order_plus_a_partial_one() -> None:
    link = FetchLink(now=0.0)
    partial = frame(4, b"\0\0\0\7")[:6]
    assert link.receive_data(STREAM + partial) == EXPECTED
    link.extended(9, b"req", now=0.0)
    moved = link.hand_over()
    assert moved is not None
    unsent, replay = moved
    assert unsent == b"\0\0\0\x05\x14\x09req"
    # every non-BEP 10 frame with a body, in arrival order (keep-alives dropped), then the partial frame
    assert replay == frame(0x0E) + frame(5, b"\xff" * 300) + frame(4, b"\0\0\0\1") + partial


def test_fetch_link_gives_up_the_hand_over_when_too_much_was_skipped() -> None:
    from minibt.fetchlink import FETCH_REPLAY_MAX_BYTES

    link = FetchLink(now=0.0)
    big = frame(5, bytes(60_000))
    for _ in range(FETCH_REPLAY_MAX_BYTES // len(big) + 1):
        link.receive_data(big)
    assert link.replay_overflow and link.hand_over() is None
