"""BEP 3 .torrent files (metainfo): hostile-input-safe parsing, creation and description.

In scope: v1 info dicts (single- and multi-file), BEP 12 announce-list, BEP 19 url-list, BEP 27
private flag, BEP 47 padding files (kept, marked ``pad``) and symlinks (kept with no data, never
created on disk), the v1 part of BEP 52 hybrid torrents (whose v2 part must agree: hybrid.py).
Out of scope: v2-only torrents (refused), the BEP 47 executable/hidden attributes (ignored).
The info-hash is SHA-1 over the raw ``info`` bytes as they appear in the file, never re-encoded.
.torrent files from disk are decoded leniently (unsorted keys, trailing bytes), as other clients do;
an info dict fetched from peers (metainfo_from_info, hash checked) may have unsorted keys, nothing after it.
Every path element is checked here, bounded in depth and length, and re-checked against the real
filesystem by safe_join(); the names files get on disk are filenames.py's business.
parse_metainfo() raises only MetainfoError, with a one-line message naming the offending field.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from minibt.bencode import decode_lenient_with_span, decode_whole_lenient, decode_with_span, encode
from minibt.errors import BencodeError, MetainfoError
from minibt.filenames import MAX_PATH_BYTES, MAX_PATH_DEPTH
from minibt.hybrid import check_hybrid, is_hybrid
from minibt.infobytes import InfoBytes
from minibt.realpaths import RealPaths
from minibt.sha1 import sha1
from minibt.urls import HTTP_SCHEMES, TRACKER_SCHEMES, parse_tracker_url

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO

log = logging.getLogger(__name__)

MiB = 1 << 20
DEFAULT_MAX_METAINFO_BYTES = 64 * MiB  # convention: libtorrent's default max .torrent size is 30 MiB
MAX_PIECE_LENGTH = 512 * MiB  # convention: libtorrent loads piece sizes up to 512 MiB (storage bounds what it buffers)
MAX_CREATE_PIECE_LENGTH = 128 * MiB  # minibt: created torrents stay downloadable (storage.MAX_BUFFERED_PIECE_BYTES)
MAX_LENGTH = 1 << 50  # convention: 1 PiB, caps each file and the total; far beyond any real torrent
HASH_LEN = 20  # BEP 3: 'pieces' is a concatenation of 20-byte SHA-1 digests
MIN_CREATE_PIECE_LENGTH = 16 * 1024  # BEP 3 block size; smaller pieces are not useful
MAX_AUTO_PIECE_LENGTH = 16 * MiB  # convention (libtorrent/qBittorrent creators)
AUTO_PIECE_COUNT_MAX = 2000  # convention: auto piece length gives ~1000-2000 pieces
CREATE_READ_BYTES = 1 * MiB  # read size while hashing files for create_torrent()
DESCRIBE_MAX_FILES = 200  # describe() lists at most this many files
SHOWN_ELEMENT_CHARS = 64  # convention: hostile names are cut to this in error messages (one short line)

# Anything _element_problem() might object to; lets the common, clean case skip the checks.
_SUSPECT_ELEMENT = re.compile(r"[/\\\x00]|^\.{0,2}\Z")


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of the torrent.

    ``path`` is relative to the torrent's root directory (``name``) for multi-file torrents;
    for a single-file torrent it is ``(name,)``.  ``offset`` is the file's position in the
    torrent's concatenated byte stream.  ``pad`` marks a BEP 47 padding file (never written).
    ``symlink`` is a BEP 47 symlink's target (relative to the torrent root, never leaving it); a
    symlink has no data (length 0) and minibt does not create it.
    """

    path: tuple[str, ...]
    length: int
    offset: int
    pad: bool = False
    symlink: tuple[str, ...] | None = None

    @property
    def on_disk(self) -> bool:
        """True for a file that holds data on disk (not a pad file, not a symlink)."""
        return not self.pad and self.symlink is None


@dataclass(frozen=True, slots=True)
class Metainfo:
    """A validated v1 torrent."""

    info_hash: bytes
    name: str
    piece_length: int
    num_pieces: int
    files: tuple[FileEntry, ...] = field(repr=False)
    total_length: int
    multi_file: bool
    private: bool
    announce_tiers: tuple[tuple[str, ...], ...]
    comment: str | None
    created_by: str | None
    creation_date: int | None
    info: InfoBytes = field(repr=False)  # the raw info dict, in memory or spilled (infobytes.py)
    pieces_at: int  # where the piece hashes start in it
    url_list: tuple[str, ...] = ()

    @property
    def info_bytes(self) -> bytes:
        """The whole info dict (read back if spilled): for one-off uses, ``info`` slices for the rest."""
        return bytes(self.info)

    @property
    def pieces(self) -> bytes:
        return self.info.read(self.pieces_at, self.num_pieces * HASH_LEN)

    @property
    def info_hash_hex(self) -> str:
        return self.info_hash.hex()

    def piece_hash(self, i: int) -> bytes:
        """The 20-byte SHA-1 of piece ``i``; IndexError if out of range."""
        if not 0 <= i < self.num_pieces:
            raise IndexError(f"piece {i} out of range 0..{self.num_pieces - 1}")
        return self.info.read(self.pieces_at + i * HASH_LEN, HASH_LEN)

    def piece_size(self, i: int) -> int:
        """Length of piece ``i`` in bytes (the last piece may be shorter); IndexError if out of range."""
        n = self.num_pieces
        if not 0 <= i < n:
            raise IndexError(f"piece {i} out of range 0..{n - 1}")
        if i == n - 1:
            return self.total_length - self.piece_length * (n - 1)
        return self.piece_length

    def torrent_paths(self) -> tuple[tuple[str, ...] | None, ...]:
        """Every file's path as the torrent names it, from the save directory: ``(name, *path)``
        (multi-file) or ``(name,)``; None for files that are never on disk (pad files, symlinks).
        filenames.map_paths() turns these into the names actually used on disk."""
        if not self.multi_file:
            return ((self.name,),)
        return tuple((self.name, *f.path) if f.on_disk else None for f in self.files)

    def file_path(self, download_dir: str, i: int) -> str:
        """Absolute path of file ``i`` by the torrent's own names: ``<download_dir>/<name>/<path...>``
        (multi-file) or ``<download_dir>/<name>``.  MetainfoError if it would leave download_dir.

        The file's real disk path may differ (over-long or, on Windows-type file systems, refused
        names are changed): use ``Storage.file_path(i)`` for I/O.
        """
        entry = self.files[i]
        parts = (self.name, *entry.path) if self.multi_file else (self.name,)
        return safe_join(download_dir, parts)


# ---------------------------------------------------------------------------------------------
# Path sanitising


def _shown(elem: str) -> str:
    """repr() of a (possibly hostile, huge) name, cut short so an error message stays one short line."""
    if len(elem) <= SHOWN_ELEMENT_CHARS:
        return repr(elem)
    return f"{elem[:SHOWN_ELEMENT_CHARS]!r}... ({len(elem)} chars)"


def _element_problem(elem: str) -> str | None:
    """Why a single path element is unsafe, or None if it is fine."""
    if _SUSPECT_ELEMENT.search(elem) is None:
        return None
    if elem == "":
        return "empty path element is not allowed"
    if elem in (".", ".."):
        return f"{_shown(elem)} is not allowed"
    if "\x00" in elem:
        return "NUL byte is not allowed"
    if "/" in elem or "\\" in elem:
        return f"{_shown(elem)}: path separators are not allowed"
    return None


def safe_join(base_dir: str, parts: Sequence[str], paths: RealPaths | None = None) -> str:
    """Join ``parts`` under ``base_dir`` and return the absolute path.

    Every element is checked again (no '', '.', '..', separators, NUL), and the
    realpath of the result must stay inside the realpath of base_dir, so symlinks that lead out
    of the tree are refused.  Raises MetainfoError.  ``paths``: one :class:`RealPaths` for a batch of
    calls (a torrent's files), so that each directory is resolved once.
    """
    if not parts:
        raise MetainfoError("path: no path elements")
    for i, elem in enumerate(parts):
        problem = _element_problem(elem)
        if problem is not None:
            raise MetainfoError(f"path[{i}]: {problem}")
    base = os.path.abspath(base_dir)
    joined = os.path.join(base, *parts)
    real_of = os.path.realpath if paths is None else paths.real
    real_base, real = real_of(base), real_of(joined)
    if real == real_base or not real.startswith(real_base.rstrip(os.sep) + os.sep):
        raise MetainfoError(f"path {os.path.join(*parts)!r} resolves outside {base_dir!r}")
    return joined


# ---------------------------------------------------------------------------------------------
# Parsing


def _what(v: object) -> str:
    if isinstance(v, int):
        return str(v)
    if isinstance(v, bytes):
        return "a string"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "a dictionary"
    return type(v).__name__  # pragma: no cover - decode() yields only the four types


def _int_field(d: dict[bytes, Any], key: bytes, where: str, lo: int, hi: int, what: str) -> int:
    if key not in d:
        raise MetainfoError(f"{where}: missing")
    v = d[key]
    if not isinstance(v, int) or not lo <= v <= hi:
        raise MetainfoError(f"{where}: expected {what}, got {_what(v)}")
    return v


def _utf8_element(raw: object) -> str | None:
    """A valid path element decoded from ``raw``, or None."""
    if not isinstance(raw, bytes):
        return None
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return s if _element_problem(s) is None else None


def _element(raw: object, where: str) -> str:
    if not isinstance(raw, bytes):
        raise MetainfoError(f"{where}: expected a string, got {_what(raw)}")
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MetainfoError(f"{where}: not valid UTF-8") from None
    problem = _element_problem(s)
    if problem is not None:
        raise MetainfoError(f"{where}: {problem}")
    return s


def _path(d: dict[bytes, Any], where: str, cache: dict[bytes, str]) -> tuple[str, ...]:
    # Prefer 'path.utf-8' when it is present and entirely valid (older clients put a legacy
    # code page in 'path').
    alt = d.get(b"path.utf-8")
    if isinstance(alt, list) and alt and len(alt) <= MAX_PATH_DEPTH:
        elems = [_utf8_element(e) for e in alt]
        if all(e is not None for e in elems):
            return tuple(e for e in elems if e is not None)
    if b"path" not in d:
        raise MetainfoError(f"{where}.path: missing")
    raw = d[b"path"]
    if not isinstance(raw, list):
        raise MetainfoError(f"{where}.path: expected a list of strings, got {_what(raw)}")
    if not raw:
        raise MetainfoError(f"{where}.path: empty path")
    if len(raw) > MAX_PATH_DEPTH:
        # os.makedirs() recurses once per level: 2000 levels killed a download with RecursionError.
        raise MetainfoError(f"{where}.path: {len(raw)} levels, more than the limit of {MAX_PATH_DEPTH}")
    out: list[str] = []
    for j, e in enumerate(raw):
        # Directory names repeat across files: decode and check each distinct one once.
        s = cache.get(e) if isinstance(e, bytes) else None
        if s is None:
            s = _element(e, f"{where}.path[{j}]")
            cache[e] = s
        out.append(s)
    return tuple(out)


def _text(d: dict[bytes, Any], key: bytes) -> str | None:
    for k in (key + b".utf-8", key):
        v = d.get(k)
        if isinstance(v, bytes):
            return v.decode("utf-8", errors="replace")
    return None


def _url(v: object, schemes: tuple[str, ...] = TRACKER_SCHEMES) -> str | None:
    # An unusable URL is dropped with a log line, not fatal to the torrent (as libtorrent does).
    if not isinstance(v, bytes):
        return None
    try:
        s = v.decode("utf-8").strip()
    except UnicodeDecodeError:
        log.debug("dropping a tracker/web seed URL that is not valid UTF-8: %r", v[:200])
        return None
    if not s:
        return None
    try:
        parse_tracker_url(s, schemes)
    except ValueError as e:
        log.debug("dropping unusable URL %r: %s", s[:200], e)
        return None
    return s


def _trackers(top: dict[bytes, Any]) -> tuple[tuple[str, ...], ...]:
    announce: str | None = None
    if b"announce" in top:
        raw = top[b"announce"]
        if not isinstance(raw, bytes):
            raise MetainfoError(f"announce: expected a string URL, got {_what(raw)}")
        announce = _url(raw)
    tiers: list[tuple[str, ...]] = []
    if b"announce-list" in top:
        # BEP 12; entries that are not strings are skipped, wrong containers are errors.
        raw_tiers = top[b"announce-list"]
        if not isinstance(raw_tiers, list):
            raise MetainfoError(f"announce-list: expected a list of lists, got {_what(raw_tiers)}")
        seen: set[str] = set()
        for t, raw_tier in enumerate(raw_tiers):
            if not isinstance(raw_tier, list):
                raise MetainfoError(f"announce-list[{t}]: expected a list of strings, got {_what(raw_tier)}")
            tier: list[str] = []
            for raw_url in raw_tier:
                url = _url(raw_url)
                if url is not None and url not in seen:
                    seen.add(url)
                    tier.append(url)
            if tier:
                tiers.append(tuple(tier))
    if tiers:
        return tuple(tiers)
    return ((announce,),) if announce else ()


def _url_list(top: dict[bytes, Any]) -> tuple[str, ...]:
    # BEP 19: a single string or a list of strings; anything else is ignored (as libtorrent does).
    raw = top.get(b"url-list")
    items = [raw] if isinstance(raw, bytes) else raw if isinstance(raw, list) else []
    urls = [u for u in (_url(x, HTTP_SCHEMES) for x in items) if u is not None]
    return tuple(dict.fromkeys(urls))


def _path_bytes(name: str, path: Sequence[str], where: str) -> None:
    n = len(name.encode("utf-8")) + sum(len(e.encode("utf-8")) + 1 for e in path)
    if n > MAX_PATH_BYTES:
        raise MetainfoError(f"{where}: {n} bytes long with the torrent name, more than the limit of {MAX_PATH_BYTES}")


def _symlink(fd: dict[bytes, Any], where: str) -> tuple[str, ...]:
    """A BEP 47 symlink's target: path elements under the torrent root, never leaving it."""
    raw = fd.get(b"symlink path")
    if not isinstance(raw, list) or not raw:
        raise MetainfoError(f"{where}.symlink path: expected a non-empty list of strings")
    if len(raw) > MAX_PATH_DEPTH:
        raise MetainfoError(f"{where}.symlink path: more than {MAX_PATH_DEPTH} levels")
    # '..' is refused like in any path, so the target stays inside the torrent (PROTOCOL.md section 5).
    return tuple(_element(e, f"{where}.symlink path[{j}]") for j, e in enumerate(raw))


def _files(info: dict[bytes, Any], name: str) -> tuple[list[FileEntry], int]:
    """The multi-file list and total length; checks duplicates and file/directory clashes."""
    raw = info[b"files"]
    if not isinstance(raw, list):
        raise MetainfoError(f"info.files: expected a list, got {_what(raw)}")
    if not raw:
        raise MetainfoError("info.files: a multi-file torrent needs at least one file")
    entries: list[FileEntry] = []
    file_at: dict[tuple[str, ...], int] = {}
    dir_at: dict[tuple[str, ...], int] = {}
    cache: dict[bytes, str] = {}
    offset = 0
    for i, fd in enumerate(raw):
        where = f"info.files[{i}]"
        if not isinstance(fd, dict):
            raise MetainfoError(f"{where}: expected a dictionary, got {_what(fd)}")
        attr = fd.get(b"attr")
        pad = isinstance(attr, bytes) and b"p" in attr
        link = isinstance(attr, bytes) and b"l" in attr
        if pad and link:
            raise MetainfoError(f"{where}.attr: a file cannot be both a pad file and a symlink (BEP 47)")
        target = _symlink(fd, where) if link else None
        # BEP 47: a symlink holds no data; libtorrent counts it as 0 bytes whatever 'length' says.
        length = 0 if link else _int_field(
            fd, b"length", f"{where}.length", 0, MAX_LENGTH, f"an integer in 0..{MAX_LENGTH}"
        )
        if pad and b"path" not in fd and b"path.utf-8" not in fd:
            path: tuple[str, ...] = (".pad", str(length))  # BEP 47 pad files need no path (libtorrent)
        else:
            path = _path(fd, where, cache)
        _path_bytes(name, path, f"{where}.path")
        if not pad and target is None:
            # BEP 47 padding files may share paths (".pad/N"); they are never written to disk.
            if path in file_at:
                raise MetainfoError(f"{where}.path: duplicate of info.files[{file_at[path]}]")
            if path in dir_at:
                raise MetainfoError(f"{where}.path: also a directory of info.files[{dir_at[path]}]")
            for k in range(1, len(path)):
                prefix = path[:k]
                if prefix in file_at:
                    raise MetainfoError(f"{where}.path: directory {_shown('/'.join(prefix))} "
                                        f"is also info.files[{file_at[prefix]}]")
                dir_at.setdefault(prefix, i)
            file_at[path] = i
        entries.append(FileEntry(path=path, length=length, offset=offset, pad=pad, symlink=target))
        offset += length
        if offset > MAX_LENGTH:
            raise MetainfoError(f"info.files: total length exceeds {MAX_LENGTH}")
    return entries, offset


def _name(info: dict[bytes, Any]) -> str:
    alt = _utf8_element(info.get(b"name.utf-8"))
    if alt is not None:
        return alt
    if b"name" not in info:
        raise MetainfoError("info.name: missing")
    return _element(info[b"name"], "info.name")


def _build(info: dict[bytes, Any], source: bytes, span: tuple[int, int], top: dict[bytes, Any]) -> Metainfo:
    """The Metainfo of ``info``, decoded from ``source[span[0]:span[1]]`` (its info bytes)."""
    if b"pieces" not in info:
        if info.get(b"meta version") == 2:  # BEP 52
            raise MetainfoError("v2-only torrents are not supported")
        raise MetainfoError("info.pieces: missing")
    name = _name(info)
    _path_bytes(name, (), "info.name")
    piece_length = _int_field(info, b"piece length", "info.piece length", 1, MAX_PIECE_LENGTH,
                              f"a positive integer <= {MAX_PIECE_LENGTH}")
    pieces = info[b"pieces"]
    if not isinstance(pieces, bytes):
        raise MetainfoError(f"info.pieces: expected a string, got {_what(pieces)}")
    if len(pieces) % HASH_LEN:
        raise MetainfoError(f"info.pieces: length {len(pieces)} is not a multiple of {HASH_LEN}")
    if b"files" in info:
        if b"length" in info:
            raise MetainfoError("info: both 'length' and 'files' present")
        entries, total = _files(info, name)
        multi = True
    else:
        total = _int_field(info, b"length", "info.length", 0, MAX_LENGTH, f"an integer in 0..{MAX_LENGTH}")
        entries = [FileEntry(path=(name,), length=total, offset=0)]
        multi = False
    if total <= 0:
        raise MetainfoError("info: total length must be positive")
    if is_hybrid(info):
        v1 = [(f.path, f.length) for f in entries if not f.pad]
        check_hybrid(info, v1, piece_length, element=_element, max_depth=MAX_PATH_DEPTH, max_length=MAX_LENGTH)
    expected = -(-total // piece_length)
    if len(pieces) // HASH_LEN != expected:
        raise MetainfoError(f"info.pieces: {len(pieces) // HASH_LEN} piece hashes, but {total} bytes in pieces "
                            f"of {piece_length} need {expected}")
    date = top.get(b"creation date")
    # Hashes are read where they lie in the info bytes; the decoded copy (1.25 MiB at 16 GiB) goes first.
    lo, hi = span
    at, n = source.find(pieces, lo, hi) - lo, len(pieces) // HASH_LEN
    if at < 0:  # never: a bencoded string is its bytes verbatim
        raise MetainfoError("info.pieces: not found verbatim in the info dict")
    pieces = info[b"pieces"] = b""
    info_bytes = source if (lo, hi) == (0, len(source)) else source[lo:hi]
    return Metainfo(
        info_hash=sha1(info_bytes).digest(),
        name=name,
        piece_length=piece_length,
        num_pieces=n,
        files=tuple(entries),
        total_length=total,
        multi_file=multi,
        private=info.get(b"private") == 1,  # BEP 27
        announce_tiers=_trackers(top),
        comment=_text(top, b"comment"),
        created_by=_text(top, b"created by"),
        creation_date=date if isinstance(date, int) else None,
        info=InfoBytes(info_bytes),
        pieces_at=at,
        url_list=_url_list(top),
    )


def _decode_file(data: bytes) -> tuple[Any, tuple[int, int] | None]:
    """Strict decoding first (fast, C); if that fails, the lenient reading other clients use for
    .torrent files: unsorted dict keys, bytes after the top-level dict.  The info-hash is taken
    from the raw bytes either way, so key order cannot change it."""
    try:
        return decode_with_span(data, b"info")
    except BencodeError:
        pass
    try:
        top, span, _end = decode_lenient_with_span(data, b"info")
    except BencodeError as e:
        raise MetainfoError(f"metainfo: not valid bencode: {e}") from None
    return top, span


def parse_metainfo(data: bytes, *, max_size: int = DEFAULT_MAX_METAINFO_BYTES) -> Metainfo:
    """Parse and validate a .torrent file's bytes.  Raises only MetainfoError.

    Lenient about encoding details other clients accept (see _decode_file); strict about
    everything that matters for safety or for the data (paths, lengths, hashes, hybrid v2 part).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MetainfoError(f"metainfo: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_size:
        raise MetainfoError(f"metainfo: {len(data)} bytes exceeds the limit of {max_size}")
    top, span = _decode_file(data)
    if not isinstance(top, dict):
        raise MetainfoError(f"metainfo: expected a dictionary at top level, got {_what(top)}")
    if b"info" not in top:
        raise MetainfoError("info: missing")
    info = top[b"info"]
    if not isinstance(info, dict):
        raise MetainfoError(f"info: expected a dictionary, got {_what(info)}")
    assert span is not None  # the scan found the same 'info' key that the decoder decoded
    return _build(info, data, span, top)


def metainfo_from_info(
    info_bytes: bytes,
    *,
    announce_tiers: Sequence[Sequence[str]] = (),
    max_size: int = DEFAULT_MAX_METAINFO_BYTES,
) -> Metainfo:
    """Build a Metainfo from a raw info dict (e.g. fetched via BEP 9) plus known trackers.

    The info-hash is SHA-1 of ``info_bytes``; callers compare it with the magnet's hash.
    Raises only MetainfoError.
    """
    if not isinstance(info_bytes, bytes | bytearray | memoryview):
        raise MetainfoError(f"info: expected bytes, got {type(info_bytes).__name__}")
    info_bytes = bytes(info_bytes)
    if len(info_bytes) > max_size:
        raise MetainfoError(f"info: {len(info_bytes)} bytes exceeds the limit of {max_size}")
    try:  # keys out of order as in a .torrent file (fuzz, 2026-12-07: minibt seeded one it could not fetch)
        info = decode_whole_lenient(info_bytes)
    except BencodeError as e:
        raise MetainfoError(f"info: not valid bencode: {e}") from None
    if not isinstance(info, dict):
        raise MetainfoError(f"info: expected a dictionary, got {_what(info)}")
    tiers = [[t.encode() for t in tier] for tier in announce_tiers]
    return _build(info, info_bytes, (0, len(info_bytes)), {b"announce-list": tiers})


def read_capped(f: BinaryIO, limit: int) -> bytes:
    """The rest of ``f``, at most ``limit + 1`` bytes (more than ``limit``: too big).  Not ``f.read(limit + 1)``,
    which allocates all of it up front (64 MiB for an 8 KiB resume file): one read of a regular file's size
    (+1 to see it grew), then 64 KiB reads while more comes (a pipe, or a size that is unknown)."""
    try:
        size = max(0, os.fstat(f.fileno()).st_size)
    except (OSError, ValueError, AttributeError):
        size = 0
    parts = [f.read(min(size, limit) + 1)]
    got = len(parts[0])
    while parts[-1] and got <= limit:
        parts.append(f.read(min(64 * 1024, limit + 1 - got)))
        got += len(parts[-1])
    parts = [p for p in parts if p]
    return parts[0] if len(parts) == 1 else b"".join(parts)


def load_metainfo(path: str, *, max_size: int = DEFAULT_MAX_METAINFO_BYTES) -> Metainfo:
    """Read and parse a .torrent file; errors (including OSError) become MetainfoError naming ``path``."""
    try:
        with open(path, "rb") as f:
            data = read_capped(f, max_size)
    except OSError as e:
        raise MetainfoError(f"{path}: {e.strerror or e}") from None
    if len(data) > max_size:
        raise MetainfoError(f"{path}: larger than the limit of {max_size} bytes")
    try:
        return parse_metainfo(data, max_size=max_size)
    except MetainfoError as e:
        raise MetainfoError(f"{path}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Creation


def auto_piece_length(total_length: int) -> int:
    """Power of two giving about 1000-2000 pieces, clamped to [16 KiB, 16 MiB]."""
    pl = MIN_CREATE_PIECE_LENGTH
    while pl < MAX_AUTO_PIECE_LENGTH and -(-total_length // pl) > AUTO_PIECE_COUNT_MAX:
        pl *= 2
    return pl


def _create_element(name: str, where: str) -> str:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise MetainfoError(f"{where}: file name is not valid UTF-8") from None
    problem = _element_problem(name)
    if problem is not None:
        raise MetainfoError(f"{where}: {problem}")
    return name


def _collect_files(root: str) -> list[tuple[tuple[str, ...], str, int]]:
    """(relative path, absolute path, size) of every regular file under ``root``, sorted."""
    found: list[tuple[tuple[str, ...], str, int]] = []

    def fail(e: OSError) -> None:
        raise e

    for dirpath, dirnames, filenames in os.walk(root, onerror=fail, followlinks=False):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        rel_parts: tuple[str, ...] = () if rel_dir == "." else tuple(rel_dir.split(os.sep))
        for fn in filenames:
            full = os.path.join(dirpath, fn)
            st = os.lstat(full)
            if not stat.S_ISREG(st.st_mode):  # skips symlinks, fifos, sockets, devices
                continue
            rel = (*rel_parts, fn)
            for part in rel:
                _create_element(part, full)
            found.append((rel, full, st.st_size))
    found.sort(key=lambda t: t[0])
    return found


def _hash_files(
    files: Sequence[tuple[str, int]],
    piece_length: int,
    total: int,
    progress: Callable[[int, int], None] | None,
) -> bytes:
    """SHA-1 of each piece across file boundaries, reading CREATE_READ_BYTES at a time."""
    digests: list[bytes] = []
    h = sha1()
    filled = 0
    done = 0
    buf = bytearray(CREATE_READ_BYTES)
    view = memoryview(buf)
    for full, length in files:
        left = length
        try:
            with open(full, "rb", buffering=0) as f:
                while left > 0:
                    n = f.readinto(view[: min(left, CREATE_READ_BYTES)])
                    if not n:
                        raise MetainfoError(f"{full}: file shrank while hashing")
                    left -= n
                    off = 0
                    while off < n:
                        take = min(n - off, piece_length - filled)
                        h.update(view[off : off + take])
                        off += take
                        filled += take
                        if filled == piece_length:
                            digests.append(h.digest())
                            h = sha1()
                            filled = 0
                    done += n
                    if progress is not None:
                        progress(done, total)
        except OSError as e:
            raise MetainfoError(f"{full}: {e.strerror or e}") from None
    if filled:
        digests.append(h.digest())
    return b"".join(digests)


def create_torrent(
    path: str,
    *,
    trackers: Sequence[str] = (),
    piece_length: int | None = None,
    private: bool = False,
    comment: str | None = None,
    created_by: str = "minibt/0.1.0",
    creation_date: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> bytes:
    """Make a v1 .torrent for a file or a directory (multi-file, sorted, symlinks skipped).

    ``creation_date`` (Unix seconds) is written only if given: this module has no clock.
    ``progress(done_bytes, total_bytes)`` is called after every read.  Raises MetainfoError.
    """
    for t in trackers:
        if not isinstance(t, str) or not t.strip():
            raise MetainfoError(f"trackers: invalid tracker URL {t!r}")
    if piece_length is not None and (
        piece_length < MIN_CREATE_PIECE_LENGTH
        or piece_length > MAX_CREATE_PIECE_LENGTH
        or piece_length & (piece_length - 1)
    ):
        raise MetainfoError(f"piece length: expected a power of two in {MIN_CREATE_PIECE_LENGTH}.."
                            f"{MAX_CREATE_PIECE_LENGTH}, got {piece_length}")
    root = os.path.abspath(path)
    name = _create_element(os.path.basename(root), root)
    try:
        st = os.stat(root)
        if stat.S_ISDIR(st.st_mode):
            listed = _collect_files(root)
            if not listed:
                raise MetainfoError(f"{path}: directory contains no files")
            files = [(full, size) for _, full, size in listed]
        elif stat.S_ISREG(st.st_mode):
            listed = []
            files = [(root, st.st_size)]
        else:
            raise MetainfoError(f"{path}: not a regular file or directory")
    except OSError as e:
        raise MetainfoError(f"{path}: {e.strerror or e}") from None
    total = sum(size for _, size in files)
    if total <= 0:
        raise MetainfoError(f"{path}: no data (all files are empty)")
    if total > MAX_LENGTH:
        raise MetainfoError(f"{path}: total size exceeds {MAX_LENGTH}")
    pl = piece_length if piece_length is not None else auto_piece_length(total)
    info: dict[str, Any] = {
        "name": name,
        "piece length": pl,
        "pieces": _hash_files(files, pl, total, progress),
    }
    if listed:
        info["files"] = [{"length": size, "path": list(rel)} for rel, _, size in listed]
    else:
        info["length"] = total
    if private:
        info["private"] = 1
    top: dict[str, Any] = {"info": info}
    if trackers:
        top["announce"] = trackers[0].strip()
        if len(trackers) > 1:
            top["announce-list"] = [[t.strip()] for t in trackers]  # BEP 12: one tier per tracker
    if comment:
        top["comment"] = comment
    if created_by:
        top["created by"] = created_by
    if creation_date is not None:
        top["creation date"] = int(creation_date)
    return encode(top)


# ---------------------------------------------------------------------------------------------
# Description


def _human(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            break
    return f"{value:.2f} {unit}"


def _date(ts: int) -> str:
    import datetime  # `minibt info` only: 0.4 MiB a download does not need

    try:
        dt = datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return str(ts)
    return dt.strftime("%Y-%m-%d %H:%M:%S UTC")


def describe(meta: Metainfo) -> str:
    """Multi-line human-readable summary, as printed by ``minibt info``."""
    lines = [
        f"name:          {meta.name}",
        f"info hash:     {meta.info_hash_hex}",
        f"size:          {_human(meta.total_length)} ({meta.total_length} bytes)",
        f"piece length:  {_human(meta.piece_length)} ({meta.piece_length} bytes)",
        f"pieces:        {meta.num_pieces}",
        f"private:       {'yes' if meta.private else 'no'}",
    ]
    if meta.announce_tiers:
        lines.append("trackers:")
        for t, tier in enumerate(meta.announce_tiers, 1):
            lines.append(f"  tier {t}: {', '.join(tier)}")
    else:
        lines.append("trackers:      none")
    if meta.url_list:
        lines.append("web seeds:")
        lines.extend(f"  {u}" for u in meta.url_list)
    if meta.comment is not None:
        lines.append(f"comment:       {meta.comment}")
    if meta.created_by is not None:
        lines.append(f"created by:    {meta.created_by}")
    if meta.creation_date is not None:
        lines.append(f"creation date: {_date(meta.creation_date)}")
    real = [f for f in meta.files if not f.pad]
    pads = len(meta.files) - len(real)
    lines.append(f"files ({len(real)}{f', plus {pads} padding' if pads else ''}):")
    for f in real[:DESCRIBE_MAX_FILES]:
        shown = "/".join((meta.name, *f.path)) if meta.multi_file else meta.name
        if f.symlink is not None:
            lines.append(f"  {shown}  (symlink to {'/'.join(f.symlink)}, not created)")
        else:
            lines.append(f"  {shown}  ({_human(f.length)})")
    if len(real) > DESCRIBE_MAX_FILES:
        lines.append(f"  ... and {len(real) - DESCRIBE_MAX_FILES} more")
    return "\n".join(lines)
