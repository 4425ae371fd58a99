"""SHA-1 piece verification (BEP 3 "pieces") on a small thread pool: the ONLY threading module.

Jobs carry the piece data (a cache buffer) or ``(path, offset, length)`` spans read from disk
with ``os.pread`` in 1 MiB chunks; a span whose path is empty (storage.PAD_PATH) stands for
``length`` zero bytes (a BEP 47 pad file).  SHA-1 (sha1.py: nettle or OpenSSL through ctypes) drops the GIL,
so one or two workers keep up with the network.  Results go into a ``queue.SimpleQueue`` and
``notify()`` is called after each one (the loop writes a byte to a socketpair it selects on).
``run()`` executes any blocking function (e.g. a DNS lookup) on the same pool.  ``InlineHasher``
has the same interface and runs everything synchronously, for tests and single-threaded use.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .sha1 import sha1

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class HashPool(Protocol):
        """What the loop and session need from Hasher / InlineHasher."""

        def submit(self, job: HashJob) -> None: ...
        def run(self, fn: Callable[[], object], tag: object) -> None: ...
        def results(self) -> list[Result]: ...
        def has_results(self) -> bool: ...
        @property
        def pending(self) -> int: ...
        def close(self) -> None: ...

log = logging.getLogger(__name__)

SHA1_LEN = 20  # BEP 3: "pieces" is a string of 20-byte SHA-1 hashes
READ_CHUNK = 1024 * 1024  # minibt: disk read size while hashing (large sequential reads)
DEFAULT_MAX_PENDING = 64  # minibt default bound on submitted-but-undrained jobs
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)
_HAVE_PREADV = hasattr(os, "preadv")
# One piece written at a time: two workers writing one file at once spin on its inode lock in the
# kernel (measured: 5 % of a download's CPU); the waiting worker sleeps here instead.
_WRITE_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True, eq=False)
class HashJob:
    """Verify one piece: exactly one of ``data`` or ``spans`` is set."""

    piece: int
    generation: int
    expected: bytes
    data: bytes | bytearray | memoryview | None = None
    spans: tuple[tuple[str, int, int], ...] | None = None
    tag: object = None
    # (fd, offset, data) writes done by the worker when the hash matches, so the event loop never
    # blocks in pwrite (Storage.prepare_commit pins the fds until the result is handled).
    writes: tuple[tuple[int, int, memoryview], ...] | None = None

    def __post_init__(self) -> None:
        if len(self.expected) != SHA1_LEN:
            raise ValueError("expected must be a 20-byte SHA-1 digest")
        if (self.data is None) == (self.spans is None):
            raise ValueError("HashJob needs exactly one of data or spans")


@dataclass(frozen=True, slots=True)
class HashResult:
    """Outcome of a HashJob; ``error`` is set when reading the spans failed (``ok`` is then False)."""

    piece: int
    generation: int
    ok: bool
    tag: object
    error: str | None = None
    written: bool = False  # the job's writes were all done
    write_errno: int | None = None  # set when a write failed (e.g. ENOSPC); ``written`` is then False


@dataclass(frozen=True, slots=True)
class CallResult:
    """Outcome of Hasher.run(fn, tag): fn's return value, or the exception it raised."""

    tag: object
    value: object
    error: BaseException | None = None


Result = HashResult | CallResult


@dataclass(frozen=True, slots=True)
class _Call:
    """A blocking call to run on a worker (``Hasher.run``)."""

    fn: Callable[[], object]
    tag: object


def _read_into(fd: int, dest: memoryview, offset: int) -> int:
    """pread into ``dest`` without allocating (os.preadv); plain pread where preadv is missing."""
    if _HAVE_PREADV:
        return os.preadv(fd, [dest], offset)
    chunk = os.pread(fd, len(dest), offset)  # pragma: no cover - non-Linux fallback
    dest[: len(chunk)] = chunk  # pragma: no cover
    return len(chunk)  # pragma: no cover


def _hash_spans(spans: tuple[tuple[str, int, int], ...], buf: bytearray) -> tuple[bytes | None, str | None]:
    """SHA-1 of the concatenated spans, reading into ``buf``; (None, error) on I/O failure.

    ``buf`` grows to READ_CHUNK here, on the first job that reads the disk: a worker that only
    hashes downloaded pieces (whose bytes are in memory) never touches that MiB."""
    if len(buf) < READ_CHUNK:
        buf.extend(bytes(READ_CHUNK - len(buf)))
    h = sha1()
    view = memoryview(buf)
    for path, offset, length in spans:
        if not path:  # a BEP 47 pad span: zeros, hashed from the scratch buffer
            while length > 0:
                n = min(length, READ_CHUNK)
                view[:n] = bytes(n)
                h.update(view[:n])
                length -= n
            continue
        try:
            fd = os.open(path, os.O_RDONLY | _O_CLOEXEC | _O_BINARY)
        except OSError as e:
            return None, f"open {path}: {e.strerror or e}"
        try:
            while length > 0:
                want = min(length, len(buf))
                got = _read_into(fd, view[:want], offset)
                if got <= 0:
                    return None, f"read {path}: short read at offset {offset}"
                h.update(view[:got])
                offset += got
                length -= got
        except OSError as e:
            return None, f"read {path}: {e.strerror or e}"
        finally:
            os.close(fd)
    return h.digest(), None


def _execute(item: HashJob | _Call, buf: bytearray) -> Result:
    if isinstance(item, _Call):
        try:
            return CallResult(item.tag, item.fn(), None)
        except BaseException as e:  # noqa: B036 - the caller gets every failure back as data
            return CallResult(item.tag, None, e)
    if item.data is not None:
        ok = sha1(item.data).digest() == item.expected
        if not ok or item.writes is None:
            return HashResult(item.piece, item.generation, ok, item.tag)
        try:
            with _WRITE_LOCK:
                for fd, offset, chunk in item.writes:
                    while chunk:
                        n = os.pwrite(fd, chunk, offset)
                        if n <= 0:
                            raise OSError(errno.EIO, "pwrite wrote nothing")
                        chunk = chunk[n:]
                        offset += n
        except OSError as e:
            return HashResult(item.piece, item.generation, True, item.tag, f"write: {e}", False, e.errno or errno.EIO)
        return HashResult(item.piece, item.generation, True, item.tag, None, True)
    assert item.spans is not None
    digest, error = _hash_spans(item.spans, buf)
    return HashResult(item.piece, item.generation, digest == item.expected, item.tag, error)


class Hasher:
    """A fixed pool of daemon worker threads (started lazily) that hash pieces and run calls."""

    def __init__(
        self,
        threads: int = 2,
        notify: Callable[[], None] | None = None,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        self._nthreads = threads
        self._notify = notify
        self.max_pending = max_pending
        self._jobs: queue.SimpleQueue[HashJob | _Call | None] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[Result] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._submitted = 0
        self._drained = 0
        self._closed = False
        self._stop = threading.Event()

    @property
    def pending(self) -> int:
        """Jobs and calls submitted whose results have not been drained by results() yet."""
        return self._submitted - self._drained

    def can_submit(self) -> bool:
        return not self._closed and self.pending < self.max_pending

    def submit(self, job: HashJob) -> None:
        """Queue a hash job; never blocks.  RuntimeError if closed or max_pending is reached."""
        self._enqueue(job)

    def run(self, fn: Callable[[], object], tag: object) -> None:
        """Run ``fn()`` on a worker; a CallResult(tag, value, error) comes back through results()."""
        self._enqueue(_Call(fn, tag))

    def _enqueue(self, item: HashJob | _Call) -> None:
        if self._closed:
            raise RuntimeError("hasher is closed")
        if self.pending >= self.max_pending:
            raise RuntimeError(f"hasher has {self.pending} pending jobs (max {self.max_pending})")
        if not self._threads:
            self._start()
        self._submitted += 1
        self._jobs.put(item)

    def _start(self) -> None:
        for i in range(self._nthreads):
            t = threading.Thread(target=self._worker, name=f"minibt-hasher-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def _worker(self) -> None:
        buf = bytearray()  # the read buffer, grown by _hash_spans when a job reads the disk
        while True:
            item = self._jobs.get()
            if item is None or self._stop.is_set():
                return
            self._results.put(_execute(item, buf))
            # Forget the job before waiting for the next one: it holds the piece buffer, which the
            # write cache has dropped or kept as a spare by now (two idle workers kept two pieces beyond it).
            item = None
            if self._notify is not None:
                try:
                    self._notify()
                except Exception as e:  # noqa: BLE001 - a closed wakeup pipe must not kill the worker
                    log.debug("hasher notify failed: %r", e)

    def has_results(self) -> bool:
        return not self._results.empty()

    def results(self) -> list[Result]:
        """Every result available now (never blocks)."""
        out: list[Result] = []
        q = self._results
        while True:
            try:
                out.append(q.get_nowait())
            except queue.Empty:
                break
        self._drained += len(out)
        return out

    def wait_results(self, timeout_s: float) -> list[Result]:
        """Block up to ``timeout_s`` for at least one result (for tools like ``minibt verify``)."""
        try:
            first = self._results.get(timeout=timeout_s)
        except queue.Empty:
            return []
        self._drained += 1
        return [first, *self.results()]

    def close(self) -> None:
        """Stop the workers (jobs not yet started are dropped) and join them.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join()
        self._threads.clear()

    @property
    def alive_threads(self) -> int:
        return sum(t.is_alive() for t in self._threads)


class InlineHasher:
    """Hasher's interface, but every job runs synchronously inside submit()/run()."""

    def __init__(
        self, notify: Callable[[], None] | None = None, *, max_pending: int = DEFAULT_MAX_PENDING
    ) -> None:
        self._notify = notify
        self.max_pending = max_pending
        self._buf = bytearray()  # grown by _hash_spans
        self._results: list[Result] = []
        self._closed = False

    @property
    def pending(self) -> int:
        return len(self._results)

    def can_submit(self) -> bool:
        return not self._closed and self.pending < self.max_pending

    def submit(self, job: HashJob) -> None:
        self._enqueue(job)

    def run(self, fn: Callable[[], object], tag: object) -> None:
        self._enqueue(_Call(fn, tag))

    def _enqueue(self, item: HashJob | _Call) -> None:
        if self._closed:
            raise RuntimeError("hasher is closed")
        if self.pending >= self.max_pending:
            raise RuntimeError(f"hasher has {self.pending} pending jobs (max {self.max_pending})")
        self._results.append(_execute(item, self._buf))
        if self._notify is not None:
            self._notify()

    def has_results(self) -> bool:
        return bool(self._results)

    def results(self) -> list[Result]:
        out, self._results = self._results, []
        return out

    def close(self) -> None:
        self._closed = True
