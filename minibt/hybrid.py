"""BEP 52 hybrid torrents: check that the v2 half is well formed and describes the v1 files.

minibt downloads the v1 half of a hybrid torrent.  A hybrid whose v2 ``file tree`` is malformed or
lists other files than the v1 ``files`` (``length``) is inconsistent: v2 peers on the same info-hash
would see another torrent, so it is refused instead of silently using the v1 half (libtorrent:
``torrent_inconsistent_files``).  ``piece layers`` lies outside the info dict (absent from magnet
metadata) and is not checked.  Pure: takes decoded values, raises MetainfoError only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from minibt.errors import MetainfoError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

V2_MIN_PIECE_LENGTH = 16 * 1024  # BEP 52: piece length is a power of two, at least 16 KiB
PIECES_ROOT_LEN = 32  # BEP 52: SHA-256 merkle root of the file
SHOWN_PATH_CHARS = 64  # hostile names are cut to this in error messages (one short line)


def _shown(path: tuple[str, ...]) -> str:
    s = "/".join(path)
    return repr(s) if len(s) <= SHOWN_PATH_CHARS else f"{s[:SHOWN_PATH_CHARS]!r}..."


def is_hybrid(info: dict[bytes, Any]) -> bool:
    """True if ``info`` carries a v2 part next to its v1 ``pieces``."""
    return b"meta version" in info or b"file tree" in info


def _leaf(node: object, where: str, max_length: int) -> int:
    """The length of one file's ``""`` entry; MetainfoError if malformed."""
    if not isinstance(node, dict):
        raise MetainfoError(f"{where}: expected a dictionary")
    attr = node.get(b"attr")
    if isinstance(attr, bytes) and b"l" in attr:
        return 0  # BEP 47 symlink: no data
    if isinstance(attr, bytes) and b"p" in attr:
        raise MetainfoError(f"{where}: pad files do not belong in a v2 file tree")
    length = node.get(b"length")
    if not isinstance(length, int) or not 0 <= length <= max_length:
        raise MetainfoError(f"{where}.length: expected an integer in 0..{max_length}")
    root = node.get(b"pieces root")
    if length > 0 and (not isinstance(root, bytes) or len(root) != PIECES_ROOT_LEN):
        raise MetainfoError(f"{where}.pieces root: expected a {PIECES_ROOT_LEN}-byte string")
    return length


def v2_files(
    tree: object, *, element: Callable[[object, str], str], max_depth: int, max_length: int
) -> list[tuple[tuple[str, ...], int]]:
    """(path, length) of every file in a BEP 52 ``file tree``, in tree order (keys sorted).

    ``element`` decodes and checks one path element (metainfo's rules).  Iterative.
    """
    if not isinstance(tree, dict) or not tree:
        raise MetainfoError("info.file tree: expected a non-empty dictionary")
    out: list[tuple[tuple[str, ...], int]] = []
    total = 0
    # (path so far, the directory dict, its keys still to visit, last one first)
    stack: list[tuple[tuple[str, ...], dict[bytes, Any], list[bytes]]] = []

    def enter(path: tuple[str, ...], node: dict[bytes, Any], where: str) -> None:
        keys = list(node)
        if any(a >= b for a, b in zip(keys, keys[1:], strict=False)):
            raise MetainfoError(f"{where}: keys not in sorted order (v2 file order depends on it)")
        stack.append((path, node, keys[::-1]))

    enter((), tree, "info.file tree")
    while stack:
        path, node, todo = stack[-1]
        if not todo:
            stack.pop()
            continue
        key = todo.pop()
        where = f"info.file tree {_shown(path)}"
        if key == b"":
            raise MetainfoError(f"{where}: a file entry inside a directory that has other entries")
        name = element(key, f"{where} key")
        child = node[key]
        sub = (*path, name)
        if not isinstance(child, dict) or not child:
            raise MetainfoError(f"info.file tree {_shown(sub)}: expected a non-empty dictionary")
        if b"" in child:
            if len(child) != 1:
                raise MetainfoError(f"info.file tree {_shown(sub)}: a file that is also a directory")
            length = _leaf(child[b""], f"info.file tree {_shown(sub)}", max_length)
            total += length
            if total > max_length:
                raise MetainfoError(f"info.file tree: total length exceeds {max_length}")
            out.append((sub, length))
        else:
            if len(sub) >= max_depth:
                raise MetainfoError(f"info.file tree: deeper than {max_depth} directories")
            enter(sub, child, f"info.file tree {_shown(sub)}")
    return out


def check_hybrid(
    info: dict[bytes, Any],
    v1_files: Sequence[tuple[tuple[str, ...], int]],
    piece_length: int,
    *,
    element: Callable[[object, str], str],
    max_depth: int,
    max_length: int,
) -> None:
    """Refuse a hybrid whose v2 part is malformed or disagrees with ``v1_files``.

    ``v1_files``: (path, length) of every v1 file that is not a BEP 47 pad file, in order; for a
    single-file torrent ``((name,), length)``.
    """
    version = info.get(b"meta version")
    if version != 2:
        raise MetainfoError(f"info.meta version: expected 2 in a hybrid torrent, got {version!r}")
    if piece_length < V2_MIN_PIECE_LENGTH or piece_length & (piece_length - 1):
        raise MetainfoError(
            f"info.piece length: {piece_length} is not a power of two >= {V2_MIN_PIECE_LENGTH} (BEP 52 hybrid)"
        )
    if b"file tree" not in info:
        raise MetainfoError("info.file tree: missing in a hybrid torrent")
    v2 = v2_files(info[b"file tree"], element=element, max_depth=max_depth, max_length=max_length)
    if len(v2) != len(v1_files):
        raise MetainfoError(
            f"hybrid torrent is inconsistent: {len(v1_files)} v1 files but {len(v2)} in the v2 file tree"
        )
    for i, ((p1, n1), (p2, n2)) in enumerate(zip(v1_files, v2, strict=True)):
        if p1 != p2 or n1 != n2:
            raise MetainfoError(
                f"hybrid torrent is inconsistent: v1 file {i} is {_shown(p1)} ({n1} bytes), "
                f"the v2 file tree has {_shown(p2)} ({n2} bytes)"
            )
