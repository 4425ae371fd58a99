"""Disk names in storage: Windows-rule names on disk, recorded in resume data, found again later;
what must be refused before the first file is created (no half-made tree)."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any

import bencode2
import pytest

from minibt.bitfield import Bitfield
from minibt.checker import Checker
from minibt.errors import StorageError
from minibt.filenames import DiskNames, FsRules
from minibt.metainfo import Metainfo, parse_metainfo
from minibt.resume import ResumeData, decode_resume, encode_resume
from minibt.storage import (
    MAX_BUFFERED_PIECE_BYTES,
    Storage,
    detect_rules,
    load_resume,
    plan_names,
    save_resume,
)

PL = 16384
W, P = FsRules.WINDOWS, FsRules.POSIX


def make_meta(files: list[tuple[list[str], int]], *, symlinks: dict[int, list[str]] | None = None,
              seed: int = 1) -> tuple[Metainfo, bytes]:
    """A multi-file torrent over random content with real piece hashes; returns (meta, payload)."""
    symlinks = symlinks or {}
    entries: list[dict[bytes, Any]] = []
    total = 0
    for i, (path, n) in enumerate(files):
        e: dict[bytes, Any] = {b"length": n, b"path": [p.encode() for p in path]}
        if i in symlinks:
            e[b"attr"] = b"l"
            e[b"symlink path"] = [p.encode() for p in symlinks[i]]
        else:
            total += n
        entries.append(e)
    payload = random.Random(seed).randbytes(total)
    pieces = b"".join(hashlib.sha1(payload[i : i + PL]).digest() for i in range(0, total, PL))
    info = {b"name": b"t", b"piece length": PL, b"pieces": pieces, b"files": entries}
    return parse_metainfo(bencode2.bencode({b"info": info})), payload


def write_all(storage: Storage, meta: Metainfo, payload: bytes) -> None:
    for p in range(meta.num_pieces):
        chunk = payload[p * PL : p * PL + meta.piece_size(p)]
        assert storage.write_block(p, 0, chunk)
        assert hashlib.sha1(storage.piece_buffer(p)).digest() == meta.piece_hash(p)
        storage.commit_piece(p)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


HOSTILE_NAMES = [(["CON"], 100), (["ab:c?.txt"], 5000), (["README"], 7), (["readme"], 9), (["dir.", "x"], 20000)]


def test_windows_rules_create_safe_unique_names_and_round_trip_data(tmp_path: Path) -> None:
    meta, payload = make_meta(HOSTILE_NAMES)
    names = DiskNames.plan(meta.torrent_paths(), W)
    storage = Storage(meta, str(tmp_path), cache_bytes=1 << 20, fsync=False, names=names)
    storage.open(create=True)
    write_all(storage, meta, payload)
    storage.close()
    assert tree(tmp_path) == {"t", "t/CON_", "t/ab_c_.txt", "t/README", "t/readme~3", "t/dir", "t/dir/x"}
    off = 0
    for i, f in enumerate(meta.files):
        assert Path(storage.file_path(i)).read_bytes() == payload[off : off + f.length]
        off += f.length


def test_resume_records_renamed_files_and_a_later_run_uses_them(tmp_path: Path) -> None:
    meta, payload = make_meta(HOSTILE_NAMES)
    dl, resume = tmp_path / "dl", str(tmp_path / "t.resume")
    dl.mkdir()
    storage = Storage(meta, str(dl), fsync=False, names=DiskNames.plan(meta.torrent_paths(), W))
    checker = Checker(meta, storage, str(dl), resume_path=resume, jobs_in_flight=1, resume_interval_s=60.0, now=0.0)
    storage.open(create=True)
    write_all(storage, meta, payload)
    have = Bitfield(meta.num_pieces)
    for p in range(meta.num_pieces):
        have.set(p)
    checker.save_resume(1.0, have=have, uploaded=0, downloaded=len(payload), wall_time=lambda: 5.0)
    storage.close()
    rd = decode_resume(Path(resume).read_bytes())
    assert rd.rules is W and dict(rd.renamed) == {0: ("t", "CON_"), 1: ("t", "ab_c_.txt"), 3: ("t", "readme~3"),
                                                  4: ("t", "dir", "x")}
    # This directory is on ext4/tmpfs (POSIX rules), but the recorded names win: the files are found.
    assert detect_rules(str(dl)) is P
    again = plan_names(meta, str(dl), resume)
    assert again.rules is W and again.paths == storage.names.paths
    seed = Storage(meta, str(dl), fsync=False, names=again)
    seed.open(create=False)  # seed mode: every file must exist with its size
    assert seed.read_block(0, 0, 100) == payload[:100]
    seed.close()
    got, warning = load_resume(resume, meta, str(dl))
    assert warning is None and got is not None and got.have == have.to_bytes()


def test_resume_with_names_that_differ_from_the_ones_in_use_is_not_trusted(tmp_path: Path) -> None:
    meta, _ = make_meta(HOSTILE_NAMES)
    storage = Storage(meta, str(tmp_path), fsync=False, names=DiskNames.plan(meta.torrent_paths(), W))
    storage.open(create=True)
    storage.close()
    rd = ResumeData(meta.info_hash, PL, meta.num_pieces, bytes((meta.num_pieces + 7) // 8),
                    tuple(f.length for f in meta.files), 0, 0, 1.0, P, ())  # recorded: plain names
    path = str(tmp_path / "r")
    save_resume(path, rd)
    _, warning = load_resume(path, meta, str(tmp_path), storage.names)
    assert warning is not None and "recorded file names differ" in warning


def test_bad_recorded_names_fall_back_to_the_rules(tmp_path: Path) -> None:
    meta, _ = make_meta(HOSTILE_NAMES)
    rd = ResumeData(meta.info_hash, PL, meta.num_pieces, bytes(1), (0,) * 5, 0, 0, 1.0, W, ((0, ("t", "..")),))
    path = tmp_path / "r"
    path.write_bytes(encode_resume(rd))
    assert plan_names(meta, str(tmp_path), str(path)) == DiskNames.plan(meta.torrent_paths(), detect_rules(str(tmp_path)))
    path.write_bytes(b"garbage")
    assert plan_names(meta, str(tmp_path), str(path)).rules is detect_rules(str(tmp_path))
    assert plan_names(meta, str(tmp_path), str(tmp_path / "missing")).rules is detect_rules(str(tmp_path))


@pytest.mark.parametrize(
    "names",
    [
        {b"rules": b"dos", b"renamed": []},
        {b"rules": b"windows", b"renamed": [[0, b"x"]]},
        {b"rules": b"windows", b"renamed": [[0, [b"\xff"]]]},
        {b"rules": b"windows"},
        [b"windows"],
    ],
)
def test_corrupt_names_record_is_a_decode_error(names: Any) -> None:
    rd = ResumeData(b"\x11" * 20, PL, 1, b"\x80", (5,), 0, 0, 1.0)
    d = bencode2.bdecode(encode_resume(rd))
    d[b"names"] = names
    with pytest.raises(StorageError, match="bad names"):
        decode_resume(bencode2.bencode(d))


def test_resume_without_names_still_decodes() -> None:
    rd = ResumeData(b"\x11" * 20, PL, 1, b"\x80", (5,), 0, 0, 1.0)
    assert decode_resume(encode_resume(rd)) == rd and b"names" not in encode_resume(rd)


def test_detect_rules_reads_mountinfo(tmp_path: Path) -> None:
    mi = tmp_path / "mountinfo"
    mi.write_text(f"1 0 8:1 / / rw - ext4 /dev/root rw\n2 1 8:2 / {tmp_path} rw - exfat /dev/sda1 rw\n")
    assert detect_rules(str(tmp_path / "dl"), str(mi)) is W
    assert detect_rules("/elsewhere", str(mi)) is P
    assert detect_rules(str(tmp_path), str(tmp_path / "no-such-file")) is P


def test_symlink_entries_are_never_created_and_shift_nothing(tmp_path: Path) -> None:
    meta, payload = make_meta([(["a"], PL + 10), (["l"], 1000), (["b"], 50)], symlinks={1: ["a"]})
    assert meta.total_length == PL + 60 and meta.files[2].offset == PL + 10
    storage = Storage(meta, str(tmp_path), fsync=False)
    storage.open(create=True)
    write_all(storage, meta, payload)  # every piece verifies: the symlink's 1000 bytes are not data
    storage.close()
    assert tree(tmp_path) == {"t", "t/a", "t/b"}
    assert Path(storage.file_path(2)).read_bytes() == payload[PL + 10 :]
    assert storage.disk_file_sizes() == (PL + 10, 0, 50)


def test_piece_too_big_to_buffer_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    pl = 2 * MAX_BUFFERED_PIECE_BYTES
    info = {b"name": b"big", b"piece length": pl, b"pieces": b"\x01" * 20, b"length": 10}
    meta = parse_metainfo(bencode2.bencode({b"info": info}))
    storage = Storage(meta, str(tmp_path), fsync=False)
    with pytest.raises(StorageError, match="holds a whole piece in memory"):
        storage.open(create=True)
    assert tree(tmp_path) == set()
    (tmp_path / "big").write_bytes(b"x" * 10)
    storage.open(create=False)  # seeding reads blocks, never whole pieces: allowed
    assert storage.read_block(0, 0, 10) == b"x" * 10
    storage.close()


def test_path_over_path_max_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    deep = ["d" * 250] * 15 + ["f"]  # 3781 bytes in the torrent: fine there, too long under tmp_path
    meta, _ = make_meta([(["first"], 10), (deep, 10)])
    base = tmp_path / ("p" * 250) / ("q" * 100)
    base.mkdir(parents=True)
    assert len(os.fsencode(base)) + 3781 > 4096
    storage = Storage(meta, str(base), fsync=False)
    with pytest.raises(StorageError, match="longer than 4096"):
        storage.open(create=True)
    assert tree(base) == set()  # "first" was not created either
