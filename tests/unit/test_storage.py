from __future__ import annotations

import dataclasses
import errno
import os
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minibt.errors import StorageError
from minibt.resume import ResumeData, decode_resume, encode_resume
from minibt.storage import PAD_PATH, Span, Storage, disk_file_sizes, load_resume, piece_spans, save_resume
from minibt.wire_codec import BLOCK_LEN

KIB = 1024


@dataclass(frozen=True)
class FakeFile:
    path: tuple[str, ...]
    length: int
    offset: int
    pad: bool = False


class FakeLayout:
    """Just the Metainfo attributes storage uses."""

    def __init__(
        self,
        lengths: list[int],
        piece_length: int,
        pads: frozenset[int] = frozenset(),
        info_hash: bytes = b"\x11" * 20,
    ) -> None:
        files = []
        off = 0
        for i, n in enumerate(lengths):
            files.append(FakeFile(("dir", f"f{i}"), n, off, i in pads))
            off += n
        self.files = tuple(files)
        self.total_length = off
        self.piece_length = piece_length
        self.num_pieces = (off + piece_length - 1) // piece_length
        self.info_hash = info_hash

    def piece_size(self, i: int) -> int:
        if not 0 <= i < self.num_pieces:
            raise IndexError(i)
        if i == self.num_pieces - 1:
            return self.total_length - self.piece_length * i
        return self.piece_length

    def torrent_paths(self) -> tuple[tuple[str, ...] | None, ...]:
        return tuple(None if f.pad else ("t", *f.path) for f in self.files)

    def file_path(self, download_dir: str, i: int) -> str:
        return os.path.join(download_dir, "t", *self.files[i].path)


def payload_for(layout: FakeLayout, rng: random.Random) -> bytes:
    """Random torrent content with BEP 47 pad regions zeroed."""
    data = bytearray(rng.randbytes(layout.total_length))
    for f in layout.files:
        if f.pad:
            data[f.offset : f.offset + f.length] = bytes(f.length)
    return bytes(data)


def piece_of(layout: FakeLayout, payload: bytes, i: int) -> bytes:
    start = i * layout.piece_length
    return payload[start : start + layout.piece_size(i)]


def write_piece(storage: Storage, layout: FakeLayout, payload: bytes, i: int) -> bool:
    data = piece_of(layout, payload, i)
    done = False
    for b in range(0, len(data), BLOCK_LEN):
        done = storage.write_block(i, b, memoryview(data)[b : b + BLOCK_LEN])
    return done


def brute_spans(layout: FakeLayout, piece: int, begin: int, length: int) -> list[Span]:
    spans: list[Span] = []
    start = piece * layout.piece_length + begin
    for p in range(start, start + length):
        idx = next(i for i, f in enumerate(layout.files) if f.offset <= p < f.offset + f.length)
        f = layout.files[idx]
        last = spans[-1] if spans else None
        if last is not None and last.file_index == idx and last.file_offset + last.length == p - f.offset:
            spans[-1] = Span(idx, last.file_offset, last.length + 1)
        else:
            spans.append(Span(idx, p - f.offset, 1))
    return spans


# A torrent with many boundaries: zero-length files at the start, middle and end, a pad file,
# files smaller than a block and files spanning several pieces.
MIXED_LENGTHS = [0, 5000, 0, 40 * KIB, 7, 0, 3 * KIB, 100 * KIB + 3, 0, 20 * KIB, 1, 0]
MIXED_PADS = frozenset({6})


def mixed_layout() -> FakeLayout:
    return FakeLayout(MIXED_LENGTHS, 32 * KIB, MIXED_PADS)


# -- span mapping --------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(0, 40), min_size=1, max_size=12).filter(lambda ls: sum(ls) > 0),
    st.integers(1, 32),
    st.data(),
)
def test_piece_spans_match_bruteforce(lengths: list[int], piece_length: int, data: st.DataObject) -> None:
    layout = FakeLayout(lengths, piece_length)
    for piece in range(layout.num_pieces):
        size = layout.piece_size(piece)
        assert piece_spans(layout, piece) == brute_spans(layout, piece, 0, size)
        begin = data.draw(st.integers(0, size))
        length = data.draw(st.integers(0, size - begin))
        got = piece_spans(layout, piece, begin, length)
        assert got == brute_spans(layout, piece, begin, length)
        assert all(s.length > 0 and layout.files[s.file_index].length > 0 for s in got)


def test_piece_spans_cross_many_files() -> None:
    layout = FakeLayout([3, 0, 2, 0, 0, 4, 1], 8)
    assert piece_spans(layout, 0) == [Span(0, 0, 3), Span(2, 0, 2), Span(5, 0, 3)]
    assert piece_spans(layout, 1) == [Span(5, 3, 1), Span(6, 0, 1)]
    assert piece_spans(layout, 0, 4, 2) == [Span(2, 1, 1), Span(5, 0, 1)]


@pytest.mark.parametrize(
    "piece,begin,length", [(-1, 0, 1), (99, 0, 1), (0, -1, 1), (0, 0, 32 * KIB + 1), (0, 5, -1)]
)
def test_piece_spans_rejects_out_of_range(piece: int, begin: int, length: int) -> None:
    with pytest.raises(ValueError):
        piece_spans(mixed_layout(), piece, begin, length)


# -- open ----------------------------------------------------------------------------------------


def test_open_create_makes_full_size_sparse_files(tmp_path: Path) -> None:
    layout = FakeLayout([64 * 1024 * KIB, 10], 256 * KIB)
    storage = Storage(layout, str(tmp_path))
    storage.open(create=True)
    st0 = os.stat(layout.file_path(str(tmp_path), 0))
    assert st0.st_size == 64 * 1024 * KIB
    assert st0.st_blocks * 512 < 1024 * KIB  # holes, not written zeros
    assert os.path.getsize(layout.file_path(str(tmp_path), 1)) == 10
    storage.close()


def test_open_create_resizes_existing_files_keeping_data(tmp_path: Path) -> None:
    layout = FakeLayout([100, 50], 64)
    p0, p1 = (layout.file_path(str(tmp_path), i) for i in range(2))
    os.makedirs(os.path.dirname(p0))
    Path(p0).write_bytes(b"a" * 30)
    Path(p1).write_bytes(b"b" * 80)
    storage = Storage(layout, str(tmp_path))
    storage.open(create=True)
    assert Path(p0).read_bytes() == b"a" * 30 + bytes(70)
    assert Path(p1).read_bytes() == b"b" * 50
    storage.close()


def test_pad_and_zero_length_files(tmp_path: Path) -> None:
    layout = mixed_layout()
    storage = Storage(layout, str(tmp_path))
    storage.open(create=True)
    for i, f in enumerate(layout.files):
        path = layout.file_path(str(tmp_path), i)
        if f.pad:
            assert not os.path.exists(path)
        else:
            assert os.path.getsize(path) == f.length
    assert disk_file_sizes(layout, str(tmp_path)) == tuple(f.length for f in layout.files)
    storage.close()


def test_storage_file_sizes_use_the_paths_checked_when_it_was_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every resume save asks for the sizes: resolving each path again cost an lstat per directory of every file.
    layout = mixed_layout()
    storage = Storage(layout, str(tmp_path))
    storage.open(create=True)
    os.truncate(layout.file_path(str(tmp_path), 0), 7)

    def no_resolving(path: str) -> str:
        raise AssertionError(f"{path} resolved again")

    monkeypatch.setattr(os.path, "realpath", no_resolving)
    sizes = storage.disk_file_sizes()
    assert sizes == (7, *(f.length for f in layout.files[1:]))
    storage.close()


def test_open_seed_mode_requires_existing_files_of_right_size(tmp_path: Path) -> None:
    layout = FakeLayout([100, 50], 64)
    with pytest.raises(StorageError) as ei:
        Storage(layout, str(tmp_path)).open(create=False)
    assert ei.value.cause is not None and ei.value.cause.errno == errno.ENOENT
    Storage(layout, str(tmp_path)).open(create=True)
    os.truncate(layout.file_path(str(tmp_path), 1), 49)
    with pytest.raises(StorageError, match="expected 50"):
        Storage(layout, str(tmp_path)).open(create=False)
    os.truncate(layout.file_path(str(tmp_path), 1), 50)
    seed = Storage(layout, str(tmp_path))
    seed.open(create=False)
    assert seed.read_block(0, 0, 64) == bytes(64)
    seed.close()


# -- write cache ---------------------------------------------------------------------------------


def test_blocks_out_of_order_and_duplicated_complete_the_piece(tmp_path: Path, rng: random.Random) -> None:
    layout = FakeLayout([5 * BLOCK_LEN + 100], 4 * BLOCK_LEN)
    storage = Storage(layout, str(tmp_path))
    payload = payload_for(layout, rng)
    for piece in range(layout.num_pieces):
        data = piece_of(layout, payload, piece)
        offsets = list(range(0, len(data), BLOCK_LEN))
        order = offsets + rng.sample(offsets, len(offsets) // 2 + 1)
        rng.shuffle(order)
        seen: set[int] = set()
        for b in order:
            seen.add(b)
            done = storage.write_block(piece, b, data[b : b + BLOCK_LEN])
            assert done == (seen == set(offsets))
            assert storage.is_complete(piece) == done
        assert bytes(storage.piece_buffer(piece)) == data


def test_write_after_complete_does_not_change_buffer(tmp_path: Path) -> None:
    layout = FakeLayout([2 * BLOCK_LEN], 2 * BLOCK_LEN)
    storage = Storage(layout, str(tmp_path))
    storage.write_block(0, 0, b"\x01" * BLOCK_LEN)
    assert storage.write_block(0, BLOCK_LEN, b"\x02" * BLOCK_LEN)
    assert storage.write_block(0, 0, b"\xee" * BLOCK_LEN)
    assert bytes(storage.piece_buffer(0)) == b"\x01" * BLOCK_LEN + b"\x02" * BLOCK_LEN


def test_unaligned_writes_count_only_fully_covered_blocks(tmp_path: Path) -> None:
    layout = FakeLayout([3 * BLOCK_LEN], 3 * BLOCK_LEN)
    storage = Storage(layout, str(tmp_path))
    assert not storage.write_block(0, 100, bytes(2 * BLOCK_LEN))  # covers block 1 only
    assert not storage.write_block(0, 0, bytes(BLOCK_LEN))
    assert not storage.write_block(0, 2 * BLOCK_LEN, bytes(BLOCK_LEN - 1))
    # Two partial writes do not add up to a block: the bitmap only counts whole blocks.
    assert not storage.write_block(0, 2 * BLOCK_LEN + 1, bytes(BLOCK_LEN - 1))
    assert storage.write_block(0, 2 * BLOCK_LEN - 5, bytes(BLOCK_LEN + 5))  # covers the tail block


@pytest.mark.parametrize("piece,begin,n", [(5, 0, 10), (0, -1, 10), (0, 0, 0), (0, BLOCK_LEN, BLOCK_LEN + 1)])
def test_write_block_outside_piece_raises(tmp_path: Path, piece: int, begin: int, n: int) -> None:
    storage = Storage(FakeLayout([2 * BLOCK_LEN], 2 * BLOCK_LEN), str(tmp_path))
    with pytest.raises(ValueError):
        storage.write_block(piece, begin, bytes(n))
    assert storage.buffered_bytes == 0


def test_commit_writes_one_pwrite_per_span(tmp_path: Path, rng: random.Random) -> None:
    layout = mixed_layout()
    storage = Storage(layout, str(tmp_path), cache_bytes=1 << 30)
    storage.open(create=True)
    payload = payload_for(layout, rng)
    expected_calls = 0
    for piece in range(layout.num_pieces):
        assert write_piece(storage, layout, payload, piece)
        expected_calls += sum(1 for s in piece_spans(layout, piece) if not layout.files[s.file_index].pad)
    assert storage.buffered_bytes == layout.total_length
    for piece in rng.sample(range(layout.num_pieces), layout.num_pieces):
        storage.commit_piece(piece)
    stats = storage.stats()
    assert stats["write_calls"] == expected_calls
    assert stats["bytes_written"] == sum(f.length for f in layout.files if not f.pad)
    assert storage.buffered_bytes == 0 and storage.pieces_in_cache() == set()
    storage.close()
    for i, f in enumerate(layout.files):
        if not f.pad:
            assert (
                Path(layout.file_path(str(tmp_path), i)).read_bytes()
                == payload[f.offset : f.offset + f.length]
            )


def test_commit_of_incomplete_piece_raises(tmp_path: Path) -> None:
    storage = Storage(FakeLayout([2 * BLOCK_LEN], 2 * BLOCK_LEN), str(tmp_path))
    storage.open(create=True)
    with pytest.raises(ValueError):
        storage.commit_piece(0)
    storage.write_block(0, 0, bytes(BLOCK_LEN))
    with pytest.raises(ValueError):
        storage.commit_piece(0)
    storage.close()


def test_cache_accounting(tmp_path: Path) -> None:
    layout = FakeLayout([4 * 64 * KIB + 10], 64 * KIB)
    storage = Storage(layout, str(tmp_path), cache_bytes=2 * 64 * KIB)
    storage.open(create=True)
    assert storage.can_start_piece(0) and storage.buffered_bytes == 0
    storage.write_block(0, 0, bytes(BLOCK_LEN))
    assert storage.buffered_bytes == 64 * KIB and storage.pieces_in_cache() == {0}
    assert storage.can_start_piece(1) and storage.can_start_piece(0)
    storage.write_block(1, 0, bytes(BLOCK_LEN))
    assert not storage.can_start_piece(2)
    assert storage.can_start_piece(1)  # already buffered
    assert storage.stats()["cache_bytes"] == 128 * KIB
    storage.discard_piece(0)
    storage.discard_piece(0)
    assert storage.pieces_in_cache() == {1} and storage.buffered_bytes == 64 * KIB
    assert storage.can_start_piece(2)
    storage.write_block(4, 0, bytes(10))  # the short last piece
    assert storage.buffered_bytes == 64 * KIB + 10
    assert storage.write_block(4, 0, bytes(10))
    storage.commit_piece(4)
    assert storage.pieces_in_cache() == {1}
    storage.discard_piece(1)
    assert storage.stats()["peak_cache_bytes"] == 128 * KIB


def test_default_cache_has_room_for_three_pieces(tmp_path: Path) -> None:
    """Without a configured size the cache holds DEFAULT_CACHE_BYTES or three pieces, whichever is
    more (at most AUTO_CACHE_MAX_BYTES): a piece waiting for its check and write never stops the next
    ones from being requested.  A configured size is used as it is."""
    from minibt.storage import AUTO_CACHE_MAX_BYTES, DEFAULT_CACHE_BYTES, default_cache_bytes

    mib = 1024 * KIB
    assert default_cache_bytes(256 * KIB) == DEFAULT_CACHE_BYTES
    assert default_cache_bytes(4 * mib) == 12 * mib
    assert default_cache_bytes(64 * mib) == AUTO_CACHE_MAX_BYTES
    big = FakeLayout([8 * 4 * mib], 4 * mib)
    auto = Storage(big, str(tmp_path / "auto"))
    assert auto.stats()["cache_limit"] == 12 * mib
    for piece in (0, 1, 2):
        assert auto.can_start_piece(piece)
        auto.write_block(piece, 0, bytes(BLOCK_LEN))
    assert not auto.can_start_piece(3)
    assert not auto.can_start_piece(4, pending=())
    auto.discard_piece(0)
    assert auto.can_start_piece(3)
    assert not auto.can_start_piece(3, pending=[4])  # a requested piece not arrived yet counts too
    told = Storage(big, str(tmp_path / "told"), cache_bytes=DEFAULT_CACHE_BYTES)
    assert told.stats()["cache_limit"] == DEFAULT_CACHE_BYTES
    told.write_block(0, 0, bytes(BLOCK_LEN))
    assert not told.can_start_piece(1)  # one 4 MiB piece fills the 3 MiB cache


def test_one_piece_always_fits_even_if_larger_than_cache(tmp_path: Path) -> None:
    storage = Storage(FakeLayout([4 * 64 * KIB], 64 * KIB), str(tmp_path), cache_bytes=1000)
    assert storage.can_start_piece(3)
    storage.write_block(3, 0, bytes(BLOCK_LEN))
    assert not storage.can_start_piece(2)


# -- reads ---------------------------------------------------------------------------------------


def test_read_block_across_files_from_disk_and_cache(tmp_path: Path, rng: random.Random) -> None:
    layout = mixed_layout()
    storage = Storage(layout, str(tmp_path), cache_bytes=1 << 30)
    storage.open(create=True)
    payload = payload_for(layout, rng)
    for piece in range(layout.num_pieces):
        write_piece(storage, layout, payload, piece)
    for piece in range(layout.num_pieces):  # served from the cache before commit
        assert storage.read_block(piece, 0, layout.piece_size(piece)) == piece_of(layout, payload, piece)
        storage.commit_piece(piece)
    hits = storage.stats()["cache_hits"]
    assert hits == layout.num_pieces
    for _ in range(200):
        piece = rng.randrange(layout.num_pieces)
        size = layout.piece_size(piece)
        begin = rng.randrange(size)
        length = rng.randint(1, size - begin)
        expect = piece_of(layout, payload, piece)[begin : begin + length]
        assert storage.read_block(piece, begin, length) == expect
    assert storage.stats()["cache_hits"] == hits
    assert storage.stats()["bytes_read"] > 0
    storage.close()


def test_read_block_of_partly_received_range_goes_to_disk(tmp_path: Path) -> None:
    layout = FakeLayout([2 * BLOCK_LEN], 2 * BLOCK_LEN)
    storage = Storage(layout, str(tmp_path))
    storage.open(create=True)
    storage.write_block(0, 0, b"\x07" * BLOCK_LEN)
    assert storage.read_block(0, 0, 10) == b"\x07" * 10
    assert storage.read_block(0, BLOCK_LEN - 5, 10) == bytes(10)  # second block not received yet
    storage.close()


def test_short_read_raises_storage_error(tmp_path: Path) -> None:
    layout = FakeLayout([100, 100], 64)
    storage = Storage(layout, str(tmp_path))
    storage.open(create=True)
    os.truncate(layout.file_path(str(tmp_path), 1), 10)
    with pytest.raises(StorageError, match="short read"):
        storage.read_block(1, 0, 64)
    storage.close()


def test_read_piece_spans_marks_pad_spans(tmp_path: Path) -> None:
    layout = FakeLayout([10, 6, 20], 16, frozenset({1}))
    storage = Storage(layout, str(tmp_path))
    assert storage.read_piece_spans(0) == [(layout.file_path(str(tmp_path), 0), 0, 10), (PAD_PATH, 0, 6)]
    assert storage.read_piece_spans(1) == [(layout.file_path(str(tmp_path), 2), 0, 16)]


def test_fd_lru_is_bounded_and_reopens(tmp_path: Path, rng: random.Random) -> None:
    layout = FakeLayout([1000] * 10, 512)
    storage = Storage(layout, str(tmp_path), max_open_files=3)
    storage.open(create=True)
    assert storage.stats()["open_fds"] <= 3
    payload = payload_for(layout, rng)
    for piece in range(layout.num_pieces):
        write_piece(storage, layout, payload, piece)
        storage.commit_piece(piece)
    for _ in range(3):
        for piece in range(layout.num_pieces):
            assert storage.read_block(piece, 0, layout.piece_size(piece)) == piece_of(layout, payload, piece)
            assert storage.stats()["open_fds"] <= 3
    assert storage.stats()["fd_opens"] > 10
    storage.close()
    assert storage.stats()["open_fds"] == 0


def test_sync_fsyncs_each_written_file_once(tmp_path: Path) -> None:
    layout = FakeLayout([BLOCK_LEN, BLOCK_LEN, BLOCK_LEN], BLOCK_LEN)
    storage = Storage(layout, str(tmp_path))
    storage.open(create=True)
    storage.sync()
    base = storage.stats()["fsyncs"]
    for piece in (0, 2):
        storage.write_block(piece, 0, bytes(BLOCK_LEN))
        storage.commit_piece(piece)
    assert storage.stats()["dirty_files"] == 2
    storage.sync()
    assert storage.stats()["fsyncs"] == base + 2 and storage.stats()["dirty_files"] == 0
    storage.sync()
    assert storage.stats()["fsyncs"] == base + 2
    storage.close()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_enospc_is_recognisable_and_buffer_kept(tmp_path: Path) -> None:
    layout = FakeLayout([BLOCK_LEN], BLOCK_LEN)
    storage = Storage(layout, str(tmp_path), max_open_files=1)
    storage.open(create=True)
    storage.close()
    path = layout.file_path(str(tmp_path), 0)
    os.unlink(path)
    os.symlink("/dev/full", path)
    storage.write_block(0, 0, b"x" * BLOCK_LEN)
    with pytest.raises(StorageError) as ei:
        storage.commit_piece(0)
    assert ei.value.op == "write" and ei.value.path == path
    assert ei.value.cause is not None and ei.value.cause.errno == errno.ENOSPC
    assert storage.pieces_in_cache() == {0}
    storage.discard_piece(0)
    storage.close()


# -- resume data ---------------------------------------------------------------------------------


def make_resume(layout: FakeLayout, have: bytes | None = None) -> ResumeData:
    nbytes = (layout.num_pieces + 7) // 8
    return ResumeData(
        info_hash=layout.info_hash,
        piece_length=layout.piece_length,
        num_pieces=layout.num_pieces,
        have=have if have is not None else bytes(nbytes),
        file_sizes=tuple(f.length for f in layout.files),
        uploaded=123,
        downloaded=456,
        saved_at=1_700_000_000.25,
    )


@st.composite
def resume_data(draw: st.DrawFn) -> ResumeData:
    n = draw(st.integers(0, 100))
    bits = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    have = bytearray((n + 7) // 8)
    for i, b in enumerate(bits):
        if b:
            have[i >> 3] |= 0x80 >> (i & 7)
    return ResumeData(
        info_hash=draw(st.binary(min_size=20, max_size=20)),
        piece_length=draw(st.integers(1, 1 << 30)),
        num_pieces=n,
        have=bytes(have),
        file_sizes=tuple(draw(st.lists(st.integers(-1, 1 << 50), max_size=10))),
        uploaded=draw(st.integers(0, 1 << 60)),
        downloaded=draw(st.integers(0, 1 << 60)),
        saved_at=draw(st.floats(allow_nan=False, allow_infinity=False)),
    )


@given(resume_data())
def test_resume_round_trip(rd: ResumeData) -> None:
    encoded = encode_resume(rd)
    assert decode_resume(encoded) == rd
    assert encode_resume(decode_resume(encoded)) == encoded


@given(st.binary(max_size=200))
def test_resume_garbage_raises_only_storage_error(data: bytes) -> None:
    try:
        decode_resume(data)
    except StorageError as e:
        assert e.op.startswith("decode")


def test_resume_every_truncation_is_rejected() -> None:
    encoded = encode_resume(make_resume(mixed_layout()))
    for n in range(len(encoded)):
        with pytest.raises(StorageError):
            decode_resume(encoded[:n])


@pytest.mark.parametrize(
    "change",
    [
        {"have": b"\x00"},  # wrong length for num_pieces
        {"have": b"\x00\x01"},  # spare bit set
        {"info_hash": b"short"},
        {"piece_length": 0},
        {"uploaded": -1},
        {"file_sizes": (-2,)},
    ],
)
def test_resume_inconsistent_fields_are_rejected(change: dict[str, object]) -> None:
    layout = FakeLayout([100], 10)  # 10 pieces -> 2 bytes of bitfield
    rd = dataclasses.replace(make_resume(layout), **change)  # type: ignore[arg-type]
    with pytest.raises(StorageError):
        decode_resume(encode_resume(rd))


def test_save_and_load_resume(tmp_path: Path) -> None:
    layout = mixed_layout()
    storage = Storage(layout, str(tmp_path))
    storage.open(create=True)
    storage.close()
    path = str(tmp_path / "t.resume")
    rd = make_resume(layout, have=b"\xa0")
    save_resume(path, rd)
    save_resume(path, dataclasses.replace(rd, uploaded=999))
    assert sorted(os.listdir(tmp_path)) == ["t", "t.resume"]  # no temp files left behind
    loaded, warning = load_resume(path, layout, str(tmp_path))
    assert warning is None and loaded == dataclasses.replace(rd, uploaded=999)


def test_load_resume_missing_file(tmp_path: Path) -> None:
    assert load_resume(str(tmp_path / "nope"), mixed_layout(), str(tmp_path)) == (None, None)


@pytest.mark.parametrize("cut", [0, 1, 10, -1])
def test_load_resume_corrupt_or_truncated_gives_warning(tmp_path: Path, cut: int) -> None:
    layout = mixed_layout()
    path = tmp_path / "t.resume"
    save_resume(str(path), make_resume(layout))
    path.write_bytes(path.read_bytes()[:cut])
    rd, warning = load_resume(str(path), layout, str(tmp_path))
    assert rd is None and warning is not None and "corrupt" in warning


def test_load_resume_mismatches_give_reasons(tmp_path: Path) -> None:
    layout = mixed_layout()
    storage = Storage(layout, str(tmp_path))
    storage.open(create=True)
    storage.close()
    path = str(tmp_path / "t.resume")
    good = make_resume(layout)

    save_resume(path, dataclasses.replace(good, info_hash=b"\x22" * 20))
    rd, warning = load_resume(path, layout, str(tmp_path))
    assert rd is None and warning is not None and "info-hash" in warning

    other = FakeLayout(MIXED_LENGTHS, 16 * KIB, MIXED_PADS)
    save_resume(path, good)
    rd, warning = load_resume(path, other, str(tmp_path))
    assert rd is None and warning is not None and "piece" in warning

    os.truncate(layout.file_path(str(tmp_path), 3), 5)
    rd, warning = load_resume(path, layout, str(tmp_path))
    assert rd is None and warning is not None and "size" in warning

    os.unlink(layout.file_path(str(tmp_path), 3))
    rd, warning = load_resume(path, layout, str(tmp_path))
    assert rd is None and warning is not None and "-1" in warning


def test_prepare_commit_keeps_fds_valid_when_more_files_are_pinned_than_the_fd_cap(tmp_path: Path) -> None:
    # Regression: with more in-flight commits' files pinned than max_open_files, the fd just opened
    # for the next span was evicted (closed) at once and the worker's pwrite hit EBADF.
    layout = FakeLayout([BLOCK_LEN] * 6, BLOCK_LEN)  # one file per piece
    storage = Storage(layout, str(tmp_path), max_open_files=2)
    storage.open(create=True)
    writes = []
    for piece in range(6):
        storage.write_block(piece, 0, bytes([piece]) * BLOCK_LEN)
        writes.append(storage.prepare_commit(piece))
    for piece, ws in enumerate(writes):
        for fd, offset, chunk in ws:
            assert os.pwrite(fd, chunk, offset) == BLOCK_LEN  # EBADF before the fix
        storage.finish_commit(piece, written=True)
    storage.close()
    for piece in range(6):
        with open(layout.file_path(str(tmp_path), piece), "rb") as f:
            assert f.read() == bytes([piece]) * BLOCK_LEN


def test_a_dropped_buffer_is_reused_for_the_next_piece_and_fully_overwritten(tmp_path: Path) -> None:
    """While other pieces are buffered, a written piece's buffer serves the next piece unzeroed; the
    next piece is complete only once all its bytes are in, so nothing of the old one survives.  Not
    while a worker may still read it (a commit in flight), and not once the cache is empty."""
    piece = 4 * BLOCK_LEN
    layout = FakeLayout([6 * piece], piece)
    storage = Storage(layout, str(tmp_path), cache_bytes=1 << 20)
    storage.open(create=True)
    old = bytes([0xAA]) * piece
    for begin in range(0, piece, BLOCK_LEN):
        storage.write_block(0, begin, old[begin : begin + BLOCK_LEN])
    storage.write_block(1, 0, bytes(BLOCK_LEN))  # another piece stays buffered
    first = storage.piece_buffer(0).obj
    storage.commit_piece(0)
    new = bytes(range(256)) * (piece // 256)
    for begin in reversed(range(0, piece, 2 * BLOCK_LEN)):  # out of order, two blocks per write
        done = storage.write_block(2, begin, new[begin : begin + 2 * BLOCK_LEN])
    assert done and storage.piece_buffer(2).obj is first  # the same buffer, and only the new bytes
    assert bytes(storage.piece_buffer(2)) == new
    writes = storage.prepare_commit(2)  # a worker holds piece 2's buffer now
    storage.discard_piece(2)  # (not what a torrent does while committing: the buffer is not reused)
    storage.finish_commit(2, written=False)
    storage.write_block(3, 0, bytes(BLOCK_LEN))
    assert storage.piece_buffer(3).obj is not first
    del writes
    storage.discard_piece(3)
    storage.discard_piece(1)  # the cache is empty: no buffer kept for a piece that may never come
    assert storage._spares == []
    storage.close()


def test_dropped_buffers_serve_the_next_pieces_within_the_cache_size(tmp_path: Path) -> None:
    """Several pieces leave the cache before new ones start (their checks come back together): each new
    piece takes one of their buffers.  Buffers kept and buffers in use never exceed the cache's size."""
    piece = 4 * BLOCK_LEN
    layout = FakeLayout([8 * piece], piece)
    storage = Storage(layout, str(tmp_path), cache_bytes=3 * piece)
    storage.open(create=True)
    for p in range(3):
        for begin in range(0, piece, BLOCK_LEN):
            storage.write_block(p, begin, bytes([p]) * BLOCK_LEN)
    bufs = [storage.piece_buffer(p).obj for p in range(3)]
    storage.write_block(3, 0, bytes(BLOCK_LEN))  # one piece over the size: always let in
    for p in range(3):
        storage.commit_piece(p)
    kept = list(storage._spares)
    assert len(kept) == 2 and all(any(k is b for b in bufs) for k in kept)  # 1 buffered + 2 kept = 3 pieces
    for p in (4, 5, 6):
        storage.write_block(p, 0, bytes(BLOCK_LEN))
    reused = [storage.piece_buffer(p).obj for p in (4, 5, 6)]
    assert sum(any(r is k for k in kept) for r in reused) == 2 and storage._spares == []
    storage.close()


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_a_block_is_copied_into_its_piece_buffer_once(tmp_path: Path, kind: type) -> None:
    """Assigned to a slice of a bytearray, a block that is not a bytearray is first copied into a temporary one
    (CPython's bytearray_ass_subscript): 16 KiB allocated and copied twice per block, 65,536 times a GiB.  The
    cache assigns through a memoryview of the buffer instead: one copy, nothing allocated."""
    import tracemalloc

    piece = 8 * BLOCK_LEN
    storage = Storage(FakeLayout([2 * piece], piece), str(tmp_path))
    storage.open(create=True)
    storage.write_block(0, 0, bytes(BLOCK_LEN))  # the piece's buffer exists from here on
    blocks = [kind(bytes([i]) * BLOCK_LEN) for i in range(1, 8)]
    tracemalloc.start()
    try:
        for i, block in enumerate(blocks, start=1):
            storage.write_block(0, i * BLOCK_LEN, block)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < BLOCK_LEN // 4, peak
    assert bytes(storage.piece_buffer(0)) == bytes(BLOCK_LEN) + b"".join(bytes(b) for b in blocks)
    storage.close()
