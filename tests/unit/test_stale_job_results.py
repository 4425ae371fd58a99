"""A worker result of a torrent removed while its job ran is not taken by a torrent of the same info-hash
added after it (a SIGHUP reload that changes a torrent's dir removes and re-adds it at once)."""

from __future__ import annotations

import random
from pathlib import Path

from minibt.effects import HashPiece
from minibt.metainfo import create_torrent, parse_metainfo
from minibt.session import Session
from minibt.settings import Mode, TorrentState
from minibt.workers import InlineHasher, _execute

PIECE = 16384


def setup(tmp_path: Path) -> tuple[Session, object, list[HashPiece]]:
    (tmp_path / "f.bin").write_bytes(random.Random(7).randbytes(PIECE * 40))
    meta = parse_metainfo(create_torrent(str(tmp_path / "f.bin"), piece_length=PIECE))
    s = Session(rng=random.Random(1))
    s.add_torrent(meta, str(tmp_path), mode=Mode.SEED, resume_path=None, now=1.0)
    old = [a for a in s.take_actions() if isinstance(a, HashPiece)]
    assert old and s.remove_torrent(meta.info_hash, now=1.0)  # removed while its check jobs run
    return s, meta, old


def test_check_results_of_a_removed_torrent_mark_nothing_in_its_successor(tmp_path: Path) -> None:
    s, meta, old = setup(tmp_path)
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    t = s.add_torrent(meta, str(empty), mode=Mode.DOWNLOAD, resume_path=None, now=2.0)  # type: ignore[arg-type]
    for a in old:  # the old jobs read the old dir, where every piece is good
        s.on_hash_result(_execute(a.job, bytearray()), now=2.0)
    s.take_actions()
    assert t.have.count() == 0 and t.state is TorrentState.DOWNLOADING  # the new dir holds nothing


def test_a_successor_in_the_same_dir_finishes_its_own_check(tmp_path: Path) -> None:
    s, meta, old = setup(tmp_path)
    t = s.add_torrent(meta, str(tmp_path), mode=Mode.SEED, resume_path=None, now=2.0)  # type: ignore[arg-type]
    mine = [a for a in s.take_actions() if isinstance(a, HashPiece)]
    hasher = InlineHasher()
    for a in old:  # stale: counted by nobody
        s.on_hash_result(_execute(a.job, bytearray()), now=2.0)
    todo = mine
    while todo:
        for a in todo:
            hasher.submit(a.job)
            for res in hasher.results():
                s.on_hash_result(res, now=2.0)
        todo = [a for a in s.take_actions() if isinstance(a, HashPiece)]
    assert t.state is TorrentState.SEEDING and t.have.count() == meta.num_pieces  # type: ignore[attr-defined]
