"""Received RC4 bytes deciphered off the loop thread (MSE/PE, mse.py; the loop, loop.py).

RC4 costs about 1.2 s of CPU per GiB (OpenSSL's, rc4.py), and ctypes releases the GIL while it
runs: on one more worker thread it overlaps with the loop's own work on the bytes read before.
One thread keeps every connection's reads in order.  The loop lets at most ``READS_AHEAD`` reads
of one socket and ``MAX_PENDING`` in all wait here (a bounded amount of memory, budget.py
CIPHER_BYTES), and stops reading a socket meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from minibt.workers import CallResult, Hasher

READS_AHEAD = 2  # reads of one socket at the worker: the loop handles one while the next is deciphered
MAX_PENDING = 8  # reads at the worker in all (8 x 256 KiB)

_Key = TypeVar("_Key")


class Decipher(Generic[_Key]):
    """One worker thread deciphering in place, in submission order; results come back through ``done``."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._worker: Hasher | None = None  # started with the first encrypted connection
        self.waiting: dict[int, _Key] = {}  # sockets not read because the worker was full

    def full(self) -> bool:
        return self._worker is not None and not self._worker.can_submit()

    def submit(self, key: _Key, rc4: Callable[[memoryview], object], buf: bytearray) -> None:
        if self._worker is None:
            self._worker = Hasher(threads=1, notify=self._wake, max_pending=MAX_PENDING)
        self._worker.run(lambda: rc4(memoryview(buf)), (key, buf))

    def done(self) -> list[tuple[_Key, bytearray, BaseException | None]]:
        """What the worker finished, oldest first: (key, the bytes now plaintext, an error or None)."""
        if self._worker is None:
            return []
        return [(*r.tag, r.error) for r in self._worker.results() if isinstance(r, CallResult)]  # type: ignore[misc]

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
