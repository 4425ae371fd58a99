"""A big torrent's info dict (its piece hashes) leaves the heap for an unnamed file (issue 15, infobytes.py):
reads give the same bytes, nothing is left on disk, a file system without O_TMPFILE keeps them in memory,
and a torrent whose hashes are spilled downloads, verifies and serves its metadata (BEP 9) as before."""

from __future__ import annotations

import hashlib
import os
import time
import tracemalloc
from pathlib import Path

import pytest

from minibt import infobytes
from minibt.client import Client
from minibt.errors import StorageError
from minibt.infobytes import SPILL_MIN_BYTES, InfoBytes
from minibt.magnet import make_magnet
from minibt.metainfo import create_torrent, parse_metainfo
from minibt.settings import TorrentState
from tests.helpers import run_client_until, seeding_in_thread

needs_tmpfile = pytest.mark.skipif(not hasattr(os, "O_TMPFILE"), reason="O_TMPFILE is Linux's")


def _blob(n: int) -> bytes:
    return hashlib.shake_128(b"infobytes").digest(n)


def _fds_to(directory: Path) -> list[str]:
    """What this process's open descriptors point at under ``directory`` (an unnamed file shows as
    ``<dir>/#<inode> (deleted)``)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)):
            out.append(target)
    return out


def test_small_info_stays_in_memory(tmp_path: Path) -> None:
    data = _blob(SPILL_MIN_BYTES - 1)
    ib = InfoBytes(data)
    assert not ib.spill(str(tmp_path)) and not ib.spilled
    assert bytes(ib) is data and ib[5:25] == data[5:25] and os.listdir(tmp_path) == []


@needs_tmpfile
def test_big_info_spills_to_an_unnamed_file_and_reads_the_same(tmp_path: Path) -> None:
    data = _blob(SPILL_MIN_BYTES + 12345)
    ib = InfoBytes(data)
    assert ib.spill(str(tmp_path)) and ib.spilled and ib.spill(str(tmp_path))  # once; again is a no-op
    assert os.listdir(tmp_path) == []  # no name: nothing to clean up after a crash, nothing to tamper with
    held = _fds_to(tmp_path)
    assert len(held) == 1 and held[0].endswith("(deleted)")
    assert len(ib) == len(data) and bytes(ib) == data
    for a, b in ((0, 20), (SPILL_MIN_BYTES, SPILL_MIN_BYTES + 16384), (len(data) - 7, len(data) + 100), (-20, None)):
        assert ib[a:b] == data[a:b]
    assert ib.read(len(data) - 3, 20) == data[-3:] and ib.read(len(data) + 5, 20) == b""
    with pytest.raises(ValueError):
        ib[0:100:2]
    ib = None  # type: ignore[assignment]
    assert _fds_to(tmp_path) == []  # the descriptor goes with the object


@needs_tmpfile
def test_a_read_error_of_the_spilled_file_is_a_storage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ib = InfoBytes(_blob(SPILL_MIN_BYTES))
    assert ib.spill(str(tmp_path))

    def pread(fd: int, n: int, off: int) -> bytes:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "pread", pread)
    with pytest.raises(StorageError, match="Input/output error"):
        ib.read(0, 20)


def test_no_unnamed_file_there_keeps_the_bytes_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _blob(SPILL_MIN_BYTES)
    ib = InfoBytes(data)
    assert not ib.spill(str(tmp_path / "missing")) and not ib.spilled
    real_open = os.open

    def refuse(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & getattr(os, "O_TMPFILE", 0):
            raise OSError(95, "Operation not supported")  # vfat, exFAT
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", refuse)
    assert not ib.spill(str(tmp_path)) and bytes(ib) is data
    monkeypatch.setattr(infobytes, "_O_TMPFILE", 0)  # a platform without it
    assert not ib.spill(str(tmp_path)) and ib[0:20] == data[:20]


@needs_tmpfile
def test_a_failed_write_keeps_the_bytes_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _blob(SPILL_MIN_BYTES)
    ib = InfoBytes(data)

    def full(fd: int, b: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    assert not ib.spill(str(tmp_path)) and not ib.spilled and bytes(ib) is data
    assert _fds_to(tmp_path) == []


@needs_tmpfile
def test_spilled_torrent_downloads_verifies_and_serves_its_metadata(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Every info dict spills here (the bar lowered to one byte): a magnet leecher fetches the seeder's
    spilled metadata (several BEP 9 pieces), spills its own copy and verifies every piece from it."""
    monkeypatch.setattr(infobytes, "SPILL_MIN_BYTES", 1)
    src = tmp_path / "src" / "payload.bin"
    src.parent.mkdir()
    payload = _blob(1000 * 16384 - 5000)
    src.write_bytes(payload)
    meta = parse_metainfo(create_torrent(str(src), piece_length=16384))
    assert len(meta.info) > 16384  # more than one ut_metadata piece
    info_bytes = meta.info_bytes
    dl = tmp_path / "dl"
    seeder = Client(bind="127.0.0.1", port=0, state_dir=str(tmp_path / "seed-state"))
    leecher = Client(bind="127.0.0.1", port=0, state_dir=str(tmp_path / "leech-state"))
    with seeding_in_thread(seeder, meta, str(src.parent)) as st:
        assert meta.info.spilled  # and no file for it: the state directory holds the resume record alone
        assert [n for n in os.listdir(tmp_path / "seed-state") if not n.endswith(".resume")] == []
        tracemalloc.start()
        try:
            f = leecher.add_magnet(make_magnet(meta.info_hash), str(dl), peers=[("127.0.0.1", seeder.port)])
            run_client_until(leecher, lambda: f.torrent is not None and f.torrent.state is TorrentState.SEEDING,
                             "the magnet download", time.monotonic() + 60)
            # No copy of the fetched info dict stays on the heap: the fetcher shares the torrent's spilled one.
            held = [t for t in tracemalloc.take_snapshot().traces if len(info_bytes) <= t.size <= len(info_bytes) + 64]
        finally:
            tracemalloc.stop()
            leecher.close()
        assert held == []
        assert f.torrent is not None
        got = f.torrent.meta
        assert got.info.spilled and got.info_bytes == info_bytes and f.fetcher.info_bytes == info_bytes
        assert st.extensions.metadata.stats()["served"] >= 2
    assert (dl / "payload.bin").read_bytes() == payload


@needs_tmpfile
def test_adding_a_torrent_hands_its_set_up_memory_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Client.add releases the C heap's free pages (procmem.release_free_memory) once the torrent is set up:
    after its info dict has left the heap, so the freed copy is among what goes back."""
    from minibt import client as client_mod

    monkeypatch.setattr(infobytes, "SPILL_MIN_BYTES", 1)
    src = tmp_path / "src" / "payload.bin"
    src.parent.mkdir()
    src.write_bytes(_blob(40 * 16384))
    meta = parse_metainfo(create_torrent(str(src), piece_length=16384))
    spilled_at_release: list[bool] = []
    monkeypatch.setattr(client_mod, "release_free_memory", lambda: spilled_at_release.append(meta.info.spilled))
    with Client(bind="127.0.0.1", port=0, state_dir=str(tmp_path / "state")) as c:
        assert spilled_at_release == []
        c.add(meta, str(tmp_path / "dl"))
        assert spilled_at_release == [True]
