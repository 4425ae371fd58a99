from __future__ import annotations

import random
import shutil
from pathlib import Path

from minibt.bitfield import Bitfield
from minibt.checker import Checker, CheckJobTag
from minibt.metainfo import Metainfo, create_torrent, parse_metainfo
from minibt.storage import Storage

PIECE = 16384
SIZE = 5 * PIECE + 100  # 6 pieces, a short last one


def setup(tmp_path: Path, *, resume: bool = True, jobs: int = 2, fsync: bool = False) -> tuple[Metainfo, Storage, Checker, Path]:
    src = tmp_path / "src" / "payload.bin"
    src.parent.mkdir()
    src.write_bytes(random.Random(5).randbytes(SIZE))
    meta = parse_metainfo(create_torrent(str(src), piece_length=PIECE))
    dl = tmp_path / "dl"
    dl.mkdir()
    storage = Storage(meta, str(dl), cache_bytes=1 << 20, fsync=fsync)
    checker = Checker(
        meta, storage, str(dl), resume_path=str(tmp_path / "t.resume") if resume else None,
        jobs_in_flight=jobs, resume_interval_s=60.0, now=100.0,
    )  # fmt: skip
    return meta, storage, checker, src


def test_check_jobs_stay_within_the_in_flight_limit(tmp_path: Path) -> None:
    meta, _, checker, _ = setup(tmp_path, jobs=2)
    assert checker.done and checker.jobs(0) == []
    checker.check_all()
    seen: list[int] = []
    first = checker.jobs(7)
    assert [j.piece for j in first] == [0, 1] and checker.jobs(7) == []
    seen += [j.piece for j in first]
    for j in first:
        assert j.generation == 7 and j.data is None and j.spans and isinstance(j.tag, CheckJobTag) and j.tag.info_hash == meta.info_hash
        assert j.expected == meta.piece_hash(j.piece)
    while not checker.done:
        checker.job_done()
        more = checker.jobs(7)
        assert len(more) <= 1  # one result in, at most one new job out
        seen += [j.piece for j in more]
    assert seen == list(range(meta.num_pieces))


def test_data_exists_once_a_data_file_is_there(tmp_path: Path) -> None:
    meta, _, checker, src = setup(tmp_path)
    assert not checker.data_exists()
    shutil.copy(src, meta.file_path(str(tmp_path / "dl"), 0))
    assert checker.data_exists()


def test_resume_round_trip_and_schedule(tmp_path: Path) -> None:
    meta, storage, checker, _ = setup(tmp_path)
    storage.open(create=True)
    assert checker.load_resume() is None  # no file yet
    have = Bitfield(meta.num_pieces)
    have.set(1)
    have.set(meta.num_pieces - 1)
    checker.resume_dirty = True
    assert not checker.save_due(159.0) and checker.save_due(160.0)
    checker.save_resume(160.0, have=have, uploaded=7, downloaded=123, wall_time=lambda: 1_700_000_000.5)
    assert not checker.resume_dirty and not checker.save_due(10_000.0)
    checker.resume_dirty = True
    assert not checker.save_due(219.0) and checker.save_due(220.0)
    rd = checker.load_resume()
    assert rd is not None
    assert (rd.have, rd.uploaded, rd.downloaded, rd.saved_at) == (have.to_bytes(), 7, 123, 1_700_000_000.5)
    storage.close()


def test_without_a_resume_path_nothing_is_saved_or_loaded(tmp_path: Path) -> None:
    meta, storage, checker, _ = setup(tmp_path, resume=False)
    storage.open(create=True)
    checker.resume_dirty = True
    checker.save_resume(500.0, have=Bitfield(meta.num_pieces), uploaded=0, downloaded=0, wall_time=lambda: 0.0)
    assert checker.load_resume() is None and checker.resume_dirty
    assert not (tmp_path / "t.resume").exists()
    storage.close()
