"""A save at completion or at stop does not wait for the disk (issue 15): the resume file lists the pieces
written since the last flush apart, as ``pending``, with the id of the boot that wrote them.  The next
start trusts them only in the same boot and once their files flush without error; after a restart of the
machine (or a failed flush) it hashes exactly those pieces again, so data a power cut lost is never taken
for verified."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from minibt.bitfield import Bitfield
from minibt.checker import Checker
from minibt.client import Client
from minibt.durable import boot_id
from minibt.errors import StorageError
from minibt.metainfo import Metainfo
from minibt.resume import ResumeData, decode_resume, encode_resume
from minibt.settings import TorrentState
from minibt.storage import Storage, load_resume
from minibt.wire_codec import BLOCK_LEN
from tests.helpers import run_client_until
from tests.unit.test_checker import setup as checker_setup
from tests.unit.test_resume_save_off_loop import _fsyncs

PIECE = 16384


def _fill(storage: Storage, src: Path, pieces: range) -> Bitfield:
    """Receive and commit these pieces of ``src`` the way a download does; their bitfield."""
    data = src.read_bytes()
    have = Bitfield(-(-len(data) // PIECE))
    for p in pieces:
        for begin in range(0, PIECE, BLOCK_LEN):
            storage.write_block(p, begin, data[p * PIECE + begin : p * PIECE + begin + BLOCK_LEN])
        for fd, offset, chunk in storage.prepare_commit(p):
            os.pwrite(fd, chunk, offset)
        storage.finish_commit(p, written=True)
        have.set(p)
    return have


def _save(checker: Checker, have: Bitfield, *, sync: bool) -> None:
    job = checker.save_resume(10.0, have=have, uploaded=0, downloaded=0, wall_time=lambda: 1.0, sync=sync)
    assert job is None  # saved here and now


def _record(meta: Metainfo, path: Path, dl: Path) -> ResumeData:
    rd, warning = load_resume(str(path), meta, str(dl))
    assert rd is not None, warning
    return rd


def _bits(meta: Metainfo, raw: bytes) -> set[int]:
    return set(Bitfield.from_bytes(meta.num_pieces, raw).indexes()) if raw else set()


def test_a_save_without_flush_lists_what_the_last_flush_did_not_cover(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    meta, storage, checker, src = checker_setup(tmp_path, fsync=True)
    storage.open(create=True)
    resume = tmp_path / "t.resume"
    have = _fill(storage, src, range(0, 2))
    seen = _fsyncs(monkeypatch)
    _save(checker, have, sync=True)  # flushes pieces 0-1
    assert seen and not checker.resume_dirty
    have = have | _fill(storage, src, range(2, 4))
    seen.clear()
    _save(checker, have, sync=False)
    data_ino = os.stat(storage.file_path(0)).st_ino
    assert data_ino not in seen  # the data was not flushed
    rd = _record(meta, resume, tmp_path / "dl")
    assert _bits(meta, rd.have) == {0, 1} and _bits(meta, rd.pending) == {2, 3}
    assert rd.boot_id == boot_id() and rd.boot_id
    assert checker.resume_dirty  # saved again, flushed, when due
    _save(checker, have, sync=True)
    rd = _record(meta, resume, tmp_path / "dl")
    assert _bits(meta, rd.have) == {0, 1, 2, 3} and rd.pending == b"" and rd.boot_id is None
    assert not checker.resume_dirty


def test_a_background_flush_covers_only_what_was_written_before_it_began(tmp_path: Path) -> None:
    meta, storage, checker, src = checker_setup(tmp_path, fsync=True)
    storage.open(create=True)
    _fill(storage, src, range(0, 2))
    files = storage.begin_sync()
    _fill(storage, src, range(2, 3))
    assert set(storage.unsynced.indexes()) == {0, 1, 2}  # a flush that has not finished covers nothing yet
    storage.finish_sync(files, ok=False)
    assert set(storage.unsynced.indexes()) == {0, 1, 2}
    files = storage.begin_sync()
    storage.finish_sync(files, ok=True)
    assert storage.unsynced.none()
    for _, fd in files:
        os.close(fd)


def _restart(tmp_path: Path, meta: Metainfo) -> Checker:
    storage = Storage(meta, str(tmp_path / "dl"), cache_bytes=1 << 20, fsync=True)
    storage.open(create=False)
    return Checker(meta, storage, str(tmp_path / "dl"), resume_path=str(tmp_path / "t.resume"),
                   jobs_in_flight=8, resume_interval_s=60.0, now=0.0)


def _stopped_with_pending(tmp_path: Path) -> tuple[Metainfo, Path]:
    meta, storage, checker, src = checker_setup(tmp_path, fsync=True)
    storage.open(create=True)
    _save(checker, _fill(storage, src, range(meta.num_pieces)), sync=False)
    storage.close()
    return meta, src


def test_the_same_boot_trusts_pending_pieces_once_their_files_flush(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    meta, _ = _stopped_with_pending(tmp_path)
    seen = _fsyncs(monkeypatch)
    checker = _restart(tmp_path, meta)
    rd = checker.load_resume()
    assert rd is not None and _bits(meta, rd.have) == set(range(meta.num_pieces))
    assert checker.done  # nothing to hash
    assert os.stat(tmp_path / "dl" / "payload.bin").st_ino in seen  # flushed (and checked for errors) first


def test_a_failed_flush_at_start_checks_the_pending_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta, _ = _stopped_with_pending(tmp_path)
    _fsyncs(monkeypatch, fail=True)  # a write the kernel could not put on the disk
    checker = _restart(tmp_path, meta)
    rd = checker.load_resume()
    assert rd is not None and _bits(meta, rd.have) == set()
    assert [j.piece for j in checker.jobs(0)] == list(range(meta.num_pieces))


def test_another_boot_checks_exactly_the_pending_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    meta, storage, checker, src = checker_setup(tmp_path, fsync=True)
    storage.open(create=True)
    have = _fill(storage, src, range(0, 3))
    _save(checker, have, sync=True)
    have = have | _fill(storage, src, range(3, meta.num_pieces))
    _save(checker, have, sync=False)
    storage.close()
    monkeypatch.setattr("minibt.checker.boot_id", lambda: "another-boot")
    seen = _fsyncs(monkeypatch)
    again = _restart(tmp_path, meta)
    rd = again.load_resume()
    assert rd is not None and _bits(meta, rd.have) == {0, 1, 2}
    assert not again.done and seen == []
    assert [j.piece for j in again.jobs(0)] == list(range(3, meta.num_pieces))


def test_resume_codec_keeps_pending_and_rejects_a_bad_one() -> None:
    rd = ResumeData(b"\x01" * 20, 16384, 10, b"\xc0\x00", (1,), 0, 0, 1.0, pending=b"\x30\x00", boot_id="b00t")
    again = decode_resume(encode_resume(rd))
    assert again.pending == b"\x30\x00" and again.boot_id == "b00t"
    plain = ResumeData(b"\x01" * 20, 16384, 10, b"\xc0\x00", (1,), 0, 0, 1.0)
    assert b"pending" not in encode_resume(plain) and decode_resume(encode_resume(plain)).pending == b""
    for bad in (b"\x30", b"\x30\x01"):  # wrong length; a spare bit set
        raw = encode_resume(ResumeData(b"\x01" * 20, 16384, 10, b"\xc0\x00", (1,), 0, 0, 1.0, pending=bad))
        with pytest.raises(StorageError, match="pending"):
            decode_resume(raw)


def test_a_client_restart_after_another_boot_rehashes_and_rejects_lost_data(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end through Client and Torrent: a piece the 'power cut' lost is not taken for verified."""
    meta, src = _stopped_with_pending(tmp_path)
    state = tmp_path / "state"
    client = Client(bind="127.0.0.1", port=0, state_dir=str(state))
    path = client.resume_path(meta, str(tmp_path / "dl"))
    assert path is not None
    os.replace(tmp_path / "t.resume", path)
    with open(tmp_path / "dl" / "payload.bin", "r+b") as f:  # piece 1 did not reach the disk
        f.seek(PIECE)
        f.write(bytes(PIECE))
    monkeypatch.setattr("minibt.checker.boot_id", lambda: "another-boot")
    try:
        t = client.add(meta, str(tmp_path / "dl"))
        run_client_until(client, lambda: t.state is not TorrentState.CHECKING, "the check", time.monotonic() + 30)
        assert t.stats.checked == meta.num_pieces  # every piece was pending
        assert set(t.have.indexes()) == set(range(meta.num_pieces)) - {1}
        assert t.state is TorrentState.DOWNLOADING
    finally:
        client.close()
    rd = _record(meta, Path(path), tmp_path / "dl")
    assert 1 not in _bits(meta, rd.have) | _bits(meta, rd.pending)
