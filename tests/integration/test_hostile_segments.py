"""Issue 9: a scripted hostile peer against a ``minibt seed`` process, then an honest libtorrent leecher.

Each malformed message class goes on its own connection (TCP, or uTP driven by minibt's own pure
UtpMux), in the same segment as a valid message -- the shape that once killed the process -- plus
length prefixes near 2**32 and malformed uTP datagrams.  Every hostile connection comes from its own
loopback address (PROTOCOL.md 7.11), so the penalties of one never refuse the next at accept.  The
seeder must close each one, stay up, log no traceback, and afterwards serve libtorrent byte-exact.
"""

from __future__ import annotations

import random
import select
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import bencode2
import pytest
from clients import LibtorrentPeer, running
from test_hostile import MinibtProcess

from minibt.metainfo import Metainfo, create_torrent, load_metainfo
from minibt.utp import Connected, ConnectionClosed, ConnectionReset, ConnectionTimedOut, DataReceived
from minibt.utp_mux import UtpMux

pytestmark = pytest.mark.integration

SEED_HOST = "127.0.0.1"
PIECE_LEN = 32 * 1024
PAYLOAD_LEN = 2 * 1024 * 1024 + 777  # 65 pieces: 7 spare bits in the bitfield
CLOSE_WAIT_S = 10.0
PSTR = b"\x13BitTorrent protocol"
RESERVED = bytes([0, 0, 0, 0, 0, 0x10, 0, 0x04])  # BEP 10 extension bit + BEP 6 fast bit
HAVE, BITFIELD, PIECE, EXTENDED, HAVE_ALL, HAVE_NONE = 4, 5, 7, 20, 0x0E, 0x0F


def msg(mid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">IB", 1 + len(payload), mid) + payload


def ext(ext_id: int, payload: bytes) -> bytes:
    return msg(EXTENDED, bytes([ext_id]) + payload)


OUR_EXT_HS = ext(0, bencode2.bencode({b"m": {b"ut_pex": 1, b"ut_metadata": 2}, b"v": b"hostile"}))

# name -> segment builder(number of pieces, the seeder's BEP 10 'm' dict); each segment starts with
# a valid message and ends with a malformed one, sent with one send() call.
Segment = Callable[[int, dict[bytes, int]], bytes]
CASES: dict[str, Segment] = {
    "bitfield-too-long": lambda n, m: OUR_EXT_HS + msg(BITFIELD, b"\0" * ((n + 7) // 8 + 1)),
    "bitfield-spare-bits": lambda n, m: OUR_EXT_HS + msg(BITFIELD, b"\xff" * ((n + 7) // 8)),
    "have-out-of-range": lambda n, m: msg(HAVE_NONE) + msg(HAVE, struct.pack(">I", n)),
    "have-short": lambda n, m: msg(HAVE_NONE) + msg(HAVE, b"\0\0"),
    "ext-handshake-not-bencode": lambda n, m: msg(HAVE_NONE) + ext(0, b"xyz"),
    "ext-handshake-not-a-dict": lambda n, m: msg(HAVE_NONE) + ext(0, b"li1ee"),
    "ext-handshake-truncated": lambda n, m: msg(HAVE_NONE) + ext(0, b"d1:md6:ut_pexi1e"),
    "ut_pex-not-bencode": lambda n, m: msg(HAVE_NONE) + OUR_EXT_HS + ext(m[b"ut_pex"], b"zzz"),
    "ut_pex-added-not-compact": lambda n, m: msg(HAVE_NONE) + OUR_EXT_HS + ext(
        m[b"ut_pex"], bencode2.bencode({b"added": b"\x7f\0\0\x01\x1a"})),
    "ut_metadata-not-bencode": lambda n, m: msg(HAVE_NONE) + OUR_EXT_HS + ext(m[b"ut_metadata"], b"d8:msg_type"),
    "ut_metadata-list": lambda n, m: msg(HAVE_NONE) + OUR_EXT_HS + ext(m[b"ut_metadata"], b"li0ei1ee"),
    "length-2**32-1": lambda n, m: msg(HAVE_NONE) + b"\xff\xff\xff\xff",
    "piece-length-near-2**32": lambda n, m: msg(HAVE_NONE) + struct.pack(">IBII", 0xFFFFFFF0, PIECE, 0, 0),
    "extended-length-near-2**32": lambda n, m: msg(HAVE_NONE) + struct.pack(">IBB", 0xFFFFFFFE, EXTENDED, 0),
}


def make_swarm(tmp: Path) -> tuple[bytes, Path, Path, Metainfo]:
    seed_dir = tmp / "seed"
    seed_dir.mkdir()
    payload = random.Random(99).randbytes(PAYLOAD_LEN)
    (seed_dir / "payload.bin").write_bytes(payload)
    torrent = tmp / "payload.torrent"
    torrent.write_bytes(create_torrent(str(seed_dir / "payload.bin"), trackers=[], piece_length=PIECE_LEN))
    return payload, seed_dir, torrent, load_metainfo(str(torrent))


class Stream:
    """Blocking reads of BT messages from a byte source (a TCP socket or a uTP driver)."""

    def __init__(self, recv: Callable[[float], bytes | None]) -> None:
        self._recv = recv  # returns b"" at EOF, None on timeout
        self.buf = bytearray()

    def need(self, n: int, deadline: float) -> bytes | None:
        while len(self.buf) < n:
            chunk = self._recv(deadline)
            if not chunk:
                return None
            self.buf += chunk
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def ext_handshake(self, info_hash: bytes, deadline: float) -> dict[bytes, int]:
        """Read the seeder's handshake and messages up to its BEP 10 handshake; its 'm' dict."""
        hs = self.need(68, deadline)
        assert hs is not None and hs[:20] == PSTR and hs[28:48] == info_hash, hs
        while True:
            head = self.need(4, deadline)
            assert head is not None, "closed before its extension handshake"
            (length,) = struct.unpack(">I", head)
            body = self.need(length, deadline) if length else b""
            assert body is not None
            if body[:2] == bytes([EXTENDED, 0]):
                m = bencode2.bdecode(body[2:])[b"m"]
                return {k: v for k, v in m.items() if isinstance(v, int)}

    def closed(self, deadline: float) -> bool:
        """True once the other side closed (EOF or reset) before ``deadline``."""
        while time.monotonic() < deadline:
            chunk = self._recv(deadline)
            if chunk == b"":
                return True
        return False


def tcp_stream(s: socket.socket) -> Stream:
    def recv(deadline: float) -> bytes | None:
        r, _, _ = select.select([s], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
            return None
        try:
            return s.recv(65536)
        except ConnectionResetError:
            return b""

    return Stream(recv)


class UtpClient:
    """One outgoing uTP connection driven by minibt's pure UtpMux over a real UDP socket."""

    def __init__(self, src_ip: str, dst: tuple[str, int]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((src_ip, 0))
        self.dst = dst
        self.mux = UtpMux(random.Random(src_ip))
        self.conn = self.mux.connect(dst, now=time.monotonic())
        self.connected = False
        self.eof = False
        self.rx: list[bytes] = []
        self._pump(time.monotonic())

    def _pump(self, now: float) -> None:
        for out in self.mux.datagrams_to_send(now=now):
            self.sock.sendto(out.data, out.addr)

    def _events(self, evs: list[object]) -> None:
        for _key, ev in evs:  # type: ignore[misc]
            if isinstance(ev, Connected):
                self.connected = True
            elif isinstance(ev, DataReceived):
                self.rx.append(ev.data)
            elif isinstance(ev, ConnectionClosed | ConnectionReset | ConnectionTimedOut):
                self.eof = True

    def step(self, deadline: float) -> None:
        now = time.monotonic()
        dl = self.mux.next_deadline()
        wait = max(0.0, min(deadline, dl if dl is not None else deadline) - now)
        r, _, _ = select.select([self.sock], [], [], min(wait, 0.05))
        now = time.monotonic()
        if r:
            data, addr = self.sock.recvfrom(65536)
            self._events(self.mux.receive_datagram(data, (addr[0], addr[1]), now=now))
            self.mux.socket_drained(now=now)
        if dl is not None and now >= dl:
            self._events(self.mux.handle_timeout(now=now))
        self._pump(now)

    def wait_connected(self, deadline: float) -> None:
        while not self.connected and time.monotonic() < deadline:
            self.step(deadline)
        assert self.connected, "uTP connect to the seeder failed"

    def send(self, data: bytes) -> None:
        assert self.conn.send(data) == len(data)
        self._pump(time.monotonic())

    def recv(self, deadline: float) -> bytes | None:
        while not self.rx and not self.eof and time.monotonic() < deadline:
            self.step(deadline)
        if self.rx:
            return self.rx.pop(0)
        return b"" if self.eof else None

    def close(self) -> None:
        self.sock.close()


def assert_alive(seeder: MinibtProcess, what: str) -> None:
    assert seeder.returncode() is None, f"the seeder died after {what}:\n{seeder.log_tail()}"


def test_seeder_survives_every_malformed_class_then_serves_libtorrent(tmp_path: Path) -> None:
    payload, seed_dir, torrent, meta = make_swarm(tmp_path)
    seeder = MinibtProcess(
        tmp_path / "seeder",
        ["seed", str(torrent), "--dir", str(seed_dir), "--port", "0", "--bind", SEED_HOST,
         "--transport", "tcp,utp", "--state-dir", str(tmp_path / "seeder" / "state"), "--quiet", "-v"],
        wait_port=True,
    )
    n = meta.num_pieces
    not_closed: list[str] = []
    with running(seeder):
        addr = (SEED_HOST, seeder.port)
        # -- TCP: one connection per class, each from its own address
        for i, (name, segment) in enumerate(CASES.items()):
            deadline = time.monotonic() + CLOSE_WAIT_S
            with socket.create_connection(addr, timeout=5, source_address=(f"127.0.0.{20 + i}", 0)) as s:
                s.sendall(PSTR + RESERVED + meta.info_hash + b"-HP0001-" + bytes(12))
                st = tcp_stream(s)
                m = st.ext_handshake(meta.info_hash, deadline)
                s.sendall(segment(n, m))
                if not st.closed(deadline):
                    not_closed.append(f"tcp {name}")
            assert_alive(seeder, f"tcp {name}")
        # -- uTP: the segment and a near-2**32 length over a real uTP connection
        for i, name in enumerate(["ext-handshake-not-bencode", "length-2**32-1", "ut_pex-not-bencode"]):
            deadline = time.monotonic() + CLOSE_WAIT_S
            u = UtpClient(f"127.0.0.{60 + i}", addr)
            try:
                u.wait_connected(deadline)
                u.send(PSTR + RESERVED + meta.info_hash + b"-HP0001-" + bytes(12))
                st = Stream(u.recv)
                m = st.ext_handshake(meta.info_hash, deadline)
                u.send(CASES[name](n, m))
                if not st.closed(deadline):
                    not_closed.append(f"utp {name}")
            finally:
                u.close()
            assert_alive(seeder, f"utp {name}")
        # -- malformed uTP datagrams (no connection): truncated header, an extension chain running past
        # the end, an unknown type, data for a connection that does not exist, oversized garbage.
        rng = random.Random(5)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.bind(("127.0.0.70", 0))
            hdr = struct.Struct(">BBHIIIHH")
            for dgram in [
                b"\x41\x01\x00",
                hdr.pack(0x41, 1, 7, 0, 0, 65535, 1, 0) + b"\x02",
                hdr.pack(0x41, 1, 7, 0, 0, 65535, 1, 0) + b"\x00\xff" + b"\0" * 4,
                hdr.pack(0x51, 0, 7, 0, 0, 65535, 1, 0),
                hdr.pack(0x01, 0, 12345, 0, 0, 65535, 2, 1) + b"hello",
                b"\x21" + rng.randbytes(1400),
                b"\x01" + rng.randbytes(60000),
            ]:
                raw.sendto(dgram, addr)
        # The uTP side still answers: a fresh uTP connection gets the seeder's BT handshake.
        deadline = time.monotonic() + CLOSE_WAIT_S
        u = UtpClient("127.0.0.71", addr)
        try:
            u.wait_connected(deadline)
            u.send(PSTR + RESERVED + meta.info_hash + b"-HP0001-" + bytes(12))
            Stream(u.recv).ext_handshake(meta.info_hash, deadline)
        finally:
            u.close()
        assert_alive(seeder, "malformed uTP datagrams")
        assert not not_closed, f"the seeder kept these hostile connections open: {not_closed}"
        # -- an honest libtorrent leecher, byte-exact
        leech = LibtorrentPeer(tmp_path / "lt-leech", torrent_path=torrent, save_dir=tmp_path / "dl", seed=False,
                               peers=[addr])
        with running(leech):
            leech.wait_complete(60.0)
        assert_alive(seeder, "the honest download")
        log = seeder.log_tail(1 << 20)
    assert (tmp_path / "dl" / "payload.bin").read_bytes() == payload
    # Every hostile input was a protocol error with its own close reason: no fault, no traceback.
    assert "Traceback" not in log and "contained fault" not in log, log
