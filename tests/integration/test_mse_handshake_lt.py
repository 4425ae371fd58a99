"""MSE/PE (minibt.mse) against a real libtorrent over loopback TCP: the libtorrent capture the
known-answer tests in tests/unit/test_mse.py are checked against.

libtorrent is told to require RC4 (out_enc_policy / in_enc_policy = pe_forced, allowed_enc_level =
pe_rc4, prefer_rc4), so a connection only works when our DH, hashes, key derivation, VC sync and RC4
discard all match its own.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from pathlib import Path

import pytest
from clients import LibtorrentPeer, running

from minibt.handshake import encode_handshake, make_reserved
from minibt.metainfo import create_torrent, load_metainfo
from minibt.mse import CRYPTO_PLAIN, CRYPTO_RC4, MseDone, MseInitiator, MseResponder, req2_hash

pytest.importorskip("libtorrent")
pytestmark = [pytest.mark.integration]

TEST_DEADLINE_S = 20.0
PIECE_LEN = 16384
PAYLOAD_LEN = 5 * PIECE_LEN + 1000  # 6 pieces -> a 1-byte bitfield
LT_RC4_ONLY = {"allowed_enc_level": 2, "prefer_rc4": True}  # lt.enc_level: pe_plaintext 1, pe_rc4 2, pe_both 3
LT_PLAIN_ONLY = {"allowed_enc_level": 1, "prefer_rc4": False}
OUR_ID = b"-MB0001-mse-interop!"


def make_seed(tmp: Path) -> tuple[Path, Path, bytes, int]:
    seed_dir = tmp / "seed"
    seed_dir.mkdir()
    (seed_dir / "payload.bin").write_bytes(random.Random(7).randbytes(PAYLOAD_LEN))
    torrent = tmp / "payload.torrent"
    torrent.write_bytes(create_torrent(str(seed_dir / "payload.bin"), trackers=[], piece_length=PIECE_LEN))
    meta = load_metainfo(str(torrent))
    return torrent, seed_dir, meta.info_hash, meta.num_pieces


def read_until(sock: socket.socket, have: bytes, stream_decrypt: object, n: int, deadline: float) -> bytes:
    """Receive (and decrypt) until ``have`` holds at least n bytes."""
    buf = bytearray(have)
    while len(buf) < n:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        data = sock.recv(65536)
        assert data, f"libtorrent closed after {len(buf)} decrypted bytes"
        buf += stream_decrypt(data)  # type: ignore[operator]
    return bytes(buf)


def rc4_peer(lt_seed: LibtorrentPeer) -> bool:
    peers = lt_seed.status().get("peers") or []
    return any(isinstance(p, dict) and p.get("rc4") for p in peers)


def check_bt_reply(plain: bytes, info_hash: bytes, num_pieces: int) -> None:
    """A BEP 3 handshake for our torrent, then a complete bitfield (we announced no extensions)."""
    assert plain[:20] == b"\x13BitTorrent protocol"
    assert plain[28:48] == info_hash
    (length,) = struct.unpack(">I", plain[68:72])
    assert length == 1 + (num_pieces + 7) // 8 and plain[72] == 5  # BEP 3 bitfield
    bits = int.from_bytes(plain[73:73 + length - 1], "big")
    spare = 8 * (length - 1) - num_pieces
    assert bits == ((1 << num_pieces) - 1) << spare


@pytest.mark.parametrize(("lt_settings", "method"), [(LT_RC4_ONLY, CRYPTO_RC4), (LT_PLAIN_ONLY, CRYPTO_PLAIN)],
                         ids=["rc4", "plaintext"])
def test_initiator_against_libtorrent_mse_forced(tmp_path: Path, lt_settings: dict[str, object],
                                                 method: int) -> None:
    torrent, seed_dir, info_hash, num_pieces = make_seed(tmp_path)
    lt_seed = LibtorrentPeer(tmp_path / "lt", torrent_path=torrent, save_dir=seed_dir, seed=True,
                             out_enc="forced", in_enc="forced", extra_settings=lt_settings)
    deadline = time.monotonic() + TEST_DEADLINE_S
    with running(lt_seed):
        lt_seed.wait_until(lambda: bool(lt_seed.status().get("is_seeding")), TEST_DEADLINE_S, "seeding")
        ia = encode_handshake(make_reserved(fast=False, extension=False), info_hash, OUR_ID)
        mse = MseInitiator(info_hash, ia=ia, rng=random.SystemRandom(), now=time.monotonic(),
                           provide=CRYPTO_RC4 | CRYPTO_PLAIN)
        with socket.create_connection(("127.0.0.1", lt_seed.port), timeout=5.0) as sock:
            events: list[MseDone] = []
            while not events:
                sock.sendall(mse.data_to_send())
                sock.settimeout(max(0.05, deadline - time.monotonic()))
                data = sock.recv(65536)
                assert data, f"libtorrent closed during MSE in state {mse.state}\n{lt_seed.log_tail()}"
                events = mse.receive_data(data, now=time.monotonic())
            sock.sendall(mse.data_to_send())
            (done,) = events
            assert done.method == method and done.info_hash == info_hash
            stream = mse.stream()
            plain = read_until(sock, done.leftover, stream.decrypt, 68 + 4 + 1 + (num_pieces + 7) // 8, deadline)
            check_bt_reply(plain, info_hash, num_pieces)
            if method == CRYPTO_RC4:
                lt_seed.wait_until(lambda: rc4_peer(lt_seed), 10.0, "libtorrent lists an RC4 peer")


def test_responder_against_libtorrent_dialling_in(tmp_path: Path) -> None:
    torrent, seed_dir, info_hash, num_pieces = make_seed(tmp_path)
    lt_seed = LibtorrentPeer(tmp_path / "lt", torrent_path=torrent, save_dir=seed_dir, seed=True,
                             out_enc="forced", in_enc="forced", extra_settings=LT_RC4_ONLY)
    deadline = time.monotonic() + TEST_DEADLINE_S
    other = bytes(20)  # a second torrent we serve on the same port: lookup by req2 hash picks the right one
    table = {req2_hash(info_hash): info_hash, req2_hash(other): other}
    with running(lt_seed), socket.create_server(("127.0.0.1", 0)) as listener:
        lt_seed.wait_until(lambda: bool(lt_seed.status().get("is_seeding")), TEST_DEADLINE_S, "seeding")
        lt_seed.connect("127.0.0.1", listener.getsockname()[1])
        listener.settimeout(max(0.05, deadline - time.monotonic()))
        sock, _ = listener.accept()
        with sock:
            mse = MseResponder(table.get, rng=random.SystemRandom(), now=time.monotonic(),
                               allow=CRYPTO_RC4 | CRYPTO_PLAIN)
            events: list[MseDone] = []
            while not events:
                sock.settimeout(max(0.05, deadline - time.monotonic()))
                data = sock.recv(65536)
                assert data, f"libtorrent closed during MSE in state {mse.state}\n{lt_seed.log_tail()}"
                events = mse.receive_data(data, now=time.monotonic())
                sock.sendall(mse.data_to_send())
            (done,) = events
            assert done.method == CRYPTO_RC4 and done.info_hash == info_hash
            stream = mse.stream()
            # libtorrent puts its BT handshake in IA (PROTOCOL.md 2.12)
            theirs = done.ia + done.leftover
            theirs = read_until(sock, theirs, stream.decrypt, 68, deadline)
            assert theirs[:20] == b"\x13BitTorrent protocol" and theirs[28:48] == info_hash
            ours = encode_handshake(make_reserved(fast=False, extension=False), info_hash, OUR_ID)
            sock.sendall(stream.encrypt(ours))
            plain = read_until(sock, theirs, stream.decrypt, 68 + 4 + 1 + (num_pieces + 7) // 8, deadline)
            check_bt_reply(plain, info_hash, num_pieces)
            lt_seed.wait_until(lambda: rc4_peer(lt_seed), 10.0, "libtorrent lists an RC4 peer")


def test_libtorrent_refuses_plaintext_only_offer(tmp_path: Path) -> None:
    """With RC4 required, libtorrent must not accept a crypto_provide of plaintext only."""
    torrent, seed_dir, info_hash, _ = make_seed(tmp_path)
    lt_seed = LibtorrentPeer(tmp_path / "lt", torrent_path=torrent, save_dir=seed_dir, seed=True,
                             out_enc="forced", in_enc="forced", extra_settings=LT_RC4_ONLY)
    deadline = time.monotonic() + TEST_DEADLINE_S
    with running(lt_seed):
        lt_seed.wait_until(lambda: bool(lt_seed.status().get("is_seeding")), TEST_DEADLINE_S, "seeding")
        ia = encode_handshake(make_reserved(fast=False, extension=False), info_hash, OUR_ID)
        mse = MseInitiator(info_hash, ia=ia, rng=random.SystemRandom(), now=time.monotonic(),
                           provide=CRYPTO_PLAIN)
        with socket.create_connection(("127.0.0.1", lt_seed.port), timeout=5.0) as sock:
            closed = False
            while not closed and time.monotonic() < deadline:
                sock.sendall(mse.data_to_send())
                sock.settimeout(max(0.05, deadline - time.monotonic()))
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                closed = not data
                if data:
                    assert not mse.receive_data(data, now=time.monotonic()), "libtorrent accepted plaintext"
            assert closed and not mse.done
