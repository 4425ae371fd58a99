"""File selection (TorrentConfig.wanted_files) in a simulated swarm: only wanted pieces are requested,
files no wanted piece touches are never created, and complete means every wanted piece verified."""

from __future__ import annotations

import random
from pathlib import Path

from helpers import FakeClock
from simnet import KiB, LinkSpec, MiB, SimNet, make_payload, make_torrent

from minibt.settings import TorrentConfig, TorrentState
from minibt.storage import load_resume, piece_spans, wanted_pieces
from minibt.wire_codec import BLOCK_LEN

PIECE_LEN = 32 * KiB
LAYOUT = {"a.bin": MiB + 5000, "empty.txt": 0, "sub/b.bin": MiB + 20000, "sub/c.bin": 700_000}
A, B, C = 0, 2, 3  # file indexes (create_torrent sorts paths: a.bin, empty.txt, sub/b.bin, sub/c.bin)


def test_wanted_pieces_mask_and_touched_files(tmp_path: Path) -> None:
    make_payload(tmp_path / "src" / "payload", LAYOUT, seed=3)
    meta = make_torrent(tmp_path / "src" / "payload", PIECE_LEN)
    assert [f.path for f in meta.files] == [("a.bin",), ("empty.txt",), ("sub", "b.bin"), ("sub", "c.bin")]
    mask, needed = wanted_pieces(meta, [C])
    c = meta.files[C]
    first, last = c.offset // PIECE_LEN, meta.num_pieces - 1
    assert [i for i, w in enumerate(mask) if w] == list(range(first, last + 1))
    assert {s.file_index for s in piece_spans(meta, first)} == {B, C}  # the boundary piece touches b.bin
    assert needed == {B, C}
    mask_a, needed_a = wanted_pieces(meta, [A])
    assert needed_a == {A, B} and not any(mask_a[first:])  # empty.txt (zero length) touches nothing


def test_selected_file_downloads_alone_and_completes(tmp_path: Path, clock: FakeClock, rng: random.Random) -> None:
    make_payload(tmp_path / "src" / "payload", LAYOUT, seed=3)
    meta = make_torrent(tmp_path / "src" / "payload", PIECE_LEN)
    net = SimNet(clock, rng)
    seed = net.add_peer("seed", "127.0.0.2", link=LinkSpec(up_Bps=8 * MiB))
    st = net.add_torrent(seed, meta, tmp_path / "src", mode="seed")
    assert net.run_until(lambda: st.state is TorrentState.SEEDING, 1.0)
    leech = net.add_peer("leech", "127.0.0.3", 6881)
    resume = tmp_path / "leech.resume"
    cfg = TorrentConfig(wanted_files=(C,))
    t = net.add_torrent(leech, meta, tmp_path / "leech", mode="download", resume_path=resume, config=cfg)
    assert not t.complete
    net.must_run_until(lambda: t.complete, 30)
    mask, _ = wanted_pieces(meta, [C])
    wanted = [i for i, w in enumerate(mask) if w]
    assert t.state is TorrentState.SEEDING and sorted(t.have.indexes()) == wanted and not t.have.all()
    assert t.bytes_left == 0 and t.status(net.now)["progress"] == 1.0
    assert t.stats.downloaded == sum(meta.piece_size(i) for i in wanted) == t.wanted_bytes
    blocks = sum(-(-meta.piece_size(i) // BLOCK_LEN) for i in wanted)
    ws = leech.wire_stats()
    assert ws["out_request"] == ws["in_piece"] == blocks  # nothing outside the wanted pieces was asked for
    src, dst = tmp_path / "src", tmp_path / "leech"
    assert Path(meta.file_path(str(dst), C)).read_bytes() == Path(meta.file_path(str(src), C)).read_bytes()
    assert not Path(meta.file_path(str(dst), A)).exists()  # wholly unselected: never created
    assert Path(meta.file_path(str(dst), B)).exists()  # holds the boundary piece's bytes (sparse otherwise)
    # The resume record matches the partial tree, so a restart trusts it instead of re-checking.
    net.stop(leech)
    rd, warning = load_resume(str(resume), meta, str(dst))
    assert warning is None and rd is not None and rd.file_sizes[A] == -1
    again = net.add_peer("again", "127.0.0.4", 6881)
    t2 = net.add_torrent(again, meta, dst, mode="download", resume_path=resume, config=cfg)
    assert t2.state is TorrentState.SEEDING and t2.complete and t2.stats.checked == 0
