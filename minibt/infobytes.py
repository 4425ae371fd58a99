"""A torrent's info dict bytes: in memory, or spilled to an unnamed file (issue 15: memory that stays flat).

The info dict of a big torrent is mostly its piece hashes, 20 bytes a piece: 1.25 MiB for 16 GiB in
256 KiB pieces.  They are held for the whole run but read 20 bytes at a time (one piece to verify) or
16 KiB at a time (a peer fetching the metadata, BEP 9).  From SPILL_MIN_BYTES up, :meth:`InfoBytes.spill`
moves them into a file opened with ``O_TMPFILE`` (Linux 3.11 and later): the file has no name, so
nothing else can open or change it and nothing is left behind after a crash or a kill; its pages are
page cache, which the kernel writes back and drops under memory pressure, instead of anonymous memory
that a Pi without swap can never give back.  Where the file system has no ``O_TMPFILE`` (vfat, exFAT)
or the directory is missing or read-only, the bytes stay in memory: spilling is never required.  On a
tmpfs the file is RAM all the same (shared memory, outside the process's RSS): no gain, and no loss.
"""

from __future__ import annotations

import io
import os

from minibt.errors import StorageError

SPILL_MIN_BYTES = 256 * 1024  # minibt: about 13000 pieces (3.2 GiB in 256 KiB pieces); smaller stay in memory
_O_TMPFILE = getattr(os, "O_TMPFILE", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_WHERE = "<info dict spilled to an unnamed file>"


class InfoBytes:
    """Read-only bytes of an info dict: ``len()``, ``[a:b]`` (bytes), :meth:`read` and ``bytes()``.

    Reading spilled bytes may raise :class:`StorageError` (an I/O error of the file system holding them).
    """

    __slots__ = ("_data", "_file", "_len")

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data
        self._file: io.FileIO | None = None
        self._len = len(data)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, s: slice) -> bytes:
        if not isinstance(s, slice):
            raise TypeError("InfoBytes is read by slices")
        start, stop, step = s.indices(self._len)
        if step != 1:
            raise ValueError("InfoBytes slices have no step")
        return self.read(start, stop - start)

    def __bytes__(self) -> bytes:
        return self._data if self._data is not None else self.read(0, self._len)

    def __repr__(self) -> str:
        return f"InfoBytes({self._len} bytes{', spilled' if self.spilled else ''})"

    @property
    def spilled(self) -> bool:
        return self._data is None

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (fewer only past the end, like a slice)."""
        length = max(0, min(length, self._len - offset))
        data = self._data
        if data is not None:
            return data[offset : offset + length]
        assert self._file is not None
        try:
            got = os.pread(self._file.fileno(), length, offset)
        except OSError as e:
            raise StorageError("read", _WHERE, e) from e
        if len(got) != length:
            raise StorageError("read", _WHERE, OSError(0, f"short read: {len(got)} of {length} bytes at {offset}"))
        return got

    def spill(self, directory: str) -> bool:
        """Move the bytes into an unnamed file in ``directory`` if they are SPILL_MIN_BYTES or more.

        True if they are (now or already) in a file; False if they stay in memory (small, or the file
        system cannot hold an unnamed file there).  Never raises for a file-system reason."""
        data = self._data
        if data is None:
            return True
        if self._len < SPILL_MIN_BYTES or not _O_TMPFILE:
            return False
        try:
            fd = os.open(directory, _O_TMPFILE | os.O_RDWR | _O_CLOEXEC, 0o600)
        except OSError:  # EOPNOTSUPP, EISDIR (kernels without O_TMPFILE), ENOENT, EACCES, EROFS ...
            return False
        f = io.FileIO(fd, "r+", closefd=True)  # closes the descriptor when this object goes
        try:
            view = memoryview(data)
            pos = 0
            while pos < self._len:
                n = os.write(fd, view[pos:])
                if n <= 0:
                    raise OSError(0, "write wrote nothing")
                pos += n
        except OSError:  # ENOSPC, EIO, ...: keep the bytes in memory
            f.close()
            return False
        self._file, self._data = f, None
        return True
