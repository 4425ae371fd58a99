"""Files that survive a power cut: whole-file replacement, and fsync off the event loop.

``write_atomic`` replaces a small file (resume data, status, a saved .torrent, the DHT table) so that
after a crash it holds the old or the new content, never a mix.  ``fsync_all`` flushes the data
files a storage wrote (``Storage.begin_sync``) in a worker thread, so the event loop never waits for
the disk: on a Pi's SD card, flushing what 30 s of downloading left dirty takes seconds.
``boot_id`` tells whether the machine has restarted since a resume file was written: if not, the
data that file lists as written but not yet flushed is still in the page cache or on the disk.
"""

from __future__ import annotations

import errno
import os

from minibt.errors import StorageError

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"  # Linux: a random UUID chosen at every boot
_boot_id: list[str | None] = []


def boot_id() -> str | None:
    """This boot's id (Linux), read once; None where the system has none (then no boot is trusted)."""
    if not _boot_id:
        try:
            with open(BOOT_ID_PATH, "rb") as f:
                raw = f.read(64).strip()
            _boot_id.append(raw.decode("ascii") if raw and raw.isascii() else None)
        except OSError:
            _boot_id.append(None)
    return _boot_id[0]


def write_atomic(path: str, data: bytes, *, mode: int = 0o600, group_of_dir: bool = False) -> None:
    """Replace ``path`` with ``data``: temp file in the same dir, fsync, rename, fsync the dir.

    After a power cut the file holds the old or the new content, never a mix.  OSError on failure
    (the old file stays, the temp file is removed).  The file gets ``mode`` (not masked by the umask);
    ``group_of_dir`` gives it the directory's group when the process may (a state dir whose group
    the administrator chose).
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp: str | None = None
    try:
        fd, tmp = _create_temp(os.path.join(directory, os.path.basename(path)))
        try:
            os.fchmod(fd, mode)  # exactly ``mode``, whatever the umask
            if group_of_dir:
                _take_dir_group(fd, directory)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(directory)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _create_temp(path: str) -> tuple[int, str]:
    """``path.<random>.tmp``, created exclusively (never an existing file or a planted symlink), mode
    0600: (fd, its path).  Not ``tempfile.mkstemp``: with shutil, zlib, bz2 and lzma it costs 0.5 MiB."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = f"{path}.{os.urandom(6).hex()}.tmp"
        try:
            return os.open(tmp, flags, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", path)


def fsync_all(files: list[tuple[str, int]], *, sync: bool = True) -> None:
    """fsync then close each (path, fd) of Storage.begin_sync (in a worker); StorageError naming the
    first file that failed.  Every fd is closed either way."""
    error: StorageError | None = None
    for path, fd in files:
        try:
            if sync and error is None:
                os.fsync(fd)
        except OSError as e:
            error = StorageError("fsync", path, e)
        finally:
            os.close(fd)
    if error is not None:
        raise error


def _take_dir_group(fd: int, directory: str) -> None:
    gid = os.stat(directory).st_gid
    if os.fstat(fd).st_gid != gid:
        try:
            os.fchown(fd, -1, gid)
        except PermissionError:  # not a member of that group: the file keeps ours
            pass


def _fsync_dir(directory: str) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        dfd = os.open(directory, flags)
    except OSError:  # pragma: no cover - platforms (Windows) that cannot open directories
        return
    try:
        os.fsync(dfd)
    except OSError as e:  # pragma: no cover - some filesystems refuse fsync on directories
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(dfd)
