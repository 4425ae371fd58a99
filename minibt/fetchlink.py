"""The peer wire of a magnet fetch: after the BT handshake, before the metadata (BEP 9, BEP 10).

Pure, like wire.py: bytes in, extended messages out, an outbox drained by ``data_to_send``.  Only
BEP 10 messages are decoded; every other frame is length-checked and kept (up to a cap) so the
peer wire that takes over once the metadata arrived can replay it (magnetfetch.py, session.py).
"""

from __future__ import annotations

import struct

from minibt.errors import CloseReason, WireError
from minibt.wire_codec import EXTENDED

FETCH_MAX_MESSAGE_BYTES = 1024 * 1024 + 64  # convention (PROTOCOL.md section 5): > 1 MiB frame => disconnect
FETCH_KEEPALIVE_S = 60.0  # convention: well inside libtorrent's 120 s keep-alive expectation
# Convention: the peer's bitfield/have/choke... frames kept for the hand-over to the peer wire (a
# bitfield of a 4 GiB torrent in 16 KiB pieces is 32 KiB).  Over the cap, the peer is redialled.
FETCH_REPLAY_MAX_BYTES = 1024 * 1024
# Convention: what we queue while fetching is small (our handshake, our requests, rejects of theirs: we have no
# metadata to serve).  A peer whose bytes find more than this queued for it reads nothing and is closed; each
# of its requests queues a reject, and without a cap our memory grew as fast as it sent.
FETCH_MAX_OUTBOX_BYTES = 256 * 1024
_U32 = struct.Struct(">I")


class FetchLink:
    """The peer wire after the BT handshake while we lack the metadata: BEP 10 messages only.

    ``receive_data`` returns the extended messages as ``(ext_id, payload)``; every other message
    is skipped after its length was checked against the cap.  Raises WireError on an oversized
    frame, or when the peer's bytes find over FETCH_MAX_OUTBOX_BYTES queued for it.  Outgoing bytes collect in an outbox drained by :meth:`data_to_send`.
    """

    def __init__(self, *, now: float) -> None:
        self._buf = bytearray()
        self._out = bytearray()
        self._last_send = now
        self._replay = bytearray()  # the skipped (non-BEP 10) frames, for the hand-over
        self.replay_overflow = False

    def receive_data(self, data: bytes | memoryview) -> list[tuple[int, bytes]]:
        if len(self._out) > FETCH_MAX_OUTBOX_BYTES:
            raise WireError(CloseReason.PROTOCOL_VIOLATION,
                            f"reads nothing of what it asks for: {len(self._out)} bytes queued for it")
        self._buf += data
        buf = self._buf
        out: list[tuple[int, bytes]] = []
        pos = 0
        while len(buf) - pos >= 4:
            (n,) = _U32.unpack_from(buf, pos)
            if n > FETCH_MAX_MESSAGE_BYTES:
                raise WireError(CloseReason.MESSAGE_TOO_LARGE, f"message of {n} bytes while fetching metadata")
            if len(buf) - pos - 4 < n:
                break
            if n >= 2 and buf[pos + 4] == EXTENDED:
                out.append((buf[pos + 5], bytes(buf[pos + 6 : pos + 4 + n])))
            elif n and not self.replay_overflow:
                if len(self._replay) + 4 + n > FETCH_REPLAY_MAX_BYTES:
                    self.replay_overflow = True
                    self._replay = bytearray()
                else:
                    self._replay += buf[pos : pos + 4 + n]
            pos += 4 + n
        del buf[:pos]
        return out

    def extended(self, ext_id: int, payload: bytes, *, now: float) -> None:
        self._out += _U32.pack(2 + len(payload)) + bytes((EXTENDED, ext_id)) + payload
        self._last_send = now

    def hand_over(self) -> tuple[bytes, bytes] | None:
        """For the peer wire taking over: (our unsent bytes, the peer's skipped frames followed by
        any partial frame), or None if the skipped frames were over the cap."""
        if self.replay_overflow:
            return None
        out, replay = bytes(self._out), bytes(self._replay) + bytes(self._buf)
        self._out.clear()
        self._replay.clear()
        self._buf.clear()
        return out, replay

    def keepalive_due(self, now: float) -> bool:
        return now - self._last_send >= FETCH_KEEPALIVE_S

    def keepalive(self, *, now: float) -> None:
        self._out += bytes(4)
        self._last_send = now

    def data_to_send(self, limit: int) -> bytes:
        n = min(limit, len(self._out))
        chunk = bytes(self._out[:n])
        del self._out[:n]
        return chunk

    @property
    def wants_write(self) -> bool:
        return bool(self._out)
