"""The fast-resume file format (pure codec; storage.py reads and writes the files).

A resume file records which pieces were verified, the file sizes that were on disk then, transfer
totals, and the on-disk names of files that were renamed by filenames.py (with the rule set used),
so a later run finds the same files even if the rules or the file-system detection changed.
``have`` lists only pieces whose data was flushed (fsync) before the file was written.  Pieces verified
and written since the last flush are listed apart, in ``pending``, with the id of the boot that wrote
them: a later run trusts them only in the same boot and after flushing them; otherwise it checks them.
Bencoded; versioned; decode_resume() checks every field and raises StorageError on anything else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import bencode2

from minibt.bitfield import Bitfield
from minibt.errors import StorageError
from minibt.filenames import FsRules

RESUME_VERSION = 1  # minibt resume-file format version (the "names" key is optional within it)
MAX_RESUME_BYTES = 64 * 1024 * 1024  # minibt cap: never read a bigger resume file into memory


@dataclass(frozen=True, slots=True)
class ResumeData:
    """What we need to skip a full recheck after a restart."""

    info_hash: bytes
    piece_length: int
    num_pieces: int
    have: bytes  # BEP 3 bitfield: high bit of byte 0 = piece 0
    file_sizes: tuple[int, ...]  # see disk_file_sizes()
    uploaded: int
    downloaded: int
    saved_at: float  # wall-clock seconds
    rules: FsRules | None = None  # naming rules the files were laid out with (None: before names were recorded)
    renamed: tuple[tuple[int, tuple[str, ...]], ...] = ()  # (file index, disk path) where it differs from the torrent
    pending: bytes = b""  # bitfield (or empty): verified and written, not yet flushed when this was saved
    boot_id: str | None = None  # durable.boot_id() of the boot that wrote ``pending``


def encode_resume(rd: ResumeData) -> bytes:
    """Bencode resume data (saved_at kept as its repr() so it round-trips exactly)."""
    d: dict[bytes, object] = {
        b"version": RESUME_VERSION,
        b"info_hash": rd.info_hash,
        b"piece_length": rd.piece_length,
        b"num_pieces": rd.num_pieces,
        b"have": rd.have,
        b"file_sizes": list(rd.file_sizes),
        b"uploaded": rd.uploaded,
        b"downloaded": rd.downloaded,
        b"saved_at": repr(float(rd.saved_at)).encode(),
    }
    if rd.rules is not None:
        d[b"names"] = {
            b"rules": rd.rules.value.encode(),
            b"renamed": [[i, [e.encode("utf-8") for e in p]] for i, p in rd.renamed],
        }
    if rd.pending:
        d[b"pending"] = rd.pending
        d[b"boot"] = (rd.boot_id or "").encode("ascii")
    return bytes(bencode2.bencode(d))


def _int_field(d: dict[bytes, object], key: bytes, source: str, lo: int = 0) -> int:
    v = d.get(key)
    if type(v) is not int or v < lo:
        raise StorageError(f"decode (bad {key.decode()})", source)
    return v


def decode_resume(data: bytes, source: str = "<resume data>") -> ResumeData:
    """Parse resume data; StorageError("decode (...)", source) on anything corrupt or inconsistent."""
    try:
        d = bencode2.bdecode(data)
    except Exception as e:  # noqa: BLE001 - the C decoder may raise several types; all mean corrupt
        raise StorageError(f"decode (not bencode: {e})", source) from e
    if not isinstance(d, dict):
        raise StorageError("decode (not a dict)", source)
    if d.get(b"version") != RESUME_VERSION:
        raise StorageError("decode (unknown version)", source)
    info_hash = d.get(b"info_hash")
    if not isinstance(info_hash, bytes) or len(info_hash) != 20:
        raise StorageError("decode (bad info_hash)", source)
    piece_length = _int_field(d, b"piece_length", source, 1)
    num_pieces = _int_field(d, b"num_pieces", source)
    have = d.get(b"have")
    if not isinstance(have, bytes):
        raise StorageError("decode (bad have)", source)
    try:
        Bitfield.from_bytes(num_pieces, have)
    except ValueError as e:
        raise StorageError(f"decode (bad have: {e})", source) from e
    sizes = d.get(b"file_sizes")
    if not isinstance(sizes, list) or not all(type(s) is int and s >= -1 for s in sizes):
        raise StorageError("decode (bad file_sizes)", source)
    uploaded = _int_field(d, b"uploaded", source)
    downloaded = _int_field(d, b"downloaded", source)
    saved_raw = d.get(b"saved_at")
    try:
        if not isinstance(saved_raw, bytes) or len(saved_raw) > 64:
            raise ValueError("not a short string")
        saved_at = float(saved_raw.decode("ascii"))
        if not math.isfinite(saved_at):
            raise ValueError("not finite")
    except (ValueError, UnicodeDecodeError) as e:
        raise StorageError(f"decode (bad saved_at: {e})", source) from e
    rules, renamed = _names(d.get(b"names"), source)
    pending, boot = d.get(b"pending", b""), d.get(b"boot", b"")
    if not isinstance(pending, bytes) or not isinstance(boot, bytes) or len(boot) > 64 or not boot.isascii():
        raise StorageError("decode (bad pending)", source)
    if pending:
        try:
            Bitfield.from_bytes(num_pieces, pending)
        except ValueError as e:
            raise StorageError(f"decode (bad pending: {e})", source) from e
    return ResumeData(
        info_hash, piece_length, num_pieces, have, tuple(sizes), uploaded, downloaded, saved_at, rules, renamed,
        pending, boot.decode("ascii") if pending and boot else None,  # a boot id says when ``pending`` was written
    )


def _names(raw: object, source: str) -> tuple[FsRules | None, tuple[tuple[int, tuple[str, ...]], ...]]:
    """The recorded naming rules and renamed files (filenames.DiskNames.restore checks them further)."""
    if raw is None:
        return None, ()
    bad = StorageError("decode (bad names)", source)
    if not isinstance(raw, dict) or not isinstance(raw.get(b"rules"), bytes):
        raise bad
    try:
        rules = FsRules(raw[b"rules"].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise bad from None
    items = raw.get(b"renamed")
    if not isinstance(items, list):
        raise bad
    renamed: list[tuple[int, tuple[str, ...]]] = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 2 and type(item[0]) is int and isinstance(item[1], list)):
            raise bad
        if not all(isinstance(e, bytes) for e in item[1]):
            raise bad
        try:
            renamed.append((item[0], tuple(e.decode("utf-8") for e in item[1])))
        except UnicodeDecodeError:
            raise bad from None
    return rules, tuple(renamed)

