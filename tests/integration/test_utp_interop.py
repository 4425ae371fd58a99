"""uTP (BEP 29) on real loopback sockets: minibt against a uTP-only libtorrent, against Transmission's
libutp (minibt uTP-only), against itself, and a storm of garbage datagrams on minibt's UDP port during a
transfer.

libtorrent runs with TCP disabled (``LibtorrentPeer(enable_utp=True, enable_tcp=False)``): it still
listens on TCP and closes accepted connections at once (PROTOCOL.md 7.9), so the default minibt
(transports tcp,utp) must fall back to uTP.  libtorrent's own peer list says which transport it saw
(peer_info flag utp_socket).  Every transfer is checked byte for byte.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import struct
import threading
from pathlib import Path

import pytest
from clients import (
    LOOPBACK,
    LibtorrentPeer,
    MadeTorrent,
    TransmissionPeer,
    assert_same_tree,
    make_payload,
    make_torrent,
    running,
)
from inproc import seeding_in_thread
from minibt_proc import MinibtProc

import minibt
from minibt.handles import PeerFlags
from minibt.metainfo import create_torrent

UTP_END_RE = re.compile(r"uTP connection #\d+ \S+ ends: .* payload (\d+) bytes after (\d+) MTU probes \((\d+) lost\)")

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("reference_clients")]

KIB, MIB = 1 << 10, 1 << 20
PIECE_LEN = 256 * KIB
LAYOUT = {"a.bin": 3 * MIB + 12345, "sub/b.bin": 2 * MIB - 777}  # a file boundary inside a piece
STORM_LAYOUT = {"a.bin": 24 * MIB + 5, "b.bin": 777}  # long enough for the storm to overlap the transfer
TRANSFER_DEADLINE_S = 40.0


def lt_torrent(tmp_path: Path) -> MadeTorrent:
    src = make_payload(tmp_path / "seed" / "payload", LAYOUT, 29)
    return make_torrent(src, tmp_path / "lt.torrent", [], PIECE_LEN)


def utp_only_libtorrent(tmp_path: Path, t: MadeTorrent, *, seed: bool,
                        peers: list[tuple[str, int]] | None = None) -> LibtorrentPeer:
    save = tmp_path / "seed" if seed else tmp_path / "lt-leech"
    # plaintext: minibt has no MSE yet (PROTOCOL.md 7.8)
    return LibtorrentPeer(tmp_path / "lt", torrent_path=t.path, save_dir=save, seed=seed, peers=peers or [],
                          enable_utp=True, enable_tcp=False, out_enc="disabled", in_enc="enabled")


def seen_minibt(lt_peer: LibtorrentPeer) -> list[dict[str, object]]:
    """libtorrent's record of minibt peers (peer id -MB...) that its peer list showed, with the 'utp' flag.

    Entries known only from a connect alert (no transport yet) are left out; a disconnect alert names it.
    """
    st = lt_peer.status()
    seen = st.get("seen_peers") or []
    return [p for p in seen if str(p.get("peer_id", "")).startswith("-MB") and "utp" in p]


def minibt_downloads(tmp_path: Path, t: MadeTorrent, port: int, *args: str) -> str:
    """``minibt download`` from the peer on ``port`` exits 0 in time, verified every piece and matches the
    seed byte for byte; its log."""
    leecher = MinibtProc(tmp_path / "mb", command="download", torrent=t, data_dir=tmp_path / "mb" / "data",
                         peers=[(LOOPBACK, port)], timeout_s=TRANSFER_DEADLINE_S + 20, extra_args=args)
    with running(leecher):
        rc = leecher.wait_exit(TRANSFER_DEADLINE_S)
        assert rc == 0, leecher.log_tail()
    log = leecher.log_text()
    assert f"complete, {t.num_pieces} pieces verified" in log
    assert_same_tree(tmp_path / "seed" / t.name, leecher.data_dir / t.name)
    return log


# --------------------------------------------------------------------------------------------- libtorrent


def test_minibt_downloads_from_utp_only_libtorrent(tmp_path: Path) -> None:
    """Default transports (tcp first): libtorrent closes the TCP connection, minibt falls back to uTP."""
    t = lt_torrent(tmp_path)
    seeder = utp_only_libtorrent(tmp_path, t, seed=True)
    with running(seeder):
        seeder.wait_complete(timeout_s=20)
        log = minibt_downloads(tmp_path, t, seeder.port)
        assert "over tcp" in log and "trying utp" in log, log[-3000:]  # the fallback was taken
        seeder.wait_until(lambda: seen_minibt(seeder), 5, "libtorrent lists minibt")
        peers = seen_minibt(seeder)
        assert peers and all(p["utp"] for p in peers), peers
        seeder.wait_until(lambda: seeder.status()["total_payload_upload"] >= t.total_size, 5, "upload counter")


def test_utp_only_libtorrent_downloads_from_minibt(tmp_path: Path) -> None:
    t = lt_torrent(tmp_path)
    seeder = MinibtProc(tmp_path / "mb", command="seed", torrent=t, data_dir=tmp_path / "seed",
                        extra_args=["--transport", "utp"])
    with running(seeder):
        leecher = utp_only_libtorrent(tmp_path, t, seed=False, peers=[(LOOPBACK, seeder.port)])
        with running(leecher):
            leecher.wait_complete(timeout_s=TRANSFER_DEADLINE_S)
            assert_same_tree(tmp_path / "seed" / t.name, tmp_path / "lt-leech" / t.name)
            st = leecher.status()
            assert st["total_payload_download"] >= t.total_size and st["total_failed_bytes"] == 0
            leecher.wait_until(lambda: seen_minibt(leecher), 5, "libtorrent lists minibt")
            peers = seen_minibt(leecher)
            assert peers and all(p["utp"] for p in peers), peers
            # minibt's MTU probes (don't-fragment) grew its packets past the 1200-byte start, and
            # libtorrent took every one of them (loopback carries 64 KiB datagrams).
            seeder.wait_until(lambda: UTP_END_RE.search(seeder.log_text()), 30, "the uTP connection's summary")
            m = UTP_END_RE.search(seeder.log_text())
            assert m is not None
            payload, probes, lost = (int(g) for g in m.groups())
            assert payload >= 1384 and probes >= 4 and lost == 0, m.group(0)


def test_minibt_utp_first_falls_back_to_tcp_only_libtorrent(tmp_path: Path) -> None:
    """transports utp,tcp against a peer without uTP: the uTP connect times out (3 s), TCP takes over."""
    t = lt_torrent(tmp_path)
    seeder = LibtorrentPeer(tmp_path / "lt", torrent_path=t.path, save_dir=tmp_path / "seed", seed=True,
                            enable_utp=False, enable_tcp=True, out_enc="disabled")
    with running(seeder):
        seeder.wait_complete(timeout_s=20)
        leecher = MinibtProc(tmp_path / "mb", command="download", torrent=t, data_dir=tmp_path / "mb" / "data",
                             peers=[(LOOPBACK, seeder.port)], timeout_s=TRANSFER_DEADLINE_S + 20,
                             extra_args=["--transport", "utp,tcp"])
        with running(leecher):
            assert leecher.wait_exit(TRANSFER_DEADLINE_S) == 0, leecher.log_tail()
        log = leecher.log_text()
        assert "over utp" in log and "trying tcp" in log, log[-3000:]
        assert_same_tree(tmp_path / "seed" / t.name, leecher.data_dir / t.name)
        # The TCP transfer can be over before libtorrent's 20 Hz peer-list poll: use its connect alerts.
        seeder.wait_until(lambda: "incoming connection to peer (TCP)" in seeder.log_tail(), 5, "TCP connect alert")
        assert "(uTP)" not in seeder.log_tail()


# --------------------------------------------------------------------------------------------- Transmission
# Transmission 3.00 speaks uTP through libutp, BitTorrent Inc.'s reference implementation (libtorrent has
# its own).  It has no setting to turn TCP off, so minibt runs uTP-only (--transport utp) and dials it:
# Transmission never dials loopback peers (PROTOCOL.md 7.1).


def utp_transmission(tmp_path: Path, t: MadeTorrent, *, seed: bool) -> TransmissionPeer:
    return TransmissionPeer(tmp_path / "tr", torrent_path=t.path, save_dir=tmp_path / ("seed" if seed else "tr-leech"),
                            seed=seed, extra_settings={"utp-enabled": True})


def transmission_saw_utp(tr: TransmissionPeer) -> list[dict[str, object]]:
    """Transmission's connected peers that it says are uTP ones (torrent-get peers, isUTP)."""
    return [p for p in tr.status().get("peers") or [] if p.get("isUTP")]


def test_minibt_downloads_from_transmission_over_utp(tmp_path: Path) -> None:
    t = lt_torrent(tmp_path)
    seeder = utp_transmission(tmp_path, t, seed=True)
    with running(seeder):
        seeder.wait_complete(timeout_s=20)
        log = minibt_downloads(tmp_path, t, seeder.port, "--transport", "utp")
        # uTP only: the transfer ran over a uTP connection, which logged its end
        assert UTP_END_RE.search(log) is not None and "over tcp" not in log, log[-3000:]
        seeder.wait_until(lambda: seeder.status().get("uploadedEver", 0) >= t.total_size, 10,
                          "Transmission counts the upload")


def test_transmission_downloads_from_minibt_over_utp(tmp_path: Path) -> None:
    t = lt_torrent(tmp_path)
    leecher = utp_transmission(tmp_path, t, seed=False)
    with running(leecher):
        seeder = MinibtProc(tmp_path / "mb", command="seed", torrent=t, data_dir=tmp_path / "seed",
                            peers=[(LOOPBACK, leecher.port)], extra_args=["--transport", "utp"])
        with running(seeder):
            leecher.wait_until(lambda: transmission_saw_utp(leecher), 20, "Transmission lists minibt over uTP")
            leecher.wait_complete(timeout_s=TRANSFER_DEADLINE_S)
            assert_same_tree(tmp_path / "seed" / t.name, tmp_path / "tr-leech" / t.name)
            st = leecher.status()
            assert st["haveValid"] >= t.total_size, st


# --------------------------------------------------------------------------------------------- minibt <-> minibt


def utp_seeder(torrent: Path, data_dir: Path) -> contextlib.AbstractContextManager[minibt.Client]:
    """A uTP-only seeding Client on a thread of its own (one Client per thread)."""
    client = minibt.Client(bind=LOOPBACK, port=0, transports=("utp",))
    return seeding_in_thread(client, torrent, data_dir, TRANSFER_DEADLINE_S)


def own_torrent(tmp_path: Path) -> Path:
    src = make_payload(tmp_path / "seed" / "payload", STORM_LAYOUT, 31)
    torrent = tmp_path / "p.torrent"
    torrent.write_bytes(create_torrent(str(src), piece_length=PIECE_LEN))
    return torrent


def garbage_datagrams(rng: random.Random, n: int) -> list[bytes]:
    """Random bytes, truncated and well-formed uTP headers with random ids, fake tracker replies."""
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            out.append(rng.randbytes(rng.randrange(1, 1500)))
        elif kind == 1:  # valid-looking uTP header (ST_DATA/ST_STATE/ST_FIN/ST_RESET) for unknown ids
            typ = rng.choice((0, 1, 2, 3))
            hdr = struct.pack(">BBHIIIHH", (typ << 4) | 1, rng.choice((0, 1, 7)), rng.randrange(65536),
                              rng.getrandbits(32), rng.getrandbits(32), rng.getrandbits(32),
                              rng.randrange(65536), rng.randrange(65536))
            out.append(hdr + rng.randbytes(rng.randrange(0, 64)))
        elif kind == 2:  # uTP first byte, but shorter than a header
            out.append(bytes((0x01,)) + rng.randbytes(rng.randrange(0, 19)))
        else:  # looks like a BEP 15 reply from an address that is no tracker
            out.append(struct.pack(">II", rng.randrange(4), rng.getrandbits(32)) + rng.randbytes(12))
    return out


def test_minibt_to_minibt_over_utp_with_garbage_storm(tmp_path: Path) -> None:
    """A thread blasts garbage at both minibt UDP ports for the whole transfer; it completes byte-exact."""
    torrent = own_torrent(tmp_path)
    storm = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stop = threading.Event()
    sent = [0]

    def blast(ports: tuple[int, int]) -> None:
        rng = random.Random(6)
        batch = garbage_datagrams(rng, 400)
        while not stop.is_set():
            for i, d in enumerate(batch):
                storm.sendto(d, (LOOPBACK, ports[i % 8 == 0]))  # 7/8 to the leecher, 1/8 to the seeder
                sent[0] += 1
            stop.wait(0.002)

    try:
        with utp_seeder(torrent, tmp_path / "seed") as seeder, \
                minibt.Client(bind=LOOPBACK, port=0, transports=("utp",)) as leecher:
            blaster = threading.Thread(target=blast, args=((leecher.port, seeder.port),), daemon=True)
            blaster.start()
            try:
                t = leecher.add(str(torrent), str(tmp_path / "leech"), peers=[(LOOPBACK, seeder.port)])
                seen: list[tuple[str, PeerFlags]] = []

                def on_tick(now: float) -> None:
                    seen.extend((p.transport, p.flags) for p in leecher.peers(t))

                deadline = leecher.clock.now() + TRANSFER_DEADLINE_S
                leecher.run(until=lambda: t.complete or leecher.clock.now() > deadline, on_tick=on_tick)
            finally:
                stop.set()
                blaster.join(timeout=5)
            assert t.complete, t.status(leecher.clock.now())
            assert t.stats.hash_failures == 0 and t.stats.wasted == 0
            stats = leecher.loop.utp_stats()
            counters = leecher.loop.counters
    finally:
        storm.close()
    assert_same_tree(tmp_path / "seed" / "payload", tmp_path / "leech" / "payload")
    assert seen and all(tr == "utp" and PeerFlags.UTP in fl for tr, fl in seen), seen[:5]
    # the storm reached the demultiplexer and was counted there, not delivered anywhere
    assert sent[0] >= 400 and stats["garbage"] > 0 and stats["unknown_connection"] > 0, (sent, stats)
    assert counters["udp_dropped"] > 0 and counters["udp_unmatched"] > 0, counters
    assert stats["resets_sent"] <= 10 + 10 * TRANSFER_DEADLINE_S  # RESETs to unknown ids are rate limited
