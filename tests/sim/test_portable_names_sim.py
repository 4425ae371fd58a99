"""A torrent with an over-long file name and a BEP 47 symlink entry moves through a simulated swarm:
the name is shortened identically on both ends, the symlink's declared length is not data, and a
restart trusts the resume record (it finds the renamed file)."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import bencode2
from helpers import FakeClock
from simnet import SIM_TRACKER, KiB, SimNet

from minibt.filenames import FsRules, map_paths
from minibt.metainfo import parse_metainfo
from minibt.settings import TorrentState

PIECE_LEN = 16 * KiB
LONG = "y" * 300 + ".bin"


def test_long_name_and_symlink_download_and_resume(tmp_path: Path, clock: FakeClock, rng: random.Random) -> None:
    sizes = [40_000, 30_000]
    payload = random.Random(9).randbytes(sum(sizes))
    pieces = b"".join(hashlib.sha1(payload[i : i + PIECE_LEN]).digest() for i in range(0, len(payload), PIECE_LEN))
    files = [
        {b"length": sizes[0], b"path": [LONG.encode()]},
        {b"attr": b"l", b"length": 5000, b"path": [b"link"], b"symlink path": [LONG.encode()]},
        {b"length": sizes[1], b"path": [b"b.bin"]},
    ]
    info = {b"name": b"t", b"piece length": PIECE_LEN, b"pieces": pieces, b"files": files}
    meta = parse_metainfo(bencode2.bencode({b"announce": SIM_TRACKER.encode(), b"info": info}))
    disk = map_paths(meta.torrent_paths(), FsRules.POSIX)
    assert disk == (("t", "y" * 251 + ".bin"), None, ("t", "b.bin"))
    src = tmp_path / "src"
    (src / "t").mkdir(parents=True)
    first = disk[0]
    assert first is not None
    src.joinpath(*first).write_bytes(payload[: sizes[0]])
    (src / "t" / "b.bin").write_bytes(payload[sizes[0] :])

    net = SimNet(clock, rng)
    seed = net.add_peer("seed", "127.0.0.2")
    st = net.add_torrent(seed, meta, src, mode="seed")
    net.must_run_until(lambda: st.state is TorrentState.SEEDING, 5.0)
    assert st.have.all()  # the check found the shortened file: every piece verified
    leech = net.add_peer("leech", "127.0.0.3", 6881)
    resume = tmp_path / "leech.resume"
    dst = tmp_path / "leech"
    t = net.add_torrent(leech, meta, dst, mode="download", resume_path=resume)
    net.must_run_until(lambda: t.complete, 30)
    assert (dst / "t" / ("y" * 251 + ".bin")).read_bytes() == payload[: sizes[0]]
    assert (dst / "t" / "b.bin").read_bytes() == payload[sizes[0] :]
    assert sorted(p.name for p in (dst / "t").iterdir()) == ["b.bin", "y" * 251 + ".bin"]  # no link made
    net.stop(leech)
    again = net.add_peer("again", "127.0.0.4", 6881)
    t2 = net.add_torrent(again, meta, dst, mode="download", resume_path=resume)
    assert t2.state is TorrentState.SEEDING and t2.complete and t2.stats.checked == 0
