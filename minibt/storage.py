"""Piece <-> file mapping, a flash-friendly piece write cache, and fast-resume files.

BEP 3 lays the files of a torrent end to end and cuts the result into pieces; ``piece_spans``
maps a byte range of a piece onto ``(file, offset, length)`` spans.  BEP 47 pad files are never
created on disk: reads of them give zeros and writes to them are dropped.  ``Storage`` gathers
the blocks of a piece in memory and writes the verified piece with one ``os.pwrite`` per file
span (large writes are kinder to SD cards), keeps a bounded LRU of open fds, and wraps every
``OSError`` in :class:`StorageError`.  No threads, sockets or clock here: hashing runs in
workers.py (fed by ``piece_buffer`` / ``read_piece_spans``) and ``saved_at`` comes from the caller.
Each file's name on disk comes from filenames.py, under the rules of the save directory's file
system (detected here from /proc/self/mountinfo), or as recorded in the resume file (resume.py).
"""

from __future__ import annotations

import errno
import logging
import os
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from minibt.bitfield import Bitfield
from minibt.durable import fsync_all, write_atomic
from minibt.errors import MetainfoError, StorageError
from minibt.filenames import DiskNames, FsRules, fs_type_from_mountinfo, rules_for_fs_type
from minibt.metainfo import read_capped, safe_join
from minibt.realpaths import RealPaths
from minibt.resume import MAX_RESUME_BYTES, ResumeData, decode_resume, encode_resume
from minibt.wire_codec import BLOCK_LEN

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class FileEntryLike(Protocol):
        """The parts of metainfo.FileEntry that storage uses."""

        @property
        def length(self) -> int: ...
        @property
        def offset(self) -> int: ...
        @property
        def pad(self) -> bool: ...

    class TorrentLayout(Protocol):
        """The parts of metainfo.Metainfo that storage uses (read-only, so frozen dataclasses fit)."""

        @property
        def info_hash(self) -> bytes: ...
        @property
        def piece_length(self) -> int: ...
        @property
        def total_length(self) -> int: ...
        @property
        def num_pieces(self) -> int: ...
        @property
        def files(self) -> Sequence[FileEntryLike]: ...
        def piece_size(self, i: int) -> int: ...
        def torrent_paths(self) -> Sequence[tuple[str, ...] | None]: ...

log = logging.getLogger(__name__)

# minibt's default write cache (issue 15): 16 MiB, 4 MiB, 3 MiB, now 1 MiB: 1 GiB from libtorrent on loopback,
# 4 alternating rounds of 3, 1.5 and 1 MiB: CPU medians 2.67, 2.59, 2.64 s, peak RSS 22.7-22.8, 21.0-21.2,
# 20.6-20.7 MiB.  There it holds one piece arriving, the rest verified pieces waiting for a hash thread: a
# bigger cache only lets that queue grow.  Pieces are written whole once verified whatever its size.  Pieces
# requested but not arrived count against it, so it bounds the requests in flight (64 blocks); with the
# default, download.py's reservation lets more out (RESERVE_FLOOR with a far peer or several, 2 x rate x RTT).
DEFAULT_CACHE_BYTES = 1024 * 1024
# The default also holds at least this many pieces: a verified piece stays buffered until the worker has written
# it, so a cache of one piece stops requests at every piece end until the check and the write are done (4 MiB
# pieces: 7.4-7.9 s for 1 GiB against 2.9-4.0 s with room for three): one filling, one checked, one arriving.
CACHE_MIN_PIECES = 3
AUTO_CACHE_MAX_BYTES = 64 * 1024 * 1024  # minibt cap on what CACHE_MIN_PIECES may raise the default to

MAX_OPEN_FILES = 64  # minibt convention: bound on simultaneously open fds per torrent
PAD_PATH = ""  # path used in read_piece_spans() for a BEP 47 pad span: `length` zero bytes
# Downloading buffers each piece whole in memory until it is verified (write cache, hash job), so a
# piece may not be bigger than a Pi can spare; seeding and checking read 1 MiB at a time and have no
# such limit.  libtorrent's old parse limit; torrents with bigger pieces can be seeded, not downloaded.
MAX_BUFFERED_PIECE_BYTES = 128 * 1024 * 1024
PATH_MAX_BYTES = 4096  # Linux PATH_MAX: checked for every file before the first one is created
MOUNTINFO = "/proc/self/mountinfo"
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)


def default_cache_bytes(piece_length: int) -> int:
    """The write cache when none is configured: DEFAULT_CACHE_BYTES, or CACHE_MIN_PIECES pieces when
    that is more (at most AUTO_CACHE_MAX_BYTES).  A configured size is used as it is."""
    return max(DEFAULT_CACHE_BYTES, min(CACHE_MIN_PIECES * piece_length, AUTO_CACHE_MAX_BYTES))


@dataclass(frozen=True, slots=True)
class Span:
    """A contiguous byte range inside one file."""

    file_index: int
    file_offset: int
    length: int


def _file_offset(f: FileEntryLike) -> int:
    return f.offset


def piece_spans(layout: TorrentLayout, piece: int, begin: int = 0, length: int | None = None) -> list[Span]:
    """Map ``length`` bytes at ``begin`` inside ``piece`` onto file spans (zero-length files skipped).

    Pad files appear as ordinary spans; callers check ``files[i].pad``.
    Raises ValueError if the range is not inside the piece.
    """
    if not 0 <= piece < layout.num_pieces:
        raise ValueError(f"piece {piece} out of range (num_pieces={layout.num_pieces})")
    size = layout.piece_size(piece)
    if length is None:
        length = size - begin
    if begin < 0 or length < 0 or begin + length > size:
        raise ValueError(f"range {begin}+{length} outside piece {piece} of {size} bytes")
    spans: list[Span] = []
    if length == 0:
        return spans
    files = layout.files
    pos = piece * layout.piece_length + begin
    end = pos + length
    # The last file starting at or before pos has positive length and contains pos
    # (a zero-length file at pos is followed by a file with the same offset).
    i = bisect_right(files, pos, key=_file_offset) - 1
    nfiles = len(files)
    while pos < end:
        if i >= nfiles:
            raise ValueError(f"file list shorter than total_length (piece {piece})")
        f = files[i]
        f_end = f.offset + f.length
        if f_end > pos:
            n = min(end, f_end) - pos
            spans.append(Span(i, pos - f.offset, n))
            pos += n
        i += 1
    return spans


def wanted_bytes(layout: TorrentLayout, wanted: bytes | None) -> int:
    """Bytes of the wanted pieces (``wanted`` None: no file selection, the whole torrent)."""
    if wanted is None:
        return layout.total_length
    return sum(layout.piece_size(i) for i, w in enumerate(wanted) if w)


def bytes_left(layout: TorrentLayout, have: Bitfield, wanted: bytes | None) -> int:
    """Bytes of the wanted pieces not verified yet (the tracker's 'left')."""
    if wanted is not None:
        return sum(layout.piece_size(i) for i, w in enumerate(wanted) if w and not have[i])
    last = layout.num_pieces - 1
    left = (layout.num_pieces - have.count()) * layout.piece_length
    if not have[last]:
        left -= layout.piece_length - layout.piece_size(last)
    return left


def wanted_pieces(layout: TorrentLayout, files: Collection[int]) -> tuple[bytes, frozenset[int]]:
    """File selection: (one byte per piece, 1 = wanted; the files that must exist on disk).

    A piece is wanted if any byte of it lies in a selected file; such a piece is downloaded whole, so
    the unselected neighbour files it touches are created too (sparse).  Every other file is left out.
    """
    n = layout.num_pieces
    mask = bytearray(n)
    plen = layout.piece_length
    entries = layout.files
    for i in files:
        f = entries[i]
        if f.pad or f.length == 0:
            continue
        first, last = f.offset // plen, (f.offset + f.length - 1) // plen
        mask[first : last + 1] = b"\x01" * (last - first + 1)
    needed: set[int] = set(i for i in files if not entries[i].pad)
    for p in range(n):
        if mask[p]:
            needed.update(s.file_index for s in piece_spans(layout, p) if not entries[s.file_index].pad)
    return bytes(mask), frozenset(needed)


def detect_rules(download_dir: str, mountinfo: str = MOUNTINFO) -> FsRules:
    """The naming rules for the file system holding ``download_dir`` (POSIX if it cannot be told)."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read(4 * 1024 * 1024)
    except OSError:
        return FsRules.POSIX
    fs_type = fs_type_from_mountinfo(text, os.path.realpath(download_dir))
    return FsRules.POSIX if fs_type is None else rules_for_fs_type(fs_type)


def _recorded_names(layout: TorrentLayout, resume_path: str | None) -> DiskNames | None:
    """The names a resume file recorded for this torrent, or None (none, unreadable, or not fitting)."""
    if resume_path is None:
        return None
    try:
        with open(resume_path, "rb") as fh:
            raw = read_capped(fh, MAX_RESUME_BYTES)
        if len(raw) > MAX_RESUME_BYTES:
            return None
        rd = decode_resume(raw, resume_path)
    except (OSError, StorageError):
        return None  # load_resume() reports the problem when the torrent starts
    return _names_of(rd, layout)


def _names_of(rd: ResumeData, layout: TorrentLayout) -> DiskNames | None:
    if rd.rules is None or rd.info_hash != layout.info_hash:
        return None
    try:
        return DiskNames.restore(rd.rules, layout.torrent_paths(), dict(rd.renamed))
    except ValueError as e:
        log.warning("resume data: recorded file names ignored: %s", e)
        return None


def plan_names(layout: TorrentLayout, download_dir: str, resume_path: str | None = None) -> DiskNames:
    """Every file's disk name: as recorded in the resume file, else by the save directory's rules."""
    recorded = _recorded_names(layout, resume_path)
    if recorded is not None:
        return recorded
    return DiskNames.plan(layout.torrent_paths(), detect_rules(download_dir))


def _disk_paths(names: DiskNames, download_dir: str) -> list[str | None]:
    """Absolute paths; MetainfoError if one would leave download_dir (safe_join's checks)."""
    real = RealPaths()  # the files share their directories: each is resolved once
    return [None if p is None else safe_join(download_dir, p, real) for p in names.paths]


def disk_file_sizes(layout: TorrentLayout, download_dir: str, names: DiskNames | None = None) -> tuple[int, ...]:
    """Size on disk of every file (-1 if missing; pad files and symlinks count as their declared length).
    ``names`` default to :func:`plan_names` without a resume file; after ``Storage.open(create=True)``
    the sizes are ``tuple(f.length for f in layout.files)``."""
    return _file_sizes(layout, _disk_paths(names or plan_names(layout, download_dir), download_dir))


def _file_sizes(layout: TorrentLayout, paths: list[str | None]) -> tuple[int, ...]:
    return tuple(f.length if p is None else _size_on_disk(p) for f, p in zip(layout.files, paths, strict=True))


def _size_on_disk(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


@dataclass(slots=True)
class _PieceBuf:
    """A piece being received in the write cache."""

    buf: bytearray
    data: memoryview  # of ``buf``: a block assigned to a slice of it is copied once (into a bytearray's, twice)
    received: int  # bitmask of received BLOCK_LEN blocks
    full: int  # the mask value when every block is in


class Storage:
    """File I/O for one torrent: span mapping, piece write cache, bounded fd LRU."""

    def __init__(
        self,
        layout: TorrentLayout,
        download_dir: str,
        *,
        cache_bytes: int | None = None,
        fsync: bool = True,
        max_open_files: int = MAX_OPEN_FILES,
        only_files: frozenset[int] | None = None,
        names: DiskNames | None = None,
    ) -> None:
        """``cache_bytes``: the write cache (None: :func:`default_cache_bytes` of this piece length).
        ``only_files``: create (download mode) just these files; None = all (file selection).
        ``names``: each file's disk name (default :func:`plan_names` without a resume file).
        MetainfoError if a name would lead outside ``download_dir``."""
        if max_open_files < 1:
            raise ValueError("max_open_files must be >= 1")
        self._layout = layout
        n = layout.num_pieces
        self._n = n
        self._plen = layout.piece_length
        self._last_size = layout.total_length - layout.piece_length * (n - 1) if n else 0
        self._dir = download_dir
        self._cache_limit = default_cache_bytes(self._plen) if cache_bytes is None else cache_bytes
        self._fsync = fsync
        self._max_fds = max_open_files
        self.names = names if names is not None else plan_names(layout, download_dir)
        self._paths = _disk_paths(self.names, download_dir)
        self._only = only_files
        self._fds: OrderedDict[int, int] = OrderedDict()  # file index -> fd, LRU order
        self._pins: dict[int, int] = {}  # file index -> commits in flight writing through its fd
        self._committing: dict[int, tuple[int, ...]] = {}  # piece -> file indexes it pinned
        self._flags = os.O_RDONLY
        self._opened = False
        self._dirty: set[int] = set()
        # Pieces written since the last flush (with fsync on): a resume file that is saved without one
        # lists them apart (ResumeData.pending).  ``_syncing``: those a begin_sync job is flushing.
        self._unsynced = Bitfield(n)
        self._syncing: Bitfield | None = None
        self._cache: dict[int, _PieceBuf] = {}
        self._buffered = 0
        self._spares: list[bytearray] = []  # dropped pieces' buffers, for the next pieces (see _drop)
        self._stats = {
            "bytes_written": 0,
            "write_calls": 0,
            "bytes_read": 0,
            "read_calls": 0,
            "cache_hits": 0,
            "pieces_committed": 0,
            "pieces_discarded": 0,
            "peak_cache_bytes": 0,
            "fd_opens": 0,
            "fsyncs": 0,
        }

    # -- files -------------------------------------------------------------------------------

    def open(self, create: bool) -> None:
        """Open (and with ``create`` make, sparse and full-size) every non-pad file.

        With ``create=False`` (seed mode) every file must already exist with its exact size and is
        opened read-only; otherwise StorageError.
        """
        self.close()
        if create:
            self._check_creatable()
        self._flags = (os.O_RDWR if create else os.O_RDONLY) | _O_CLOEXEC | _O_BINARY
        for i, f in enumerate(self._layout.files):
            path = self._paths[i]
            if path is None:
                continue
            if self._only is not None and i not in self._only:
                continue  # not selected and no wanted piece touches it: never created or opened
            if create:
                try:
                    parent = os.path.dirname(path)
                    if parent:
                        os.makedirs(parent, exist_ok=True)
                    fd = os.open(path, self._flags | os.O_CREAT, 0o644)
                except OSError as e:
                    raise StorageError("create", path, e) from e
                self._stats["fd_opens"] += 1
                try:
                    if os.fstat(fd).st_size != f.length:
                        # Sparse: ftruncate extends with holes, never writes zeros (flash wear).
                        os.ftruncate(fd, f.length)
                        self._dirty.add(i)
                except OSError as e:
                    os.close(fd)
                    raise StorageError("truncate", path, e) from e
                if f.length:
                    self._remember_fd(i, fd)
                else:
                    os.close(fd)
            else:
                try:
                    size = os.stat(path).st_size
                except OSError as e:
                    raise StorageError("open", path, e) from e
                if size != f.length:
                    cause = OSError(errno.EINVAL, f"size is {size} bytes, expected {f.length}")
                    raise StorageError("open", path, cause)
                if f.length:
                    self._fd(i)
        self._opened = True

    def _check_creatable(self) -> None:
        """Refuse, before creating anything, what would fail half-way through (no half-made tree)."""
        plen = self._layout.piece_length
        if plen > MAX_BUFFERED_PIECE_BYTES:
            cause = OSError(
                errno.ENOMEM,
                f"piece length {plen} is over the {MAX_BUFFERED_PIECE_BYTES}-byte limit: downloading holds "
                "a whole piece in memory (such a torrent can only be seeded)",
            )
            raise StorageError("download", self._dir, cause)
        for path in self._paths:
            if path is not None and len(os.fsencode(path)) >= PATH_MAX_BYTES:
                cause = OSError(errno.ENAMETOOLONG, f"path longer than {PATH_MAX_BYTES} bytes")
                raise StorageError("create", path[:200] + "...", cause)

    def file_path(self, i: int) -> str:
        """Absolute disk path of file ``i`` (PAD_PATH for a pad file or symlink, which are never on disk)."""
        return self._path(i)

    def disk_file_sizes(self) -> tuple[int, ...]:
        """:func:`disk_file_sizes` by the paths checked when this storage was made (not again per resume save)."""
        return _file_sizes(self._layout, self._paths)

    def _remember_fd(self, i: int, fd: int) -> None:
        self._fds[i] = fd
        # Evict least recently used fds, never one a worker thread is writing through, and never the
        # one just opened (when more than max_fds files are pinned the caller is about to use it).
        for idx in list(self._fds):
            if len(self._fds) <= self._max_fds:
                break
            if self._pins.get(idx) or idx == i:
                continue
            os.close(self._fds.pop(idx))

    def _fd(self, i: int) -> int:
        fd = self._fds.get(i)
        if fd is not None:
            self._fds.move_to_end(i)
            return fd
        path = self._paths[i]
        assert path is not None
        try:
            fd = os.open(path, self._flags)
        except OSError as e:
            raise StorageError("open", path, e) from e
        self._stats["fd_opens"] += 1
        self._remember_fd(i, fd)
        return fd

    def _path(self, i: int) -> str:
        return self._paths[i] or PAD_PATH

    def sync(self) -> None:
        """fsync every file written since the last sync (call before saving resume data)."""
        dirty = sorted(self._dirty)
        for i in dirty:
            if self._fsync:
                try:
                    os.fsync(self._fd(i))
                except OSError as e:
                    raise StorageError("fsync", self._path(i), e) from e
                self._stats["fsyncs"] += 1
            self._dirty.discard(i)
        self._unsynced.clear_all()

    @property
    def unsynced(self) -> Bitfield:
        """The pieces written whose data no flush has covered yet (always empty with fsync off)."""
        return self._unsynced if self._syncing is None else self._unsynced | self._syncing

    def note_unsynced(self, pieces: Iterable[int]) -> None:
        """Pieces another run wrote and may not have flushed: the next sync() or begin_sync() flushes their files."""
        for piece in pieces:
            self._dirty.update(s.file_index for s in piece_spans(self._layout, piece) if self._paths[s.file_index])
            if self._fsync:
                self._unsynced.set(piece)

    def begin_sync(self) -> list[tuple[str, int]]:
        """sync() for a worker thread: (path, duplicated fd) of every file written since the last sync,
        for durable.fsync_all, which closes the fds (the storage may close its own meanwhile).  The
        files count as synced from now on; ``finish_sync(files, ok=False)`` marks them unsynced again."""
        files: list[tuple[str, int]] = []
        try:
            for i in sorted(self._dirty) if self._fsync else ():
                files.append((self._path(i), os.dup(self._fd(i))))
        except OSError as e:
            fsync_all(files, sync=False)
            raise StorageError("dup", self._path(i), e) from e
        except StorageError:
            fsync_all(files, sync=False)
            raise
        self._dirty.clear()
        self._syncing, self._unsynced = self._unsynced, Bitfield(self._n)
        return files

    def finish_sync(self, files: list[tuple[str, int]], *, ok: bool) -> None:
        """A begin_sync job's outcome (its fds are closed by then): failed files are synced again next time."""
        syncing, self._syncing = self._syncing, None
        if ok:
            self._stats["fsyncs"] += len(files)
        else:
            if syncing is not None:
                self._unsynced = self._unsynced | syncing
            index = {self._path(i): i for i in range(len(self._paths))}
            self._dirty.update(index[path] for path, _ in files if path in index)

    def close(self) -> None:
        """Close every fd (without fsync: call sync() first) and drop the write cache.

        Raises ValueError while commits are in flight: their fds must stay valid (a closed fd number
        could be reused by another file and receive the piece's bytes).
        """
        if self._committing:
            raise ValueError(f"{len(self._committing)} piece commits still in flight")
        while self._fds:
            _, fd = self._fds.popitem()
            try:
                os.close(fd)
            except OSError as e:  # pragma: no cover - close of a valid fd only fails on NFS
                log.debug("close failed: %s", e)
        self._cache.clear()
        self._buffered = 0
        self._spares.clear()
        self._opened = False

    # -- write cache ---------------------------------------------------------------------------

    def write_block(self, piece: int, begin: int, data: bytes | bytearray | memoryview) -> bool:
        """Copy a received block into the piece's buffer; True once every byte of the piece is in.

        Blocks are tracked in BLOCK_LEN units: a block counts when it covers whole BLOCK_LEN units
        (or the short tail).  Once a piece is complete further writes are ignored, so a buffer being
        hashed in another thread never changes under it.
        """
        n = len(data)
        pb = self._cache.get(piece)
        if pb is not None and n == BLOCK_LEN and not begin % BLOCK_LEN and 0 <= begin < len(pb.data) - n + 1:
            # The common case: a whole aligned block of a started piece (its buffer is the piece's size).
            if pb.received != pb.full:
                pb.data[begin : begin + n] = data
                pb.received |= 1 << begin // BLOCK_LEN
            return pb.received == pb.full
        size = self._plen if 0 <= piece < self._n - 1 else self._piece_size(piece)
        if size == 0 or begin < 0 or n <= 0 or begin + n > size:
            raise ValueError(f"block {piece}:{begin}+{n} outside the torrent")
        if pb is None:
            nblocks = (size + BLOCK_LEN - 1) // BLOCK_LEN
            buf = self._spares.pop() if self._spares and size == self._plen else bytearray(size)
            pb = _PieceBuf(buf, memoryview(buf), 0, (1 << nblocks) - 1)
            self._cache[piece] = pb
            self._buffered += size
            if self._buffered > self._stats["peak_cache_bytes"]:
                self._stats["peak_cache_bytes"] = self._buffered
        elif pb.received == pb.full:
            return True
        end = begin + n
        first = (begin + BLOCK_LEN - 1) // BLOCK_LEN
        last = (size + BLOCK_LEN - 1) // BLOCK_LEN if end == size else end // BLOCK_LEN  # exclusive: whole blocks
        pb.data[begin:end] = data
        if last > first:
            pb.received |= ((1 << (last - first)) - 1) << first
        return pb.received == pb.full

    def _piece_size(self, piece: int) -> int:
        """Length of piece ``piece``; 0 if out of range."""
        if 0 <= piece < self._n - 1:
            return self._plen
        return self._last_size if piece == self._n - 1 else 0

    def piece_buffer(self, piece: int) -> memoryview:
        """The whole buffer of a buffered piece (for hashing; do not write through it)."""
        pb = self._cache.get(piece)
        if pb is None:
            raise ValueError(f"piece {piece} is not buffered")
        return memoryview(pb.data)

    def is_complete(self, piece: int) -> bool:
        """True if ``piece`` is buffered and every block of it has been received."""
        pb = self._cache.get(piece)
        return pb is not None and pb.received == pb.full

    def commit_piece(self, piece: int) -> None:
        """Write a complete, verified piece with one pwrite per file span, then drop its buffer.

        On StorageError the buffer is kept, so the caller may retry (e.g. after ENOSPC) or discard.
        """
        pb = self._cache.get(piece)
        if pb is None or pb.received != pb.full:
            raise ValueError(f"piece {piece} is not complete in the cache")
        mv = memoryview(pb.data)
        files = self._layout.files
        pos = 0
        for span in piece_spans(self._layout, piece):
            chunk = mv[pos : pos + span.length]
            pos += span.length
            if files[span.file_index].pad:
                continue  # BEP 47: pad files are never written
            fd = self._fd(span.file_index)
            off = span.file_offset
            try:
                while chunk:
                    written = os.pwrite(fd, chunk, off)
                    self._stats["write_calls"] += 1
                    if written <= 0:
                        raise OSError(errno.EIO, "pwrite wrote nothing")
                    self._stats["bytes_written"] += written
                    chunk = chunk[written:]
                    off += written
            except OSError as e:
                raise StorageError("write", self._path(span.file_index), e) from e
            self._dirty.add(span.file_index)
        mv.release()
        if self._fsync:
            self._unsynced.set(piece)
        self._drop(piece)
        self._stats["pieces_committed"] += 1

    def prepare_commit(self, piece: int) -> tuple[tuple[int, int, memoryview], ...]:
        """The (fd, offset, data) writes of a complete piece, for a worker thread to perform.

        Pins the fds (and the buffer) until :meth:`finish_commit`.  Same layout as commit_piece.
        """
        pb = self._cache.get(piece)
        if pb is None or pb.received != pb.full:
            raise ValueError(f"piece {piece} is not complete in the cache")
        if piece in self._committing:
            raise ValueError(f"piece {piece} is already being committed")
        mv = memoryview(pb.data)
        files = self._layout.files
        writes: list[tuple[int, int, memoryview]] = []
        pinned: list[int] = []
        pos = 0
        for span in piece_spans(self._layout, piece):
            chunk = mv[pos : pos + span.length]
            pos += span.length
            if files[span.file_index].pad:
                continue  # BEP 47: pad files are never written
            fd = self._fd(span.file_index)
            self._pins[span.file_index] = self._pins.get(span.file_index, 0) + 1
            pinned.append(span.file_index)
            writes.append((fd, span.file_offset, chunk))
        self._committing[piece] = tuple(pinned)
        return tuple(writes)

    def finish_commit(self, piece: int, *, written: bool) -> None:
        """A worker finished the writes of :meth:`prepare_commit`: unpin, and drop the buffer if written.

        If the writes failed the buffer is kept, so the caller may retry (prepare_commit again) or discard.
        """
        pinned = self._committing.pop(piece, ())
        for i in pinned:
            n = self._pins.get(i, 0) - 1
            if n > 0:
                self._pins[i] = n
            else:
                self._pins.pop(i, None)
        if not written:
            return
        size = self._layout.piece_size(piece)
        self._dirty.update(pinned)
        if self._fsync:
            self._unsynced.set(piece)
        self._stats["write_calls"] += len(pinned)
        self._stats["bytes_written"] += size
        self._stats["pieces_committed"] += 1
        if piece in self._cache:
            self._drop(piece)

    @property
    def commits_in_flight(self) -> int:
        return len(self._committing)

    def discard_piece(self, piece: int) -> None:
        """Drop a piece's buffer (hash failed, or the piece was given up); no-op if not buffered."""
        if piece in self._cache:
            self._drop(piece)
            self._stats["pieces_discarded"] += 1

    def _drop(self, piece: int) -> None:
        pb = self._cache.pop(piece)
        self._buffered -= len(pb.data)
        # While other pieces are buffered (a download going on) the next pieces reuse these buffers, unless
        # a worker may still read one: bytearray(size) zeroes 256 KiB (py-spy: 1-3 % of the loop's samples on
        # that line with one spare).  Buffers and spares together stay within the cache's size.  Reuse is
        # safe unzeroed: a piece is complete only once every byte of it has been written.
        if not self._buffered:
            self._spares.clear()
        elif (piece not in self._committing and len(pb.data) == self._plen
              and self._buffered + (len(self._spares) + 1) * self._plen <= self._cache_limit):
            self._spares.append(pb.buf)

    @property
    def buffered_bytes(self) -> int:
        return self._buffered

    def can_start_piece(self, piece: int, pending: Iterable[int] = (), limit: int = 0) -> bool:
        """Would buffering ``piece`` keep the cache within ``limit`` if larger, else cache_bytes?  True if
        nothing is buffered (``limit``: download.py's reservation on long paths).

        ``pending``: pieces already requested whose first block has not arrived yet; each will take
        a whole buffer when it does, so they count as if buffered (with many peers, requests for
        many pieces are out at once and would otherwise all be let in).
        """
        if piece in self._cache:
            return True
        waiting = set(pending).difference(self._cache)  # called per candidate piece: no Python loop
        waiting.discard(piece)
        total = self._buffered + len(waiting) * self._plen
        if self._n - 1 in waiting:
            total += self._last_size - self._plen
        if total == 0:
            return True
        return total + self._piece_size(piece) <= max(limit, self._cache_limit)

    def pieces_in_cache(self) -> set[int]:
        return set(self._cache)

    # -- reads ---------------------------------------------------------------------------------

    def read_block(self, piece: int, begin: int, length: int, *, ahead: int = 0) -> bytes:
        """Read a block, from the cache if that range of a buffered piece was received, else from disk.
        ``ahead``: read that many bytes if more than ``length`` (never past the piece's end)."""
        if ahead > length:
            length = max(length, min(ahead, self._piece_size(piece) - begin))
        spans = piece_spans(self._layout, piece, begin, length)
        pb = self._cache.get(piece)
        if pb is not None and length > 0:
            first = begin // BLOCK_LEN
            last = (begin + length - 1) // BLOCK_LEN
            mask = ((1 << (last - first + 1)) - 1) << first
            if pb.received & mask == mask:
                self._stats["cache_hits"] += 1
                return bytes(pb.data[begin : begin + length])
        files = self._layout.files
        parts: list[bytes] = []
        for span in spans:
            if files[span.file_index].pad:
                parts.append(bytes(span.length))
                continue
            path = self._path(span.file_index)
            fd = self._fd(span.file_index)
            try:
                got = os.pread(fd, span.length, span.file_offset)
            except OSError as e:
                raise StorageError("read", path, e) from e
            self._stats["read_calls"] += 1
            self._stats["bytes_read"] += len(got)
            if len(got) != span.length:
                cause = OSError(errno.EIO, f"short read: {len(got)} of {span.length} bytes")
                raise StorageError("read", path, cause)
            parts.append(got)
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)

    def read_piece_spans(self, piece: int) -> list[tuple[str, int, int]]:
        """(path, offset, length) of every span of ``piece`` for the hasher; pad spans use PAD_PATH."""
        return [(self._path(s.file_index), s.file_offset, s.length) for s in piece_spans(self._layout, piece)]

    def free_bytes(self) -> int | None:
        """Bytes available to us on the download directory's file system (None if unknown)."""
        try:
            st = os.statvfs(self._dir)
        except (OSError, AttributeError):
            return None
        return st.f_bavail * st.f_frsize

    def stats(self) -> dict[str, int]:
        d = dict(self._stats)
        d["cache_bytes"] = self._buffered
        d["cache_pieces"] = len(self._cache)
        d["cache_limit"] = self._cache_limit
        d["open_fds"] = len(self._fds)
        d["dirty_files"] = len(self._dirty)
        return d


# -- fast resume -------------------------------------------------------------------------------


def save_resume(path: str, rd: ResumeData) -> None:
    """Write resume data atomically (see :func:`write_atomic`); StorageError on failure."""
    try:
        write_atomic(path, encode_resume(rd))
    except OSError as e:
        raise StorageError("save_resume", path, e) from e


def load_resume(
    path: str, layout: TorrentLayout, download_dir: str, names: DiskNames | None = None
) -> tuple[ResumeData | None, str | None]:
    """Load and check resume data: (data, None) if usable, else (None, warning) — (None, None) if missing.

    ``names``: the disk names in use (default: those the file records, else :func:`plan_names`).
    """
    try:
        with open(path, "rb") as fh:
            raw = read_capped(fh, MAX_RESUME_BYTES)
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, f"cannot read resume file {path}: {e.strerror or e}"
    if len(raw) > MAX_RESUME_BYTES:
        return None, f"resume file {path} is larger than {MAX_RESUME_BYTES} bytes"
    try:
        rd = decode_resume(raw, path)
    except StorageError as e:
        return None, f"corrupt resume file: {e}"
    if rd.info_hash != layout.info_hash:
        return None, f"resume file {path} is for another torrent (info-hash differs)"
    if rd.piece_length != layout.piece_length or rd.num_pieces != layout.num_pieces:
        return None, f"resume file {path}: piece length/count differ from the torrent"
    if len(rd.file_sizes) != len(layout.files):
        return None, f"resume file {path}: file count differs from the torrent"
    recorded = _names_of(rd, layout)
    if names is None:
        names = recorded or plan_names(layout, download_dir)
    elif recorded is not None and recorded.paths != names.paths:
        return None, f"resume file {path}: recorded file names differ from the ones in use"
    try:
        paths = _disk_paths(names, download_dir)
    except MetainfoError as e:
        return None, f"resume file {path}: {e}"
    on_disk = disk_file_sizes(layout, download_dir, names)
    for i, (want, got) in enumerate(zip(rd.file_sizes, on_disk, strict=True)):
        if want != got and paths[i] is not None:
            return None, f"resume file {path}: size of {paths[i]} changed ({want} -> {got} bytes)"
    return rd, None
