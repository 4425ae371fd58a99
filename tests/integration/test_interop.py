"""minibt against real clients on loopback: libtorrent, Transmission, aria2 and opentracker.

Every test moves a multi-file payload of a few MiB (a file boundary falls inside a piece, the last piece
is short) and checks the result byte for byte with assert_same_tree.  Processes run with bounded
deadlines and are stopped by PID (clients.running / MinibtProc).  Torrents are made by libtorrent
(clients.make_torrent) for some tests and by ``minibt create`` for others.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from clients import (
    LOOPBACK,
    Aria2Peer,
    Client,
    LibtorrentPeer,
    MadeTorrent,
    Opentracker,
    TransmissionPeer,
    assert_same_tree,
    listening_addresses,
    make_payload,
    make_torrent,
    running,
    wait_until,
)
from minibt_proc import MinibtProc, minibt_create

from minibt.client import Client as MinibtClient
from minibt.metainfo import load_metainfo
from minibt.settings import TorrentState
from minibt.storage import load_resume

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("reference_clients")]

KIB = 1 << 10
MIB = 1 << 20
PIECE_LEN = 256 * KIB
# ~5 MiB in three files: a.bin ends inside piece 8, b.bin's size is no piece multiple, the last piece is short.
LAYOUT = {"a.bin": 2 * MIB + 12345, "sub/b.bin": 3 * MIB - 777, "sub/deeper/c.txt": 1000}
SWARM_LAYOUT = {"x.bin": 5 * MIB + 4321, "y/z.bin": 3 * MIB + 99}  # ~8 MiB for the swarm test
TRANSFER_DEADLINE_S = 40.0  # one whole transfer of a few MiB on loopback; Transmission adds up to ~10 s
EXIT_DEADLINE_S = 8.0  # SIGTERM -> exit; shutdown waits at most 5 s for 'stopped' announces
STOPPED_EXIT_S = 3.0  # SIGTERM -> exit when the tracker answers the 'stopped' announce at once


# --------------------------------------------------------------------------------------------- helpers


def payload(tmp_path: Path, layout: dict[str, int] = LAYOUT, seed: int = 11) -> Path:
    """The seed's data: tmp_path/seed/payload/... (the torrent's name is "payload")."""
    return make_payload(tmp_path / "seed" / "payload", layout, seed)


def lt_torrent(tmp_path: Path, trackers: list[str], layout: dict[str, int] = LAYOUT, seed: int = 11) -> MadeTorrent:
    return make_torrent(payload(tmp_path, layout, seed), tmp_path / "lt.torrent", trackers, PIECE_LEN)


def mb_torrent(tmp_path: Path, trackers: list[str], layout: dict[str, int] = LAYOUT, seed: int = 12,
               piece_length: int = PIECE_LEN) -> MadeTorrent:
    """A torrent made by ``minibt create``, described through libtorrent (which must accept it)."""
    import bencode2
    import libtorrent as lt

    src = payload(tmp_path, layout, seed)
    out = tmp_path / "mb.torrent"
    printed = minibt_create(src, out, trackers, piece_length)
    ti = lt.torrent_info(str(out))
    info_hash = str(ti.info_hash())
    assert info_hash in printed, f"minibt create printed {printed!r}, libtorrent computes {info_hash}"
    assert ti.total_size() == sum(layout.values()) and ti.piece_length() == piece_length
    meta = bencode2.bdecode(out.read_bytes())
    assert meta.get(b"announce", b"").decode() == (trackers[0] if trackers else "")
    return MadeTorrent(path=out, info_hash=info_hash, name=ti.name(), total_size=ti.total_size(),
                       piece_length=ti.piece_length(), num_pieces=ti.num_pieces())


def seed_dir(tmp_path: Path) -> Path:
    return tmp_path / "seed"


def assert_loopback_only(*procs: Client) -> None:
    for c in procs:
        addrs = listening_addresses(c.pid)
        assert addrs, f"{c.name} has no listening sockets"
        bad = {a for a in addrs if not a.startswith("127.")}
        assert not bad, f"{c.name} listens on non-loopback addresses {bad}"


def minibt_download(tmp_path: Path, t: MadeTorrent, label: str = "minibt-download",
                    peers: list[tuple[str, int]] | None = None) -> MinibtProc:
    # --timeout: minibt gives up on its own (exit 1) if the test's own deadline somehow does not fire.
    return MinibtProc(tmp_path / label, command="download", torrent=t, data_dir=tmp_path / label / "data",
                      peers=peers or [], label=label, timeout_s=TRANSFER_DEADLINE_S + 20)


def minibt_seed(tmp_path: Path, t: MadeTorrent, label: str = "minibt-seed",
                peers: list[tuple[str, int]] | None = None, state_dir: Path | None = None) -> MinibtProc:
    return MinibtProc(tmp_path / label, command="seed", torrent=t, data_dir=seed_dir(tmp_path),
                      peers=peers or [], label=label, state_dir=state_dir)


def assert_downloaded(proc: MinibtProc, t: MadeTorrent, tmp_path: Path, deadline_s: float = TRANSFER_DEADLINE_S) -> None:
    """The minibt download exits 0 in time, says it verified every piece, and its data matches the seed's."""
    rc = proc.wait_exit(deadline_s)
    assert rc == 0, f"{proc.name} exited with {rc}\n{proc.log_tail()}"
    assert f"complete, {t.num_pieces} pieces verified" in proc.log_text()
    assert_same_tree(seed_dir(tmp_path) / t.name, proc.data_dir / t.name)


def resume_record(state_dir: Path, t: MadeTorrent, data_dir: Path) -> tuple[int, int, int]:
    """(pieces marked have, uploaded, downloaded) from minibt's resume file in state_dir."""
    files = sorted(state_dir.glob(f"{t.info_hash}-*.resume"))
    assert len(files) == 1, f"expected one resume file for {t.info_hash} in {state_dir}, found {files}"
    meta = load_metainfo(str(t.path))
    rd, warning = load_resume(str(files[0]), meta, str(data_dir))
    assert rd is not None, f"resume file {files[0]} not usable: {warning}"
    claimed = bytes(a | b for a, b in zip(rd.have, rd.pending or bytes(len(rd.have)), strict=True))  # pending: written, not flushed
    have = sum(bin(b).count("1") for b in claimed)
    return have, rd.uploaded, rd.downloaded


# --------------------------------------------------------------------------------------------- minibt leeches


def test_minibt_downloads_from_libtorrent_via_opentracker_http(tmp_path: Path, opentracker: Opentracker) -> None:
    t = lt_torrent(tmp_path, [opentracker.announce_url_http])
    opentracker.whitelist(t.info_hash)
    seeder = LibtorrentPeer(tmp_path / "lt", torrent_path=t.path, save_dir=seed_dir(tmp_path), seed=True)
    with running(seeder):
        seeder.wait_complete(timeout_s=20)
        opentracker.wait_seeders(t.info_hash, 1)
        leecher = minibt_download(tmp_path, t)  # no --peer: the tracker is the only way to the seeder
        with running(leecher):
            assert_downloaded(leecher, t, tmp_path)
        # The seed is the only source: libtorrent's counter shows it uploaded the payload to minibt.
        seeder.wait_until(lambda: seeder.status()["total_payload_upload"] >= t.total_size, 5, "upload counter")


def test_minibt_downloads_from_libtorrent_via_opentracker_udp(tmp_path: Path, opentracker: Opentracker) -> None:
    t = mb_torrent(tmp_path, [opentracker.announce_url_udp])
    opentracker.whitelist(t.info_hash)
    seeder = LibtorrentPeer(tmp_path / "lt", torrent_path=t.path, save_dir=seed_dir(tmp_path), seed=True)
    with running(seeder):
        seeder.wait_complete(timeout_s=20)
        opentracker.wait_seeders(t.info_hash, 1)  # libtorrent's UDP announce arrived
        leecher = minibt_download(tmp_path, t)
        with running(leecher):
            # While minibt downloads, opentracker knows it as a leecher: its UDP announce arrived too.
            wait_until(lambda: opentracker.scrape(t.info_hash).get("incomplete", 0) >= 1 or
                       leecher.returncode() is not None, 20, "minibt's UDP announce", [seeder])
            assert_downloaded(leecher, t, tmp_path)
        seeder.wait_until(lambda: seeder.status()["total_payload_upload"] >= t.total_size, 5, "upload counter")


def test_minibt_downloads_from_transmission_by_dialling_it(tmp_path: Path) -> None:
    t = lt_torrent(tmp_path, [])  # no tracker: minibt dials Transmission (PROTOCOL.md 7.1)
    seeder = TransmissionPeer(tmp_path / "tr", torrent_path=t.path, save_dir=seed_dir(tmp_path), seed=True)
    with running(seeder):
        leecher = minibt_download(tmp_path, t, peers=[(LOOPBACK, seeder.port)])
        with running(leecher):
            assert_downloaded(leecher, t, tmp_path)
        wait_until(lambda: seeder.status().get("uploadedEver", 0) >= t.total_size, 10,
                   "Transmission counts the upload", [seeder])


def test_minibt_downloads_from_aria2(tmp_path: Path) -> None:
    t = mb_torrent(tmp_path, [])
    seeder = Aria2Peer(tmp_path / "aria2", torrent_path=t.path, save_dir=seed_dir(tmp_path), seed=True)
    with running(seeder):
        leecher = minibt_download(tmp_path, t, peers=[(LOOPBACK, seeder.port)])
        with running(leecher):
            assert_downloaded(leecher, t, tmp_path)
        wait_until(lambda: int(seeder.status().get("uploadLength", 0)) >= t.total_size, 10,
                   "aria2 counts the upload", [seeder])


# --------------------------------------------------------------------------------------------- minibt seeds


def test_libtorrent_downloads_from_minibt_seed(tmp_path: Path) -> None:
    t = mb_torrent(tmp_path, [])
    seeder = minibt_seed(tmp_path, t)
    with running(seeder):
        leecher = LibtorrentPeer(tmp_path / "lt", torrent_path=t.path, save_dir=tmp_path / "leech", seed=False,
                                 peers=[(LOOPBACK, seeder.port)])
        with running(leecher):
            leecher.wait_complete(timeout_s=TRANSFER_DEADLINE_S)
            assert_loopback_only(seeder)
            assert_same_tree(seed_dir(tmp_path) / t.name, tmp_path / "leech" / t.name)
            st = leecher.status()
            assert st["total_payload_download"] >= t.total_size and st["total_failed_bytes"] == 0


def test_transmission_downloads_from_minibt_seed_that_dials_it(tmp_path: Path) -> None:
    t = lt_torrent(tmp_path, [])
    leecher = TransmissionPeer(tmp_path / "tr", torrent_path=t.path, save_dir=tmp_path / "leech", seed=False)
    with running(leecher):
        seeder = minibt_seed(tmp_path, t, peers=[(LOOPBACK, leecher.port)])
        with running(seeder):
            leecher.wait_complete(timeout_s=TRANSFER_DEADLINE_S)
            assert_same_tree(seed_dir(tmp_path) / t.name, tmp_path / "leech" / t.name)


def test_aria2_downloads_from_minibt_seed_via_static_tracker(tmp_path: Path) -> None:
    t = lt_torrent(tmp_path, [])
    seeder = minibt_seed(tmp_path, t)
    with running(seeder):
        leecher = Aria2Peer(tmp_path / "aria2", torrent_path=t.path, save_dir=tmp_path / "leech", seed=False,
                            peers=[(LOOPBACK, seeder.port)])
        with running(leecher):
            leecher.wait_complete(timeout_s=TRANSFER_DEADLINE_S)
            assert_same_tree(seed_dir(tmp_path) / t.name, tmp_path / "leech" / t.name)


# --------------------------------------------------------------------------------------------- swarm


def test_swarm_one_minibt_seed_two_minibt_and_two_libtorrent_leechers(tmp_path: Path,
                                                                       opentracker: Opentracker) -> None:
    t = mb_torrent(tmp_path, [opentracker.announce_url_http], SWARM_LAYOUT, piece_length=128 * KIB)
    opentracker.whitelist(t.info_hash)
    seeder = minibt_seed(tmp_path, t)
    with running(seeder):
        opentracker.wait_seeders(t.info_hash, 1)
        assert_loopback_only(seeder, opentracker)
        mb = [minibt_download(tmp_path, t, f"minibt-leech-{i}") for i in (1, 2)]
        lt_leechers = [LibtorrentPeer(tmp_path / f"lt-{i}", torrent_path=t.path, save_dir=tmp_path / f"lt-{i}" / "data",
                                      seed=False) for i in (1, 2)]
        with running(*mb, *lt_leechers):
            for lt_peer in lt_leechers:
                lt_peer.wait_complete(timeout_s=TRANSFER_DEADLINE_S)
                assert_same_tree(seed_dir(tmp_path) / t.name, lt_peer.save_dir / t.name)
            for proc in mb:
                assert_downloaded(proc, t, tmp_path)
        rc, _ = seeder.terminate(EXIT_DEADLINE_S)
        assert rc == 0, seeder.log_tail()
    have, uploaded, _ = resume_record(seeder.state_dir, t, seed_dir(tmp_path))
    assert have == t.num_pieces
    # Four leechers that also trade among themselves: the seed sends at least one copy, at most four.
    print(f"\nswarm: minibt seeder uploaded {uploaded} bytes = {uploaded / t.total_size:.2f} x the payload "
          f"({t.total_size} bytes) to 4 leechers")
    assert t.total_size <= uploaded <= 4 * t.total_size + 4 * MIB


# --------------------------------------------------------------------------------------------- stop / resume


def test_minibt_seed_sigterm_announces_stopped_and_restart_trusts_resume_data(
        tmp_path: Path, opentracker: Opentracker) -> None:
    t = lt_torrent(tmp_path, [opentracker.announce_url_http])
    opentracker.whitelist(t.info_hash)
    state = tmp_path / "state"
    first = minibt_seed(tmp_path, t, label="minibt-seed-1", state_dir=state)
    with running(first):
        assert "check done" in first.log_text()  # no resume data yet: the first start hashes the files
        opentracker.wait_seeders(t.info_hash, 1)
        assert_loopback_only(first)
        rc, took = first.terminate(EXIT_DEADLINE_S)
        assert rc == 0, first.log_tail()
        assert took < STOPPED_EXIT_S, f"exit took {took:.1f} s although the tracker answers at once"
        # The 'stopped' announce went out before the exit: opentracker already lists no seeder.
        assert opentracker.scrape(t.info_hash).get("complete", 0) == 0, (took, first.log_tail())
    assert resume_record(state, t, seed_dir(tmp_path))[0] == t.num_pieces

    # The same state dir: the second start trusts the resume data, seeds at once, and really serves.
    second = minibt_seed(tmp_path, t, label="minibt-seed-2", state_dir=state)
    with running(second):
        assert "check done" not in second.log_text()
        progress = second.progress_lines()
        assert progress and progress[0].state == "seeding", second.log_tail()
        leecher = LibtorrentPeer(tmp_path / "lt", torrent_path=t.path, save_dir=tmp_path / "leech", seed=False,
                                 peers=[(LOOPBACK, second.port)])
        with running(leecher):
            leecher.wait_complete(timeout_s=TRANSFER_DEADLINE_S)
            assert_same_tree(seed_dir(tmp_path) / t.name, tmp_path / "leech" / t.name)

    # In process, through the library API: the resume record is trusted, not one piece is hashed.
    with MinibtClient(bind=LOOPBACK, port=0, state_dir=str(state)) as client:
        torrent = client.add(str(t.path), str(seed_dir(tmp_path)), mode="seed")
        assert torrent.state is TorrentState.SEEDING
        assert torrent.complete and torrent.stats.checked == 0


def test_minibt_download_interrupted_then_resumed_fetches_only_the_rest(tmp_path: Path) -> None:
    layout = {"one.bin": 3 * MIB + 5555, "two/two.bin": 3 * MIB - 5555}  # 6 MiB
    t = lt_torrent(tmp_path, [], layout)
    rate = 1536 * KIB  # ~4 s for the whole payload
    # PROTOCOL.md 7.10: session limits skip loopback peers unless ignore_limits_on_local_network is off.
    seeder = LibtorrentPeer(tmp_path / "lt", torrent_path=t.path, save_dir=seed_dir(tmp_path), seed=True,
                            extra_settings={"upload_rate_limit": rate, "ignore_limits_on_local_network": False})
    state = tmp_path / "mb-state"
    data = tmp_path / "mb-data"
    with running(seeder):
        seeder.wait_complete(timeout_s=20)
        first = MinibtProc(tmp_path / "mb-1", command="download", torrent=t, data_dir=data, state_dir=state,
                           peers=[(LOOPBACK, seeder.port)], label="minibt-download-1")
        with running(first):
            seeder.wait_until(lambda: seeder.status()["total_payload_upload"] >= t.total_size // 2, 20,
                              "half the payload uploaded")
            rc, _ = first.terminate(EXIT_DEADLINE_S)
        assert rc != 0, "an interrupted download must exit non-zero"
        assert re.search(rf"interrupted by SIGTERM at \d+/{t.num_pieces} pieces; progress saved", first.log_text())
        have, _, downloaded = resume_record(state, t, data)
        assert 0 < have < t.num_pieces, f"resume data holds {have}/{t.num_pieces} pieces"
        first_upload = seeder.status()["total_payload_upload"]
        assert first_upload < t.total_size, "the rate limit did not hold: the first run got everything"

        second = MinibtProc(tmp_path / "mb-2", command="download", torrent=t, data_dir=data, state_dir=state,
                            peers=[(LOOPBACK, seeder.port)], label="minibt-download-2")
        with running(second):
            assert_downloaded(second, t, tmp_path)
        assert "check done" not in second.log_text()  # resumed from the record, no re-hash
        # Its first progress line (printed at the first tick, before any peer) starts where run 1 stopped.
        start = second.progress_lines()[0]
        assert start.state == "downloading"
        assert start.percent == pytest.approx(100 * downloaded / t.total_size, abs=0.1)
        # The seeder's counter covers both runs: the rerun fetched (about) only what was missing.
        seeder.wait_until(lambda: seeder.status()["total_payload_upload"] >= t.total_size, 5, "final counters")
        total_upload = seeder.status()["total_payload_upload"]
        missing = t.total_size - downloaded
        second_upload = total_upload - first_upload
        print(f"\nresume: first run {first_upload} B ({have}/{t.num_pieces} pieces kept), "
              f"second run {second_upload} B for {missing} B missing; payload {t.total_size} B")
        assert total_upload < 1.5 * t.total_size
        assert second_upload < missing + 2 * MIB  # only in-flight and not-yet-verified blocks are fetched twice
