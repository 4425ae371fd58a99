"""Fuzz target for a whole Session: one hostile peer against a download, a seed or a magnet link's fetch.

The other targets stop at one codec or one machine.  Here the peer's messages, mostly well formed and
in range but out of order, repeated, contradictory or lying (blocks never asked for, blocks with the wrong
bytes, bitfields after haves, rejects of nothing, ut_pex, ut_metadata and ut_holepunch messages of any
content), go through everything a real connection reaches: the session, the torrent, the picker, the
write cache and the hash results, the choker, the uploader, reputation and the extensions, with the clock
moving between reads.  For a magnet link the peer first serves the info dict (BEP 9), truthfully or not, and
the download goes on over the same connection.  The loop's part is played here: hash jobs run inline, dials
fail, closes come back as ``on_closed``, minibt's output is drained after every step.

Contract (STYLE.md section 13):

- no exception escapes a session call, and the session records no contained fault (``Session.fault``:
  an exception of ours, logged with its traceback and closed as ``INTERNAL_ERROR``);
- every message minibt sends parses as the peer's wire would parse it, and every block it serves
  (seeding, or a downloader serving what it has) holds the torrent's bytes;
- a piece minibt marks as had is on disk with the bytes its hash names (nothing unverified is accepted);
- no call over ``fuzzkit.TIME_LIMIT_S``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import struct
import tempfile
from typing import Any

from fuzzkit import U32, Target, bvalues, call, check, ext_frame, frame, mutated, register, split
from hypothesis import strategies as st
from sessionkit import LoopPart, temp_torrent

from minibt import bencode
from minibt.actions import Dial
from minibt.errors import BencodeError, RemoteProtocolError
from minibt.extension import LOCAL_UT_HOLEPUNCH_ID, LOCAL_UT_METADATA_ID, LOCAL_UT_PEX_ID
from minibt.handshake import PSTR, make_reserved
from minibt.magnet import parse_magnet
from minibt.metadata import (
    METADATA_PIECE_LEN,
    MSG_DATA,
    MSG_REQUEST,
    decode_metadata_msg,
    encode_metadata_msg,
)
from minibt.peer import PeerSource
from minibt.settings import Encryption, Mode, SessionConfig
from minibt.wire import PeerWire
from minibt.wire_codec import Cancel, Extended, Piece, Request

PLEN = 32768
BLOCK = 16384
TOTAL = 2 * PLEN + 1000  # pieces of 2, 2 and 1 blocks; the last one short
NPIECES = 3
PAYLOAD = hashlib.shake_128(b"minibt session fuzz").digest(TOTAL)
THEIR_ID = b"-XX0001-fuzzfuzzfuzz"
PEER_ADDR = ("127.0.0.2", 51413)
READ = 1 << 20  # what the driver drains from minibt's outbox per step


META, WORK = temp_torrent("minibt-fuzz-session.", "payload.bin", PAYLOAD, PLEN)
INFO = bytes(META.info)
DOWNLOAD, SEED, MAGNET = 0, 1, 2  # what the session does with the torrent (input[0] % 3; False/True are 0/1)
LIMITED = 3  # input[0] // 3 % 2 == 1: global upload and download limits (ratelimit.py), so requests wait for tokens
OUTGOING = 6  # input[0] >= 6: minibt dials the peer (it was given as a tracker's peer) instead of being dialled
LIMIT_BPS = 20 * 1024.0  # about one block a second: a second request waits


def _piece_size(i: int) -> int:
    return TOTAL - PLEN * (NPIECES - 1) if i == NPIECES - 1 else PLEN


# ------------------------------------------------------------------------------------------ messages

@st.composite
def piece_index(draw: st.DrawFn) -> int:
    """Mostly a piece of the torrent; one time in eight just past it or far out."""
    if draw(st.integers(0, 7)):
        return draw(st.integers(0, NPIECES - 1))
    return draw(st.sampled_from((NPIECES, 2**31, 2**32 - 1)))


indexes = piece_index()


@st.composite
def block_at(draw: st.DrawFn) -> tuple[int, int, int]:
    """(index, begin, length) of a real block, or near one."""
    i = draw(st.integers(0, NPIECES - 1))
    size = _piece_size(i)
    begin = draw(st.sampled_from([b for b in (0, BLOCK) if b < size]))
    length = min(BLOCK, size - begin)
    if draw(st.integers(0, 9)) == 0:  # off by a little
        begin = draw(st.sampled_from((begin + 1, begin + length, 2**32 - 1)))
        length = draw(st.sampled_from((length, length - 1, 1, BLOCK + 1)))
    return i, begin, length


@st.composite
def piece_message(draw: st.DrawFn) -> bytes:
    i, begin, length = draw(block_at())
    if i < NPIECES and 0 < length <= BLOCK and begin + length <= _piece_size(i):
        off = i * PLEN + begin
        data = PAYLOAD[off : off + length]
        if draw(st.integers(0, 3)) == 0:  # a liar: one byte flipped
            k = draw(st.integers(0, length - 1))
            data = data[:k] + bytes((data[k] ^ 0xFF,)) + data[k + 1 :]
    else:
        data = bytes(max(1, min(length, BLOCK)))
    return frame(7, struct.pack(">II", i % 2**32, begin % 2**32) + data)


def _compact(draw: st.DrawFn, v6: bool) -> bytes:
    n = draw(st.integers(0, 4))
    out = b""
    for _ in range(n):
        if v6:
            out += draw(st.sampled_from((bytes(15) + b"\x01", bytes.fromhex("fe80") + bytes(14), bytes(16),
                                         bytes.fromhex("20010db8") + bytes(12))))
        else:
            out += draw(st.sampled_from((b"\x7f\x00\x00\x03", b"\x0a\x00\x00\x01", b"\x00\x00\x00\x00",
                                         b"\xff\xff\xff\xff", b"\x7f\x00\x00\x02")))
        out += struct.pack(">H", draw(st.sampled_from((0, 1, 6881, 51413, 65535))))
    if draw(st.integers(0, 4)) == 0:
        out += draw(st.binary(max_size=5))  # a ragged tail
    return out


@st.composite
def pex_message(draw: st.DrawFn) -> bytes:
    d: dict[bytes, Any] = {}
    for key, v6 in ((b"added", False), (b"added6", True), (b"dropped", False), (b"dropped6", True)):
        if draw(st.booleans()):
            d[key] = _compact(draw, v6)
            if key.startswith(b"added") and draw(st.booleans()):
                d[key + b".f"] = draw(st.binary(max_size=6))
    if draw(st.integers(0, 5)) == 0:
        d[draw(st.sampled_from((b"added", b"dropped", b"x")))] = draw(bvalues)
    payload = bencode.encode(d)
    if draw(st.integers(0, 5)) == 0:
        payload = draw(mutated(payload))
    return ext_frame(LOCAL_UT_PEX_ID, payload)


@st.composite
def holepunch_message(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from((0, 1, 2, 3)))
    v6 = draw(st.integers(0, 4)) == 0
    addr = (draw(st.sampled_from((bytes(15) + b"\x01", bytes(16)))) if v6 else
            draw(st.sampled_from((b"\x7f\x00\x00\x01", b"\x7f\x00\x00\x02", b"\x7f\x00\x00\x03", b"\x0a\x00\x00\x05"))))
    port = draw(st.sampled_from((6881, 51413, 51413, 0)))
    body = struct.pack(">BB", kind, int(v6)) + addr + struct.pack(">H", port)
    if draw(st.integers(0, 3)):
        body += U32.pack(draw(st.sampled_from((0, 1, 2, 3, 4, 5, 2**32 - 1))))
    if draw(st.integers(0, 5)) == 0:
        body = draw(mutated(body))
    return ext_frame(LOCAL_UT_HOLEPUNCH_ID, body)


@st.composite
def metadata_message(draw: st.DrawFn) -> bytes:
    head: dict[bytes, Any] = {b"msg_type": draw(st.sampled_from((0, 0, 1, 2, 3, -1))),
                              b"piece": draw(st.sampled_from((0, 0, 1, -1, 2**31)))}
    if head[b"msg_type"] == 1:
        head[b"total_size"] = draw(st.sampled_from((len(META.info), 1, 2**40)))
    payload = bencode.encode(head) + (draw(st.binary(max_size=64)) if head[b"msg_type"] == 1 else b"")
    return ext_frame(LOCAL_UT_METADATA_ID, payload)


@st.composite
def ext_handshake(draw: st.DrawFn) -> bytes:
    m = {name: draw(st.sampled_from((1, 2, 3, 7, 0))) for name in (b"ut_pex", b"ut_metadata", b"ut_holepunch")
         if draw(st.integers(0, 3))}
    d: dict[bytes, Any] = {b"m": m}
    if draw(st.booleans()):
        d[b"reqq"] = draw(st.sampled_from((1, 2, 250, 0, 10**6)))
    if draw(st.booleans()):
        d[b"p"] = draw(st.sampled_from((6881, 0, 65535)))
    if draw(st.integers(0, 3)) == 0:
        d[b"yourip"] = draw(st.sampled_from((b"\x7f\x00\x00\x01", b"\x01\x02", bytes(16))))
    return ext_frame(0, bencode.encode(d))


@st.composite
def simple_message(draw: st.DrawFn, fast: bool) -> bytes:
    """A core message (BEP 3), or one of the fast extension's (BEP 6) when it was negotiated."""
    kind = draw(st.integers(0, 9 if fast else 5))
    if kind == 0:  # choke, unchoke, interested, not interested
        return frame(draw(st.sampled_from((0, 1, 1, 1, 2, 2, 3))))
    if kind == 1:
        return frame(4, U32.pack(draw(indexes) % 2**32))
    if kind in (2, 3):  # request, cancel
        i, begin, length = draw(block_at())
        return frame((6, 8)[kind - 2], struct.pack(">III", i % 2**32, begin % 2**32, length % 2**32))
    if kind == 4:
        return frame(9, struct.pack(">H", draw(st.sampled_from((0, 6881, 65535)))))
    if kind == 5:
        return U32.pack(0)  # keep-alive
    if kind == 6:  # have all, have none (as a first message they stand for the bitfield)
        return frame(draw(st.sampled_from((0x0E, 0x0F))))
    if kind == 7:
        i, begin, length = draw(block_at())
        return frame(0x10, struct.pack(">III", i % 2**32, begin % 2**32, length % 2**32))
    return frame(draw(st.sampled_from((0x0D, 0x11))), U32.pack(draw(indexes) % 2**32))  # suggest, allowed fast


@st.composite
def out_of_place(draw: st.DrawFn) -> bytes:
    """A message a peer may not send here: a late bitfield, a fast or extended one not negotiated."""
    return draw(st.sampled_from((frame(5, b"\xe0"), frame(5, b"\xff"), frame(0x0E), frame(0x10, bytes(12)),
                                 ext_frame(0, b"de"), ext_frame(LOCAL_UT_PEX_ID, b"de"))))


@st.composite
def request_run(draw: st.DrawFn) -> bytes:
    """Requests for real blocks, as a leecher sends them."""
    blocks = [(i, b, min(BLOCK, _piece_size(i) - b)) for i in range(NPIECES) for b in (0, BLOCK) if b < _piece_size(i)]
    picked = draw(st.lists(st.sampled_from(blocks), min_size=1, max_size=5))
    return b"".join(frame(6, struct.pack(">III", *blk)) for blk in picked)


def messages(fast: bool, ext: bool, seed: bool) -> st.SearchStrategy[bytes]:
    kinds = [simple_message(fast), simple_message(fast), simple_message(fast), piece_message(), piece_message()]
    if seed:
        kinds += [request_run(), request_run(), request_run()]
    if ext:
        kinds += [ext_handshake(), pex_message(), pex_message(), holepunch_message(), holepunch_message(),
                  metadata_message()]
    return st.one_of(*kinds)


@st.composite
def opening(draw: st.DrawFn, fast: bool, ext: bool, seed: bool, magnet: bool) -> bytes:
    """What a peer usually says first: what it has, its extensions (with the info dict's size for a
    magnet link), unchoke, interest."""
    out = b""
    have = draw(st.sampled_from(("some", "none", "nothing") if seed else ("all", "all", "some", "none", "nothing")))
    if have == "all":
        out += frame(0x0E) if fast and draw(st.booleans()) else frame(5, b"\xe0")
    elif have == "some":
        out += frame(5, draw(st.sampled_from((b"\x80", b"\x40", b"\xa0", b"\x20"))))
    elif have == "none" and fast:
        out += frame(0x0F)
    if magnet and ext and draw(st.integers(0, 5)):
        size = draw(st.sampled_from((len(INFO), len(INFO), len(INFO) + 1, 0)))
        out += ext_frame(0, bencode.encode({b"m": {b"ut_metadata": draw(st.sampled_from((2, 9))), b"ut_pex": 1},
                                       b"metadata_size": size}))
    elif ext and draw(st.integers(0, 3)):
        out += draw(ext_handshake())
    if draw(st.integers(0, 3)):
        out += frame(1)  # unchoke
    if seed or draw(st.booleans()):
        out += frame(2)  # interested
    return out


plans = st.sampled_from(((), (), (1,), (5, 13), (-1,)))


@st.composite
def steps(draw: st.DrawFn, fast: bool, ext: bool, seed: bool) -> list[Any]:
    """(0, bytes, plan): the peer's bytes, fed as the plan splits them; (1, ms): the clock moves and the
    session ticks; (2, lie): the peer answers the requests minibt sent (blocks, and pieces of the info
    dict), with one byte flipped in every answer whose bit is set in ``lie`` (the n-th answer, bit n % 8)."""
    out: list[Any] = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.integers(0, 9))
        if kind <= 4:
            msgs = draw(st.lists(messages(fast, ext, seed), min_size=1, max_size=5))
            if draw(st.integers(0, 15)) == 0:
                msgs.insert(draw(st.integers(0, len(msgs))), draw(out_of_place()))
            out.append((0, b"".join(msgs), draw(plans)))
        elif kind <= 6:
            out.append((1, draw(st.sampled_from((10, 250, 1000, 5000, 31000, 125000)))))
        else:
            out.append((2, draw(st.sampled_from((0, 0, 0, 1, 0xFF, 0x10)))))
    return out


@st.composite
def session_inputs(draw: st.DrawFn) -> tuple[int, bool, bool, list[Any]]:
    mode = draw(st.sampled_from((DOWNLOAD, DOWNLOAD, SEED, SEED, MAGNET)))
    fast = draw(st.sampled_from((True, True, False)))
    ext = draw(st.sampled_from((True, True, True, False)))
    first = (0, draw(opening(fast, ext, mode == SEED, mode == MAGNET)), draw(plans))
    variant = LIMITED if draw(st.integers(0, 3)) == 0 else 0
    variant += OUTGOING if draw(st.integers(0, 3)) == 0 else 0
    later = draw(steps(fast, ext, mode == SEED))
    if mode == MAGNET and draw(st.integers(0, 2)):  # mostly the info dict comes, so the download behind it runs
        later = [(2, draw(st.sampled_from((0, 0, 0, 1)))), (1, 10), (2, 0), (2, 0), *later]
    return mode + variant, fast, ext, [first, *later]


# ------------------------------------------------------------------------------------------ the driver


class _Driver(LoopPart):
    """The event loop's part (sessionkit.py) and the fuzzing peer's connection."""

    def __init__(self, mode: int, fast: bool, ext: bool, workdir: str) -> None:
        outgoing = mode >= OUTGOING
        limit = LIMIT_BPS if mode % OUTGOING >= LIMITED else None
        mode %= LIMITED
        config = SessionConfig(encryption=Encryption.NONE, dht=False, upload_limit_bps=limit, download_limit_bps=limit)
        super().__init__("session", config, seed=7, now=1000.0)
        self.s.set_listen("127.0.0.1", 6881)
        self.s.reserved = make_reserved(fast=True, extension=True)
        self.cid = -1
        self.workdir = workdir
        if mode == MAGNET:
            magnet = parse_magnet(f"magnet:?xt=urn:btih:{META.info_hash.hex()}")
            self.call("add_magnet", self.s.add_magnet, magnet, workdir, now=self.now)
        else:
            self.call("add_torrent", self.s.add_torrent, META, workdir, mode=Mode.SEED if mode == SEED else Mode.DOWNLOAD,
                      resume_path=None, now=self.now)
        self.actions()
        if outgoing:  # the peer, as a tracker gave it: the next tick dials it (dial() below connects)
            self.call("add_peers", self.s.add_peers, META.info_hash, [PEER_ADDR], PeerSource.TRACKER, now=self.now)
            self.call("tick", self.s.tick, now=self.now)
            self.actions()
            check(self.name, "dial", self.cid >= 0, "the peer given was not dialled")
        else:
            cid = self.call("on_incoming", self.s.on_incoming, PEER_ADDR, now=self.now)
            check(self.name, "on_incoming", cid is not None, "an incoming connection was refused")
            self.cid = cid
        self.open = True
        self.out = b""  # minibt's bytes not parsed yet
        self.seen_handshake = False
        self.requested: list[tuple[int, int, int]] = []  # minibt's requests not answered yet (answer())
        self.info_requested: list[int] = []  # pieces of the info dict minibt asked for (ut_metadata)
        self.wire = PeerWire(num_pieces=NPIECES, piece_length=PLEN, total_length=TOTAL, fast=fast, extension=ext,
                             now=self.now)

    def closed(self, cid: int) -> None:
        if cid == self.cid:
            self.open = False

    def dial(self, a: Dial) -> bool:
        if a.addr != PEER_ADDR or self.cid >= 0:
            return False
        self.cid = a.cid
        self.call("on_connected", self.s.on_connected, a.cid, now=self.now)
        return True

    def drain(self) -> None:
        """Take what minibt would send the peer and parse it as the peer would."""
        if not self.open:
            return
        data = self.call("data_to_send", self.s.data_to_send, self.cid, READ, now=self.now)
        self.out += data
        if not self.seen_handshake:
            if len(self.out) < 68:
                return
            check(self.name, "our handshake", self.out[:20] == bytes((len(PSTR),)) + PSTR, "not a BT handshake")
            self.out, self.seen_handshake = self.out[68:], True
        if not self.out:
            return
        events, err = call(self.name, "our messages", RemoteProtocolError, self.wire.receive_data, self.out, now=self.now)
        check(self.name, "our messages", err is None, f"minibt sent what a peer refuses: {err!r}")
        self.out = b""
        for ev in events:
            if isinstance(ev, Request):
                self.requested.append((ev.index, ev.begin, ev.length))
            elif isinstance(ev, Cancel):
                with contextlib.suppress(ValueError):
                    self.requested.remove((ev.index, ev.begin, ev.length))
            elif isinstance(ev, Extended):
                try:
                    msg, _ = decode_metadata_msg(ev.payload)
                except (RemoteProtocolError, BencodeError):  # another extension's message (ut_pex, ...)
                    continue
                if msg.msg_type == MSG_REQUEST and msg.piece is not None:
                    self.info_requested.append(msg.piece)
            elif isinstance(ev, Piece):
                off = ev.index * PLEN + ev.begin
                check(self.name, "served blocks", bytes(ev.data) == PAYLOAD[off : off + len(ev.data)],
                      f"served block {ev.index}/{ev.begin} holds other bytes than the torrent's")

    def feed(self, data: bytes, plan: tuple[int, ...]) -> None:
        for chunk in split(data, plan):
            if not self.open:
                return
            self.call("on_data", self.s.on_data, self.cid, memoryview(chunk), now=self.now)
            self.actions()
        self.drain()

    def answer(self, lie: int) -> None:
        """The requests minibt sent, answered in order (a byte flipped where ``lie`` says)."""
        out = b""
        for n, piece in enumerate(self.info_requested):
            data = INFO[piece * METADATA_PIECE_LEN : (piece + 1) * METADATA_PIECE_LEN]
            if lie >> (n % 8) & 1 and data:
                data = bytes((data[0] ^ 1,)) + data[1:]
            out += ext_frame(LOCAL_UT_METADATA_ID, encode_metadata_msg(MSG_DATA, piece, len(INFO), data))
        self.info_requested = []
        for n, (i, begin, length) in enumerate(self.requested):
            off = i * PLEN + begin
            data = PAYLOAD[off : off + length]
            if lie >> (n % 8) & 1:
                data = bytes((data[0] ^ 1,)) + data[1:]
            out += frame(7, struct.pack(">II", i, begin) + data)
        self.requested = []
        if out:
            self.feed(out, ())

    def tick(self, ms: int) -> None:
        self.now += ms / 1000
        self.call("tick", self.s.tick, now=self.now)
        at = self.call("rate_wake_at", self.s.rate_wake_at, now=self.now)
        if at is not None and at <= self.now:  # tokens came back: the requests that waited for them
            self.call("on_rate_refill", self.s.on_rate_refill, now=self.now)
        self.actions()
        self.drain()

    def finish(self) -> None:
        """Every piece marked as had is on disk with the torrent's bytes; then a clean stop."""
        path = os.path.join(self.workdir, META.name)
        t = self.s.torrents.get(META.info_hash)  # None while a magnet link's info dict is still missing
        for i in t.have.indexes() if t is not None else ():
            with open(path, "rb") as f:
                f.seek(i * PLEN)
                got = f.read(_piece_size(i))
            check(self.name, "verified data", got == PAYLOAD[i * PLEN : i * PLEN + _piece_size(i)],
                  f"piece {i} is marked as had but holds other bytes on disk")
        self.call("stop", self.s.stop, now=self.now)
        self.actions()


def _run_session(inp: tuple[int, bool, bool, list[Any]]) -> None:
    mode, fast, ext, steps = inp
    workdir = tempfile.mkdtemp(dir=WORK)
    try:
        if mode % LIMITED == SEED:
            with open(os.path.join(workdir, META.name), "wb") as f:
                f.write(PAYLOAD)
        d = _Driver(mode, fast, ext, workdir)
        reserved = make_reserved(fast=fast, extension=ext)
        d.feed(bytes((len(PSTR),)) + PSTR + reserved + META.info_hash + THEIR_ID, ())
        for st_ in steps:
            if st_[0] == 0:
                d.feed(st_[1], tuple(st_[2]))
            elif st_[0] == 1:
                d.tick(st_[1])
            else:
                d.answer(st_[1])
        d.finish()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


register(Target(
    "session", session_inputs(), _run_session,
    # corpus bytes: the peer's stream after the handshake, to a download, fed by the plan
    from_bytes=lambda d, plan: (DOWNLOAD, True, True, [(0, d, plan)]),
    to_bytes=lambda inp: (inp[3][0][1] if inp[0] == DOWNLOAD and inp[1] and inp[2] and len(inp[3]) == 1
                          and inp[3][0][0] == 0 and inp[3][0][2] == () else None),
))
