"""A scriptable hostile BitTorrent peer for the hostile-input tests (test code: blocking sockets + threads).

``EvilPeer`` either listens (``listen()``: minibt dials it) or dials (``dial(addr)``), always from its
own loopback address (127.0.0.2 by default, PROTOCOL.md 7.11: banning it must not ban the honest peers
on 127.0.0.1).  It does a handshake with configurable reserved bits, plays a seed (full bitfield or
have_all, then unchoke) or a leecher (interested), and then misbehaves in the chosen ``Mode``.  Every
connection is logged in a ``ConnRecord``: when the handshake completed, what arrived, and whether and
when minibt closed the connection (EOF or reset) rather than the evil peer itself.

The wire encoding here is written independently of ``minibt.wire`` on purpose, so a symmetric bug in
minibt's codec can't hide.  Mode.HONEST serves correct data: a control that shows the peer's framing
works, so a test's "minibt closed it" really comes from the misbehaviour.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import bencode2  # an independent codec (not minibt's) for the BEP 10 / BEP 9 dictionaries

PSTR = b"\x13BitTorrent protocol"  # BEP 3
HANDSHAKE_LEN = 68  # BEP 3: 1 + 19 + 8 + 20 + 20
BLOCK_LEN = 16384  # BEP 3
FAST_BIT = (7, 0x04)  # BEP 6: reserved[7] & 0x04
EXT_BIT = (5, 0x10)  # BEP 10: reserved[5] & 0x10
MAX_FRAME = 2 * 1024 * 1024  # what this peer accepts from minibt before calling minibt broken

# Message ids (BEP 3, BEP 6).
CHOKE, UNCHOKE, INTERESTED, NOT_INTERESTED, HAVE, BITFIELD, REQUEST, PIECE, CANCEL = range(9)
EXTENDED = 20  # BEP 10
UT_METADATA_ID = 3  # our local ut_metadata id in the BEP 10 handshake
HAVE_ALL, HAVE_NONE, REJECT, ALLOWED_FAST = 0x0E, 0x0F, 0x10, 0x11
NAMES = {0: "choke", 1: "unchoke", 2: "interested", 3: "not_interested", 4: "have", 5: "bitfield",
         6: "request", 7: "piece", 8: "cancel", 9: "port", 0x0D: "suggest", 0x0E: "have_all",
         0x0F: "have_none", 0x10: "reject", 0x11: "allowed_fast", 20: "extended"}

TCP_CLOSE, TCP_CLOSE_WAIT = 7, 8  # Linux include/net/tcp_states.h
IO_POLL_S = 0.1  # socket timeout: how often blocking calls look at the stop flag


class Mode(enum.Enum):
    HONEST = "honest"  # control: correct data, no misbehaviour
    GARBAGE = "garbage"  # (a) random bytes after the handshake
    HUGE_LENGTH = "huge_length"  # (b) a length prefix of 2**31
    HUGE_PIECE = "huge_piece"  # (b) a piece message carrying 1 MiB
    BAD_HAVE = "bad_have"  # (c) have index == num_pieces
    BAD_REQUEST = "bad_request"  # (c) request index == num_pieces
    BAD_PIECE = "bad_piece"  # (c) unsolicited piece index == num_pieces
    LIAR = "liar"  # (d) answers requests with one byte flipped in every block
    SPARE_BITS = "spare_bits"  # (e) bitfield with the spare bits set
    FAST_NOT_NEGOTIATED = "fast_not_negotiated"  # (f) have_all/have_none without the fast bit
    REQUEST_FLOOD = "request_flood"  # (g) thousands of requests once unchoked, never reading the answers
    REQUEST_FLOOD_CHOKED = "request_flood_choked"  # (g) never interested: requests while choked, rejects unread
    HUGE_REQUEST = "huge_request"  # (b) a request for a 1 MiB block (BEP 3: close on requests > 16 KiB)
    BAD_PSTR = "bad_pstr"  # (h) handshake with the wrong protocol string
    CORRUPT_METADATA = "corrupt_metadata"  # (issue 4) ut_metadata pieces with one byte flipped
    WRONG_INFO_HASH = "wrong_info_hash"  # (h) handshake for another torrent
    EXT_HANDSHAKE_SEGMENT = "ext_handshake_segment"  # (issue 9) a valid first message and a non-bencode
    # BEP 10 handshake in the same segment: once killed the process (BufferError)


class _Closed(Exception):
    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.how = how


@dataclass
class ConnRecord:
    """One connection of the evil peer, as seen from its side."""

    remote: tuple[str, int]
    outgoing: bool
    opened_at: float
    handshake_at: float | None = None  # minibt's full handshake arrived
    remote_reserved: bytes = b""
    misbehaved_at: float | None = None  # the hostile bytes were (at least partly) sent
    closed_at: float | None = None
    how: str = ""  # "eof" / "reset" (minibt closed it), "local" (we stopped), "error: ..." ; "" = open
    received: collections.Counter[str] = field(default_factory=collections.Counter)
    blocks_sent: int = 0
    requests_sent: int = 0
    remote_ut_metadata: int = 0  # minibt's ut_metadata id from its BEP 10 handshake
    metadata_pieces_sent: int = 0

    @property
    def closed_by_remote(self) -> bool:
        return self.how in ("eof", "reset")

    @property
    def seconds_to_close(self) -> float | None:
        """From the misbehaviour (or the connection start) to minibt's close."""
        if self.closed_at is None or not self.closed_by_remote:
            return None
        return self.closed_at - (self.misbehaved_at or self.opened_at)


def _set_bit(reserved: bytearray, bit: tuple[int, int]) -> None:
    reserved[bit[0]] |= bit[1]


def has_bit(reserved: bytes, bit: tuple[int, int]) -> bool:
    return len(reserved) == 8 and bool(reserved[bit[0]] & bit[1])


def msg(mid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">IB", 1 + len(payload), mid) + payload


def request_msg(index: int, begin: int, length: int) -> bytes:
    return msg(REQUEST, struct.pack(">III", index, begin, length))


class EvilPeer:
    """A hostile peer for one torrent.  Threads are daemons and stop() joins them."""

    def __init__(
        self,
        *,
        info_hash: bytes,
        num_pieces: int,
        piece_length: int,
        total_length: int,
        mode: Mode,
        payload: bytes | None = None,
        host: str = "127.0.0.2",
        role: str = "seed",
        fast: bool = True,
        extension: bool = False,
        seed: int = 1,
        garbage_bytes: int = 64 * 1024,
        flood_requests: int | None = None,
        unchoke_timeout_s: float = 10.0,
        info_bytes: bytes | None = None,
    ) -> None:
        """``info_bytes``: offer ut_metadata (BEP 9) with these bytes (needs ``extension``); in
        Mode.CORRUPT_METADATA every piece served has one byte flipped."""
        if role not in ("seed", "leech"):
            raise ValueError(role)
        self.info_hash = info_hash
        self.num_pieces = num_pieces
        self.piece_length = piece_length
        self.total_length = total_length
        self.mode = mode
        self.payload = payload
        self.host = host
        self.role = role
        reserved = bytearray(8)
        if fast and mode is not Mode.FAST_NOT_NEGOTIATED:
            _set_bit(reserved, FAST_BIT)
        if extension:
            _set_bit(reserved, EXT_BIT)
        self.reserved = bytes(reserved)
        self.peer_id = b"-EV0001-" + random.Random(seed).randbytes(12)
        self.rng = random.Random(seed)
        self.garbage_bytes = garbage_bytes
        if flood_requests is None:
            # Unchoked, 5000 overrun minibt's 500-request queue; choked, the 17-byte rejects must
            # overrun its outbox cap plus the kernel socket buffers (a few MiB).
            flood_requests = 400_000 if mode is Mode.REQUEST_FLOOD_CHOKED else 5000
        self.flood_requests = flood_requests
        self.unchoke_timeout_s = unchoke_timeout_s
        self.info_bytes = info_bytes
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._records: list[ConnRecord] = []
        self._threads: list[threading.Thread] = []
        self._socks: set[socket.socket] = set()
        self._listener: socket.socket | None = None

    # ------------------------------------------------------------------ public

    def listen(self, port: int = 0) -> tuple[str, int]:
        """Accept any number of connections on (host, port); returns the bound address."""
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((self.host, port))
        ls.listen(16)
        ls.settimeout(IO_POLL_S)
        self._listener = ls
        self._spawn(self._accept_loop, ls)
        addr = ls.getsockname()
        return (addr[0], addr[1])

    def dial(self, addr: tuple[str, int]) -> None:
        """Connect to ``addr`` from our own loopback address, in a thread."""
        self._spawn(self._dial, addr)

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        for t in self._threads:
            t.join(timeout=5.0)
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()

    def __enter__(self) -> EvilPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def records(self) -> list[ConnRecord]:
        with self._lock:
            return list(self._records)

    def closed_by_remote(self) -> list[ConnRecord]:
        return [r for r in self.records if r.closed_by_remote]

    def wait_for(self, pred: Callable[[list[ConnRecord]], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if pred(self.records):
                return True
            time.sleep(0.02)
        return pred(self.records)

    # ------------------------------------------------------------------ threads

    def _spawn(self, fn: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True, name=f"evil-{self.mode.value}")
        self._threads.append(t)
        t.start()

    def _accept_loop(self, ls: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                s, addr = ls.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._handle, s, (addr[0], addr[1]), False)

    def _dial(self, addr: tuple[str, int]) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.mode in (Mode.REQUEST_FLOOD, Mode.REQUEST_FLOOD_CHOKED):
            # A small receive window: minibt's answers back up into its own outbox quickly.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.bind((self.host, 0))
        s.settimeout(5.0)
        try:
            s.connect(addr)
        except OSError as e:
            rec = ConnRecord(addr, True, time.monotonic(), closed_at=time.monotonic(), how=f"error: {e}")
            with self._lock:
                self._records.append(rec)
            s.close()
            return
        self._handle(s, addr, True)

    def _handle(self, s: socket.socket, addr: tuple[str, int], outgoing: bool) -> None:
        s.settimeout(IO_POLL_S)
        rec = ConnRecord(addr, outgoing, time.monotonic())
        with self._lock:
            self._records.append(rec)
            self._socks.add(s)
        conn = _Conn(s, self._stop)
        try:
            self._script(conn, rec)
            while True:  # misbehaved (or serving): keep answering until minibt hangs up
                self._serve_one(conn, rec)
        except _Closed as c:
            rec.how = c.how
        except Exception as e:  # noqa: BLE001 - a harness bug must show up in the record, not vanish
            rec.how = f"error: {type(e).__name__}: {e}"
        finally:
            rec.closed_at = time.monotonic()
            with self._lock:
                self._socks.discard(s)
            with contextlib.suppress(OSError):
                s.close()

    # ------------------------------------------------------------------ the script

    def _handshake(self) -> bytes:
        pstr = PSTR
        info_hash = self.info_hash
        if self.mode is Mode.BAD_PSTR:
            pstr = b"\x13BitTorrent protocoX"
        elif self.mode is Mode.WRONG_INFO_HASH:
            info_hash = bytes(b ^ 0xFF for b in self.info_hash)
        return pstr + self.reserved + info_hash + self.peer_id

    def _script(self, conn: _Conn, rec: ConnRecord) -> None:
        mode = self.mode
        conn.send(self._handshake())
        if mode in (Mode.BAD_PSTR, Mode.WRONG_INFO_HASH):
            rec.misbehaved_at = time.monotonic()
            conn.drain()  # whatever minibt says (maybe its own handshake) until it hangs up
        hs = conn.recv_exact(HANDSHAKE_LEN)
        if hs[:20] != PSTR or hs[28:48] != self.info_hash:
            raise _Closed(f"error: bad handshake from minibt {hs[:48].hex()}")
        rec.handshake_at = time.monotonic()
        rec.remote_reserved = hs[20:28]
        fast = has_bit(self.reserved, FAST_BIT) and has_bit(rec.remote_reserved, FAST_BIT)
        if self.info_bytes is not None and has_bit(self.reserved, EXT_BIT) and has_bit(rec.remote_reserved, EXT_BIT):
            # BEP 10 handshake offering ut_metadata (BEP 9) under our local id
            conn.send(msg(EXTENDED, b"\0" + bencode2.bencode(
                {b"m": {b"ut_metadata": UT_METADATA_ID}, b"metadata_size": len(self.info_bytes)})))
        nbytes = (self.num_pieces + 7) // 8
        spare = nbytes * 8 - self.num_pieces
        if self.role == "seed":
            if mode is Mode.SPARE_BITS:
                first = msg(BITFIELD, b"\xff" * nbytes)
            elif mode is Mode.FAST_NOT_NEGOTIATED or fast:
                first = msg(HAVE_ALL)
            else:
                bits = bytearray(b"\xff" * nbytes)
                bits[-1] = (0xFF << spare) & 0xFF
                first = msg(BITFIELD, bytes(bits))
            conn.send(first + self._segment_tail(rec) + msg(UNCHOKE))
        else:
            first = msg(HAVE_NONE) if (fast or mode is Mode.FAST_NOT_NEGOTIATED) else b""
            first += self._segment_tail(rec)
            conn.send(first if mode is Mode.REQUEST_FLOOD_CHOKED else first + msg(INTERESTED))
        if mode is Mode.FAST_NOT_NEGOTIATED:
            rec.misbehaved_at = time.monotonic()
        n = self.num_pieces
        bad: bytes | None = None
        if mode is Mode.GARBAGE:
            bad = self.rng.randbytes(self.garbage_bytes)
        elif mode is Mode.HUGE_LENGTH:
            bad = struct.pack(">IB", 2**31, PIECE) + b"\0" * 64
        elif mode is Mode.HUGE_PIECE:
            bad = struct.pack(">IBII", 9 + (1 << 20), PIECE, 0, 0) + self.rng.randbytes(1 << 20)
        elif mode is Mode.BAD_HAVE:
            bad = msg(HAVE, struct.pack(">I", n))
        elif mode is Mode.BAD_REQUEST:
            bad = request_msg(n, 0, BLOCK_LEN)
        elif mode is Mode.HUGE_REQUEST:
            bad = request_msg(0, 0, 1 << 20)
        elif mode is Mode.BAD_PIECE:
            bad = msg(PIECE, struct.pack(">II", n, 0) + b"\x55" * BLOCK_LEN)
        if bad is not None:
            rec.misbehaved_at = time.monotonic()
            conn.send(bad)
        if mode in (Mode.REQUEST_FLOOD, Mode.REQUEST_FLOOD_CHOKED):
            self._flood(conn, rec, wait_unchoke=mode is Mode.REQUEST_FLOOD)

    def _segment_tail(self, rec: ConnRecord) -> bytes:
        """What goes in the same segment as the first message (issue 9's attack), if anything."""
        if self.mode is not Mode.EXT_HANDSHAKE_SEGMENT:
            return b""
        rec.misbehaved_at = time.monotonic()
        return msg(EXTENDED, b"\x00xyz")  # hex 00000005 14 00 78797a

    def _flood(self, conn: _Conn, rec: ConnRecord, *, wait_unchoke: bool) -> None:
        deadline = time.monotonic() + self.unchoke_timeout_s
        while wait_unchoke and time.monotonic() < deadline:
            mid, _ = self._read_msg(conn, rec, deadline)
            if mid == UNCHOKE:
                break
        else:
            if wait_unchoke:
                raise _Closed("error: never unchoked")
        blocks = [(i, b, min(BLOCK_LEN, self._piece_size(i) - b))
                  for i in range(self.num_pieces) for b in range(0, self._piece_size(i), BLOCK_LEN)]
        cycle = b"".join(request_msg(*blk) for blk in blocks)
        n = self.flood_requests
        out = (cycle * -(-n // len(blocks)))[: n * len(request_msg(0, 0, 1))]
        rec.misbehaved_at = time.monotonic()
        rec.requests_sent = n
        conn.send(out)  # and never read: the answers pile up on minibt's side
        conn.wait_closed()

    # ------------------------------------------------------------------ serving

    def _piece_size(self, index: int) -> int:
        if index == self.num_pieces - 1:
            return self.total_length - self.piece_length * (self.num_pieces - 1)
        return self.piece_length

    def _read_msg(self, conn: _Conn, rec: ConnRecord, deadline: float | None = None) -> tuple[int | None, bytes]:
        (length,) = struct.unpack(">I", conn.recv_exact(4, deadline))
        if length == 0:
            rec.received["keepalive"] += 1
            return None, b""
        if length > MAX_FRAME:
            raise _Closed(f"error: minibt sent a {length}-byte frame")
        body = conn.recv_exact(length, deadline)
        rec.received[NAMES.get(body[0], f"id{body[0]}")] += 1
        return body[0], body[1:]

    def _serve_metadata(self, conn: _Conn, rec: ConnRecord, payload: bytes) -> None:
        """BEP 9 over BEP 10: remember minibt's ut_metadata id, answer its requests."""
        if not payload or self.info_bytes is None:
            return
        ext_id, body = payload[0], payload[1:]
        if ext_id == 0:
            d = bencode2.bdecode(body)
            rec.remote_ut_metadata = int(d.get(b"m", {}).get(b"ut_metadata", 0))
            return
        if ext_id != UT_METADATA_ID or not rec.remote_ut_metadata:
            return
        d = bencode2.bdecode(body)
        if d.get(b"msg_type") != 0:
            return
        piece = int(d[b"piece"])
        data = bytearray(self.info_bytes[piece * BLOCK_LEN : (piece + 1) * BLOCK_LEN])
        if self.mode is Mode.CORRUPT_METADATA:
            data[self.rng.randrange(len(data))] ^= 0xFF
            rec.misbehaved_at = rec.misbehaved_at or time.monotonic()
        head = bencode2.bencode({b"msg_type": 1, b"piece": piece, b"total_size": len(self.info_bytes)})
        conn.send(msg(EXTENDED, bytes([rec.remote_ut_metadata]) + head + bytes(data)))
        rec.metadata_pieces_sent += 1

    def _serve_one(self, conn: _Conn, rec: ConnRecord) -> None:
        mid, payload = self._read_msg(conn, rec)
        if mid == EXTENDED:
            self._serve_metadata(conn, rec, payload)
            return
        if mid != REQUEST or self.mode not in (Mode.HONEST, Mode.LIAR) or len(payload) != 12:
            return
        index, begin, length = struct.unpack(">III", payload)
        start = index * self.piece_length + begin
        if self.payload is not None:
            block = bytearray(self.payload[start : start + length])
        else:
            block = bytearray(length)
        if self.mode is Mode.LIAR:
            block[self.rng.randrange(len(block))] ^= 0xFF
            rec.misbehaved_at = rec.misbehaved_at or time.monotonic()
        conn.send(msg(PIECE, struct.pack(">II", index, begin) + bytes(block)))
        rec.blocks_sent += 1


class _Conn:
    """Blocking socket I/O that notices the stop flag and tells EOF/reset apart."""

    def __init__(self, s: socket.socket, stop: threading.Event) -> None:
        self.s = s
        self.stop = stop
        self.buf = bytearray()

    def _recv_some(self, deadline: float | None) -> None:
        while True:
            if self.stop.is_set():
                raise _Closed("local")
            if deadline is not None and time.monotonic() >= deadline:
                raise _Closed("error: read deadline")
            try:
                data = self.s.recv(256 * 1024)
            except TimeoutError:
                continue
            except (ConnectionResetError, ConnectionAbortedError):
                raise _Closed("reset") from None
            if not data:
                raise _Closed("eof")
            self.buf += data
            return

    def recv_exact(self, n: int, deadline: float | None = None) -> bytes:
        while len(self.buf) < n:
            self._recv_some(deadline)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def drain(self) -> None:
        """Read and discard until the connection ends (raises _Closed)."""
        while True:
            self._recv_some(None)
            self.buf.clear()

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.stop.is_set():
                raise _Closed("local")
            try:
                sent = self.s.send(view)
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
                raise _Closed("reset") from None
            view = view[sent:]

    def wait_closed(self) -> None:
        """Don't read (a non-reading peer), just learn when the connection dies.

        Unread data hides a FIN from recv(), so look at the kernel's TCP state (Linux TCP_INFO:
        tcpi_state is the first byte): CLOSE_WAIT means the remote sent FIN, CLOSE means a reset.
        """
        while True:
            if self.stop.is_set():
                raise _Closed("local")
            try:
                state = self.s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
                err = self.s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            except OSError:
                raise _Closed("reset") from None
            if err or state == TCP_CLOSE:
                raise _Closed("reset")
            if state == TCP_CLOSE_WAIT:
                raise _Closed("eof")
            time.sleep(IO_POLL_S / 2)
