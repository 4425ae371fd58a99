"""Resume saves run off the event loop (issue 15): the fsync of the data written and the resume file
are a worker's job (checker.py ``save_resume(background=True)``, effects.SaveResume), so a slow disk
(a Pi's SD card flushing what 30 s of downloading left dirty) never stalls the peers.  The record is
taken when the save starts; one save at a time; a failed one leaves its files to the next; a stop
waits for the save in flight before the final one."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from minibt.bitfield import Bitfield
from minibt.checker import Checker
from minibt.client import Client
from minibt.errors import StorageError
from minibt.metainfo import Metainfo, create_torrent, parse_metainfo
from minibt.settings import TorrentConfig, TorrentState
from minibt.storage import Storage, load_resume
from minibt.wire_codec import BLOCK_LEN
from tests.helpers import run_client_until, seeding_in_thread
from tests.unit.test_checker import setup as checker_setup

PIECE = 16384


def _setup(tmp_path: Path) -> tuple[Metainfo, Storage, Checker, Path]:
    """test_checker's torrent (6 pieces of 16 KiB), with fsync on and the files created."""
    meta, storage, checker, _ = checker_setup(tmp_path, fsync=True)
    storage.open(create=True)
    return meta, storage, checker, tmp_path / "t.resume"


def _write_piece(storage: Storage, piece: int) -> None:
    """Receive and commit one piece the way a download does (the writes a worker would do, here)."""
    for begin in range(0, PIECE, BLOCK_LEN):
        storage.write_block(piece, begin, bytes(BLOCK_LEN))
    for fd, offset, data in storage.prepare_commit(piece):
        os.pwrite(fd, data, offset)
    storage.finish_commit(piece, written=True)


def _fsyncs(monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> list[int]:
    """Record the inode of every fsync'd fd (and fail them when ``fail``)."""
    seen: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append(os.fstat(fd).st_ino)
        if fail:
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_background_save_takes_the_record_now_and_syncs_in_the_job(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    meta, storage, checker, resume = _setup(tmp_path)
    n = meta.num_pieces
    data_ino = os.stat(storage.file_path(0)).st_ino
    _write_piece(storage, 2)
    have = Bitfield(n)
    have.set(2)
    seen = _fsyncs(monkeypatch)
    job = checker.save_resume(5.0, have=have, uploaded=1, downloaded=2, wall_time=lambda: 9.0, background=True)
    assert job is not None and checker.save_in_flight
    assert not resume.exists() and seen == []  # nothing touched the disk on the loop's thread
    have.set(3)  # a piece verified after the save started is not in this record
    assert checker.save_resume(6.0, have=have, uploaded=1, downloaded=2, wall_time=lambda: 9.0,
                               background=True) is None  # one save at a time
    job()  # in a worker
    assert seen[0] == data_ino  # the data first, then the record that says it is there
    checker.save_done(None)
    assert not checker.save_in_flight and storage.stats()["fsyncs"] == 1
    rd, warning = load_resume(str(resume), meta, str(tmp_path / "dl"))
    assert warning is None and rd is not None
    assert Bitfield.from_bytes(n, rd.have).test(2) and not Bitfield.from_bytes(n, rd.have).test(3)


def test_a_failed_background_save_leaves_its_files_to_the_next(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    meta, storage, checker, resume = _setup(tmp_path)
    n = meta.num_pieces
    _write_piece(storage, 0)
    _fsyncs(monkeypatch, fail=True)
    job = checker.save_resume(5.0, have=Bitfield(n), uploaded=0, downloaded=0, wall_time=lambda: 1.0,
                              background=True)
    assert job is not None
    with pytest.raises(StorageError) as err:
        job()
    checker.save_done(err.value)
    assert not resume.exists()  # no record of data that may not be on disk
    assert checker.resume_dirty and storage.stats()["dirty_files"] == 1  # synced again by the next save
    monkeypatch.undo()
    seen = _fsyncs(monkeypatch)
    job = checker.save_resume(70.0, have=Bitfield(n), uploaded=0, downloaded=0, wall_time=lambda: 1.0,
                              background=True)
    assert job is not None
    job()
    checker.save_done(None)
    assert seen and resume.exists()


def test_the_download_goes_on_while_a_save_waits_for_the_disk(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Two in-process clients on 127.0.0.1; every fsync of the leecher's data blocks until released.
    The download completes meanwhile (the loop never waited); after the release, close() waits for
    the save in flight and writes the final record: every piece."""
    src = tmp_path / "seed" / "payload.bin"
    src.parent.mkdir()
    src.write_bytes(random.Random(8).randbytes(64 * PIECE + 1000))
    meta = parse_metainfo(create_torrent(str(src), piece_length=PIECE))
    dl = tmp_path / "leech"
    release, entered = threading.Event(), threading.Event()
    real = os.fsync

    def slow_fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(dl)):
            entered.set()
            release.wait(60)
        real(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    seeder = Client(bind="127.0.0.1", port=0, state_dir=str(tmp_path / "seed-state"))
    leecher = Client(bind="127.0.0.1", port=0, state_dir=str(tmp_path / "leech-state"))
    with seeding_in_thread(seeder, meta, str(src.parent)):
        try:
            t = leecher.add(meta, str(dl), peers=[("127.0.0.1", seeder.port)],
                            config=TorrentConfig(resume_interval_s=0.0))  # a save at every tick
            run_client_until(leecher, lambda: entered.is_set(), "a save reaching the disk", time.monotonic() + 30)
            run_client_until(leecher, lambda: t.state is TorrentState.SEEDING, "the download", time.monotonic() + 30)
            assert not release.is_set() and t.checker.save_in_flight  # done while the fsync still waits
        finally:
            release.set()
            leecher.close()
    rd, warning = load_resume(str(leecher.resume_path(meta, str(dl))), meta, str(dl))
    assert warning is None and rd is not None
    # Flushed pieces in ``have``; the ones written after the blocked save began are pending (not flushed at stop).
    n = meta.num_pieces
    assert (Bitfield.from_bytes(n, rd.have) | Bitfield.from_bytes(n, rd.pending or bytes(len(rd.have)))).all()
    assert src.read_bytes() == Path(meta.file_path(str(dl), 0)).read_bytes()
