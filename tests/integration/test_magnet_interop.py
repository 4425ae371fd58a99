"""Magnet links (BEP 9 ut_metadata) against real peers on loopback.

(d) ``minibt download 'magnet:?xt=...&x.pe=<libtorrent seeder>' --save-torrent F`` fetches the info
    dict from libtorrent, downloads byte-exact and writes a .torrent with the same info-hash.
(e) The metadata first arrives corrupt from an evil peer (evil_peer.Mode.CORRUPT_METADATA, 127.0.0.2,
    the only peer known at first); minibt drops that copy, closes and penalises the sender, and
    completes from an honest libtorrent seeder it is told about afterwards.
"""

from __future__ import annotations

import hashlib
import random
import socket
import sys
import time
from pathlib import Path

import pytest
from clients import LOOPBACK, LibtorrentPeer, assert_same_tree, make_torrent, running
from evil_peer import EvilPeer, Mode
from minibt_proc import MinibtProc

from minibt.client import Client
from minibt.errors import CloseReason
from minibt.magnet import make_magnet
from minibt.metainfo import load_metainfo
from minibt.peer import PeerSource

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("reference_clients")]

KIB = 1 << 10
DEADLINE_S = 60.0


def many_files(root: Path, n: int, size: int, seed: int) -> Path:
    """n files with long names: an info dict > 16 KiB, i.e. several BEP 9 metadata pieces."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    for i in range(n):
        (root / f"a-file-with-a-deliberately-long-name-{i:04d}.bin").write_bytes(rng.randbytes(size + i))
    return root


def test_magnet_with_x_pe_downloads_from_libtorrent_and_saves_the_torrent(tmp_path: Path) -> None:
    src = many_files(tmp_path / "seed" / "payload", 400, 5 * KIB, seed=41)
    t = make_torrent(src, tmp_path / "lt.torrent", [], 32 * KIB)
    meta = load_metainfo(str(t.path))
    assert len(meta.info_bytes) > 16 * KIB  # several metadata pieces
    seeder = LibtorrentPeer(tmp_path / "lt", torrent_path=t.path, save_dir=tmp_path / "seed", seed=True)
    with running(seeder):
        seeder.wait_complete(timeout_s=30)
        magnet = make_magnet(bytes.fromhex(t.info_hash), peers=[(LOOPBACK, seeder.port)])
        saved = tmp_path / "saved.torrent"
        t0 = time.monotonic()
        # MinibtProc takes a path; a magnet URI without '/' survives Path() unchanged.
        assert str(Path(magnet)) == magnet
        proc = MinibtProc(tmp_path / "mb", command="download", torrent=Path(magnet), data_dir=tmp_path / "mb" / "data",
                          timeout_s=DEADLINE_S, extra_args=["--save-torrent", str(saved)])
        with running(proc):
            rc = proc.wait_exit(DEADLINE_S + 10)
            log = proc.log_text()
        assert rc == 0, f"minibt exited {rc}\n{log[-4000:]}"
        print(f"magnet download took {time.monotonic() - t0:.1f} s", file=sys.stderr)
    assert "metadata received: payload" in log
    assert f"complete, {t.num_pieces} pieces verified" in log
    assert_same_tree(tmp_path / "seed" / "payload", proc.data_dir / "payload")
    got = load_metainfo(str(saved))
    assert got.info_hash.hex() == t.info_hash and got.info_bytes == meta.info_bytes


def test_magnet_corrupt_metadata_from_evil_peer_then_completes_from_honest(tmp_path: Path) -> None:
    src = many_files(tmp_path / "seed" / "payload", 400, 5 * KIB, seed=42)
    t = make_torrent(src, tmp_path / "lt.torrent", [], 32 * KIB)
    meta = load_metainfo(str(t.path))
    assert hashlib.sha1(meta.info_bytes).hexdigest() == t.info_hash
    seeder = LibtorrentPeer(tmp_path / "lt", torrent_path=t.path, save_dir=tmp_path / "seed", seed=True)
    evil = EvilPeer(info_hash=meta.info_hash, num_pieces=meta.num_pieces, piece_length=meta.piece_length,
                    total_length=meta.total_length, mode=Mode.CORRUPT_METADATA, extension=True,
                    info_bytes=meta.info_bytes)
    with running(seeder), evil:
        seeder.wait_complete(timeout_s=30)
        evil_addr = evil.listen()
        magnet = make_magnet(meta.info_hash, name="payload", peers=[evil_addr])
        with Client(bind=LOOPBACK, port=0) as c:
            f = c.add(magnet, str(tmp_path / "mb"))
            assert not hasattr(f, "have")  # a magnet handle, not yet a torrent
            told_honest: list[float] = []

            def tick(now: float) -> None:
                # Only once the evil copy was sent and rejected is the honest seeder made known.
                if not told_honest and c.session.fetches and f.fetcher.stats()["failures"] >= 1:
                    f.add_peers([(LOOPBACK, seeder.port)], PeerSource.USER)
                    told_honest.append(now)

            deadline = time.monotonic() + DEADLINE_S
            c.run(until=lambda: f.complete or time.monotonic() > deadline, on_tick=tick)
            assert f.complete, f"not complete: {f.status(c.clock.now())}\n{seeder.log_tail()}"
            closed = [(a, r) for _, a, r, _ in c.session.closed_log]
            rep = c.session.reputation.score(evil_addr[0])
    assert told_honest, "the corrupt copy was never detected"
    recs = evil.records
    # (the first connection may be our MSE attempt, answered in plaintext and redialled in plaintext)
    served = [r for r in recs if r.metadata_pieces_sent >= 2]
    assert served and served[0].misbehaved_at is not None
    assert (evil_addr, CloseReason.CORRUPT_DATA) in closed
    assert rep < 100  # penalised
    assert_same_tree(tmp_path / "seed" / "payload", tmp_path / "mb" / "payload")


def test_magnet_x_pe_host_name_is_dialled(tmp_path: Path) -> None:
    src = many_files(tmp_path / "seed" / "payload", 3, 40 * KIB, seed=43)
    t = make_torrent(src, tmp_path / "lt.torrent", [], 32 * KIB)
    seeder = LibtorrentPeer(tmp_path / "lt", torrent_path=t.path, save_dir=tmp_path / "seed", seed=True)
    with running(seeder):
        seeder.wait_complete(timeout_s=30)
        uri = f"magnet:?xt=urn:btih:{t.info_hash}&x.pe=localhost:{seeder.port}"
        with Client(bind=LOOPBACK, port=0) as c:
            f = c.add_magnet(uri, str(tmp_path / "mb"))
            assert f.magnet.peers == (("localhost", seeder.port),)
            deadline = time.monotonic() + DEADLINE_S
            c.run(until=lambda: f.complete or time.monotonic() > deadline)
            assert f.complete, f.status(c.clock.now())
    assert_same_tree(tmp_path / "seed" / "payload", tmp_path / "mb" / "payload")


def test_magnet_x_pe_name_that_does_not_resolve_fails_alone_and_the_loop_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Names are resolved on the worker pool, never on the loop; a failed lookup closes only that dial.

    The failing resolver is simulated (a real lookup of a missing name would query a DNS server)."""
    real = socket.getaddrinfo

    def fake_getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        if host in ("peer.unresolvable.test", b"peer.unresolvable.test"):  # netif.resolve: ASCII as bytes
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    src = many_files(tmp_path / "seed" / "payload", 3, 40 * KIB, seed=45)
    t = make_torrent(src, tmp_path / "lt.torrent", [], 32 * KIB)
    seeder = LibtorrentPeer(tmp_path / "lt", torrent_path=t.path, save_dir=tmp_path / "seed", seed=True)
    with running(seeder):
        seeder.wait_complete(timeout_s=30)
        uri = f"magnet:?xt=urn:btih:{t.info_hash}&x.pe=peer.unresolvable.test:6881"
        closed: list[tuple[str, CloseReason, str]] = []
        with Client(bind=LOOPBACK, port=0) as c:
            c.on("peer_disconnected", lambda ev: closed.append((ev.peer.ip, ev.reason, ev.detail)))
            f = c.add_magnet(uri, str(tmp_path / "mb"))
            deadline = time.monotonic() + DEADLINE_S
            c.run(until=lambda: bool(closed) or time.monotonic() > deadline)
            assert closed and closed[0][:2] == ("peer.unresolvable.test", CloseReason.CONNECT_FAILED), closed
            assert "cannot resolve" in closed[0][2]
            f.add_peers([(LOOPBACK, seeder.port)], PeerSource.USER)  # the loop goes on: an honest peer
            c.run(until=lambda: f.complete or time.monotonic() > deadline)
            assert f.complete, f.status(c.clock.now())
    assert_same_tree(tmp_path / "seed" / "payload", tmp_path / "mb" / "payload")


def test_magnet_with_evil_and_honest_peers_at_once_completes(tmp_path: Path) -> None:
    """Both x.pe peers from the start (the CLI): pieces of one copy may come from both, so a bad copy
    cannot always be pinned on one peer at once; minibt then takes each copy from a single peer."""
    src = many_files(tmp_path / "seed" / "payload", 400, 5 * KIB, seed=44)
    t = make_torrent(src, tmp_path / "lt.torrent", [], 32 * KIB)
    meta = load_metainfo(str(t.path))
    seeder = LibtorrentPeer(tmp_path / "lt", torrent_path=t.path, save_dir=tmp_path / "seed", seed=True)
    evil = EvilPeer(info_hash=meta.info_hash, num_pieces=meta.num_pieces, piece_length=meta.piece_length,
                    total_length=meta.total_length, mode=Mode.CORRUPT_METADATA, extension=True,
                    info_bytes=meta.info_bytes)
    with running(seeder), evil:
        seeder.wait_complete(timeout_s=30)
        magnet = make_magnet(meta.info_hash, peers=[evil.listen(), (LOOPBACK, seeder.port)])
        proc = MinibtProc(tmp_path / "mb", command="download", torrent=Path(magnet), data_dir=tmp_path / "mb" / "data",
                          timeout_s=DEADLINE_S)
        with running(proc):
            rc = proc.wait_exit(DEADLINE_S + 10)
            log = proc.log_text()
    assert rc == 0, f"minibt exited {rc}\n{log[-4000:]}"
    assert_same_tree(tmp_path / "seed" / "payload", proc.data_dir / "payload")
    sent = sum(r.metadata_pieces_sent for r in evil.records)
    if sent:  # the evil copy was (partly) used: minibt must have noticed before building the torrent
        assert "does not match the info-hash" in log
    print(f"evil peer sent {sent} corrupt metadata piece(s)", file=sys.stderr)
