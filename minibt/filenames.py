"""Portable, collision-free on-disk names for a torrent's files (pure: never touches the disk).

A torrent names its files with any UTF-8 path elements; the disk they land on may refuse some.
Before any file is created, :func:`map_paths` turns every torrent path into a disk path under one
of two rule sets, chosen by the save directory's file system (storage.py detects it):

* ``POSIX`` (ext4, btrfs, xfs, f2fs, tmpfs, ...): only the 255-byte element limit matters.
* ``WINDOWS`` (vfat, exfat, ntfs, ntfs3, fuseblk, cifs/smb3: USB drives and Samba shares): also
  the characters ``<>:"/\\|?*`` and controls become ``_``, trailing dots and spaces are dropped,
  reserved device names get a ``_`` (``CON`` -> ``CON_``, ``nul.txt`` -> ``nul_.txt``), and
  names are compared after NFC normalisation and case folding.

Any element over 255 UTF-8 bytes is shortened, keeping its extension.  Two names that would meet
in one directory (after the rules, and on ``WINDOWS`` after folding) are told apart with a stable
``~<file index>`` suffix.  The mapping is deterministic: the same torrent and rules always give the
same names, and storage records it in the resume data so later runs find the files again.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

NAME_MAX_BYTES = 255  # NAME_MAX of ext4/btrfs/xfs (bytes); <= 255 bytes also fits the 255 UTF-16 units of exFAT/NTFS
MAX_PATH_DEPTH = 256  # minibt convention: directory levels of one file (BEP 3 sets none; deeper is only an attack)
MAX_PATH_BYTES = 4096  # Linux PATH_MAX: the torrent-relative path of one file, '/'-joined, in UTF-8 bytes
KEPT_EXTENSION_BYTES = 32  # minibt convention: a longer "extension" is not one, and is cut like the rest

# Linux file system types (the third field after " - " in /proc/self/mountinfo) that follow the
# Windows naming rules.  fuseblk is ntfs-3g or exfat-fuse; cifs/smb3 are Samba/Windows shares.
WINDOWS_FS_TYPES = frozenset(
    {"vfat", "msdos", "fat", "exfat", "ntfs", "ntfs3", "fuseblk", "fuse.ntfs-3g", "fuse.exfat", "cifs", "smb3", "smbfs"}
)

# Microsoft "Naming Files, Paths, and Namespaces": characters a Windows file name may not hold.
_WINDOWS_REFUSED = '<>:"/\\|?*' + "".join(chr(c) for c in range(32))
_WINDOWS_TABLE = str.maketrans({ch: "_" for ch in _WINDOWS_REFUSED})
# ... and device names that are reserved with any extension (compared case-insensitively).
WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"COM{i}" for i in range(1, 10)}
    | {f"LPT{i}" for i in range(1, 10)}
)


class FsRules(enum.Enum):
    """Which naming rules the target file system needs."""

    POSIX = "posix"
    WINDOWS = "windows"


def rules_for_fs_type(fs_type: str) -> FsRules:
    """The rules for a Linux file-system type name as it appears in /proc/self/mountinfo."""
    return FsRules.WINDOWS if fs_type.lower() in WINDOWS_FS_TYPES else FsRules.POSIX


_MOUNTINFO_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    # proc(5): mountinfo writes space, tab, newline and backslash in paths as \ooo octal escapes.
    return _MOUNTINFO_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def fs_type_from_mountinfo(text: str, path: str) -> str | None:
    """The file-system type of the mount holding absolute ``path``: the longest mount point that
    contains it, per /proc/self/mountinfo ``text`` (proc(5) layout); None if no line matches."""
    best: tuple[int, str] | None = None
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            mount_point, fs_type = _unescape(fields[4]), fields[sep + 1]
        except (ValueError, IndexError):
            continue
        inside = mount_point == "/" or path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
        if inside and (best is None or len(mount_point) >= best[0]):
            best = (len(mount_point), fs_type)  # ">=": a later mount on the same point hides the earlier
    return None if best is None else best[1]


def _cut_utf8(s: str, max_bytes: int) -> str:
    """The longest prefix of ``s`` that is at most ``max_bytes`` in UTF-8 (never half a character)."""
    return s.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def shorten(elem: str, max_bytes: int = NAME_MAX_BYTES) -> str:
    """``elem`` cut to ``max_bytes`` UTF-8 bytes, keeping a short extension (``.mkv``) whole."""
    if len(elem.encode("utf-8")) <= max_bytes:
        return elem
    stem, dot, ext = elem.rpartition(".")
    ext_bytes = len(ext.encode("utf-8")) + 1
    if dot and stem and ext_bytes <= KEPT_EXTENSION_BYTES:
        return _cut_utf8(stem, max_bytes - ext_bytes) + "." + ext
    return _cut_utf8(elem, max_bytes)


def _windows_element(elem: str) -> str:
    s = elem.translate(_WINDOWS_TABLE).rstrip(". ")  # Windows drops trailing dots and spaces itself
    if not s:
        return "_"
    stem, dot, rest = s.partition(".")
    if stem.rstrip(" ").upper() in WINDOWS_RESERVED:
        s = stem + "_" + dot + rest
    return s


def portable_element(elem: str, rules: FsRules) -> str:
    """One path element as it may be written under ``rules`` (before collisions are resolved)."""
    if rules is FsRules.WINDOWS:
        s = shorten(_windows_element(elem))
        return s.rstrip(". ") or "_"  # cutting may have left a trailing dot or space
    return shorten(elem)


def collision_key(elem: str, rules: FsRules) -> str:
    """Names with equal keys are the same file under ``rules`` (WINDOWS: case-insensitive, NFC)."""
    if rules is FsRules.WINDOWS:
        if elem.isascii():  # NFC leaves ASCII as it is; unicodedata (0.1 MiB) only for other names
            return elem.casefold()
        import unicodedata

        return unicodedata.normalize("NFC", elem).casefold()
    return elem


def _with_tag(elem: str, tag: str) -> str:
    """``elem`` with ``tag`` before its extension, still within NAME_MAX_BYTES."""
    stem, dot, ext = elem.rpartition(".")
    if not (dot and stem) or len(ext.encode("utf-8")) + 1 > KEPT_EXTENSION_BYTES:
        stem, dot, ext = elem, "", ""
    room = NAME_MAX_BYTES - len(tag.encode("utf-8")) - len((dot + ext).encode("utf-8"))
    return _cut_utf8(stem, room) + tag + dot + ext


class _Dir:
    """The names taken in one disk directory, by collision key."""

    __slots__ = ("taken",)

    def __init__(self) -> None:
        self.taken: set[str] = set()

    def claim(self, elem: str, index: int, rules: FsRules) -> str:
        name = portable_element(elem, rules)
        n = 0
        while collision_key(name, rules) in self.taken:
            n += 1
            tag = f"~{index}" if n == 1 else f"~{index}-{n}"
            name = _with_tag(portable_element(elem, rules), tag)
        self.taken.add(collision_key(name, rules))
        return name


def map_paths(paths: Sequence[tuple[str, ...] | None], rules: FsRules) -> tuple[tuple[str, ...] | None, ...]:
    """Disk path of every file, relative to the save directory; None stays None (never on disk).

    ``paths`` are the torrent paths including the torrent's root (``(name, *path)`` for a
    multi-file torrent, ``(name,)`` for a single file), in torrent order.  Directories are mapped
    once, when the first file inside them is met, so the result depends only on the input.
    """
    top = _Dir()
    dirs: dict[tuple[str, ...], tuple[tuple[str, ...], _Dir]] = {(): ((), top)}
    out: list[tuple[str, ...] | None] = []
    for index, path in enumerate(paths):
        if path is None:
            out.append(None)
            continue
        disk_parent, parent = dirs[()]
        for k in range(1, len(path)):
            known = dirs.get(path[:k])
            if known is None:
                known = ((*disk_parent, parent.claim(path[k - 1], index, rules)), _Dir())
                dirs[path[:k]] = known
            disk_parent, parent = known
        out.append((*disk_parent, parent.claim(path[-1], index, rules)))
    return tuple(out)


def disk_element_problem(elem: str) -> str | None:
    """Why ``elem`` can never be a safe single path element on any file system, or None."""
    if elem in ("", ".", ".."):
        return f"{elem!r} is not a file name"
    if "/" in elem or "\\" in elem or "\x00" in elem:
        return "separator or NUL in a file name"
    if len(elem.encode("utf-8", errors="surrogatepass")) > NAME_MAX_BYTES:
        return f"longer than {NAME_MAX_BYTES} bytes"
    return None


@dataclass(frozen=True, slots=True)
class DiskNames:
    """Where each file of a torrent lives, relative to the save directory (None: not on disk)."""

    rules: FsRules
    paths: tuple[tuple[str, ...] | None, ...]

    @classmethod
    def plan(cls, paths: Sequence[tuple[str, ...] | None], rules: FsRules) -> DiskNames:
        """The names :func:`map_paths` gives under ``rules``."""
        return cls(rules, map_paths(paths, rules))

    def renamed(self, plain: Sequence[tuple[str, ...] | None]) -> dict[int, tuple[str, ...]]:
        """The files whose disk path differs from their torrent path (what resume data records)."""
        return {i: p for i, (p, q) in enumerate(zip(self.paths, plain, strict=True)) if p is not None and p != q}

    @classmethod
    def restore(
        cls, rules: FsRules, plain: Sequence[tuple[str, ...] | None], renamed: dict[int, tuple[str, ...]]
    ) -> DiskNames:
        """Rebuild recorded names: ``plain`` with ``renamed`` applied.

        Raises ValueError if the record does not fit (index out of range or of a file that is not
        on disk, an unsafe element, or two files on one path).
        """
        paths = list(plain)
        for i, p in renamed.items():
            if not 0 <= i < len(paths) or paths[i] is None:
                raise ValueError(f"recorded name for file {i}, which is not on disk")
            if not p or len(p) > MAX_PATH_DEPTH + 1:
                raise ValueError(f"recorded name for file {i} has {len(p)} elements")
            for elem in p:
                problem = disk_element_problem(elem)
                if problem is not None:
                    raise ValueError(f"recorded name for file {i}: {problem}")
            paths[i] = p
        keys = [tuple(collision_key(e, rules) for e in p) for p in paths if p is not None]
        if len(set(keys)) != len(keys):
            raise ValueError("two recorded names are the same file")
        return cls(rules, tuple(paths))
