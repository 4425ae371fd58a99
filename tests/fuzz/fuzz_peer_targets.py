"""Fuzz targets for what peers send: bencode, handshake, wire, ut_metadata, ut_pex, uTP.

Contract for each (STYLE.md section 6): only RemoteProtocolError subclasses (BencodeError for the
bare codec) escape, nothing else; a machine is closed after such an error and refuses later input
with LocalProtocolError; no call over fuzzkit.TIME_LIMIT_S.
"""

from __future__ import annotations

import hashlib
import random
import struct
from typing import Any

from fuzzkit import (
    EDGE_U32,
    U32,
    WHOLE,
    Target,
    bvalues,
    call,
    check,
    deep,
    ext_frame,
    feed_plans,
    frame,
    mutated,
    mutated_from,
    register,
    split,
)
from hypothesis import strategies as st

from minibt import bencode, wire_codec
from minibt.errors import BencodeError, LocalProtocolError, MetainfoError, RemoteProtocolError
from minibt.extension import LOCAL_UT_METADATA_ID, apply_peer_handshake
from minibt.fetchlink import FetchLink
from minibt.handshake import (
    PSTR,
    Handshake,
    HandshakeReceived,
    InfoHashReceived,
    make_reserved,
    supports_extension,
    supports_fast,
)
from minibt.metadata import (
    METADATA_PIECE_LEN,
    MSG_DATA,
    MSG_REJECT,
    MSG_REQUEST,
    MetadataComplete,
    MetadataFetcher,
    MetadataServer,
    decode_metadata_msg,
)
from minibt.metainfo import metainfo_from_info
from minibt.peer import PeerConnection, PeerSource
from minibt.pex import PexReceiver, decode_pex
from minibt.utp import DataReceived, IncomingConnection, UtpState
from minibt.utp_codec import EXT_NONE, HEADER_STRUCT, UtpHeader, decode_packet, encode_packet
from minibt.utp_mux import UtpMux
from minibt.wire import BlocksReceived, PeerWire, RequestsReceived
from minibt.wire_codec import EXT_HANDSHAKE_MAX_DEPTH, EXT_HANDSHAKE_MAX_TOKENS

OUR_ID = b"-MB0100-fuzzfuzzfuzz"
THEIR_ID = b"-XX0001-000000000000"
INFO_HASH = hashlib.sha1(b"minibt fuzz").digest()

# ------------------------------------------------------------------------------- bencode


def _run_bencode(data: bytes) -> None:
    name = "bencode"
    value, err = call(name, "decode", BencodeError, bencode.decode, data)
    span, span_err = call(name, "dict_value_span", BencodeError, bencode.dict_value_span, data, b"info")
    if err is None:
        again, _ = call(name, "encode", (), bencode.encode, value)
        check(name, "round trip", again == data, "strict decode accepted non-canonical input")
        check(name, "span", span_err is None, f"decode ok but dict_value_span failed: {span_err}")
        if span is not None:
            check(name, "span", isinstance(value, dict) and data[span[0] : span[1]] == bencode.encode(value[b"info"]),
                  f"span {span} is not the encoded info value")


bencode_inputs = st.one_of(
    bvalues.map(bencode.encode),
    mutated_from(bvalues.map(bencode.encode)),
    mutated_from(st.builds(deep, st.sampled_from((b"l", b"d")), st.integers(1, 3000))),
    st.integers(1, 5000).map(lambda n: b"i" + b"9" * n + b"e"),
    st.builds(lambda n, body: str(n).encode() + b":" + body, st.sampled_from(EDGE_U32 + (10**19, 10**25)), st.binary(max_size=64)),
    st.binary(max_size=512),
)

register(Target("bencode", bencode_inputs, _run_bencode, from_bytes=lambda d, plan: d, to_bytes=lambda d: d))

# ------------------------------------------------------------------------------- wire messages

# (num_pieces, piece_length, total_length)
Geometry = tuple[int, int, int]
DEFAULT_GEO: Geometry = (100, 32768, 99 * 32768 + 1000)


@st.composite
def geometries(draw: st.DrawFn) -> Geometry:
    plen = draw(st.sampled_from((16384, 32768, 1 << 18)))
    n = draw(st.sampled_from((1, 2, 7, 8, 9, 100, 2000)))
    last = draw(st.sampled_from((1, 1000, plen)))
    return (n, plen, plen * (n - 1) + last)


ext_dicts = st.fixed_dictionaries(
    {},
    optional={
        b"m": st.dictionaries(st.sampled_from((b"ut_pex", b"ut_metadata", b"ut_holepunch", b"x")),
                              st.one_of(st.integers(-2, 300), bvalues), max_size=3),
        b"metadata_size": st.one_of(st.integers(-1, 40 << 20), bvalues),
        b"reqq": st.one_of(st.integers(-1, 10**6), bvalues),
        b"p": st.one_of(st.integers(-1, 70000), bvalues),
        b"v": st.one_of(st.binary(max_size=100), bvalues),
        b"yourip": st.binary(max_size=18),
    },
)
ext_payloads = st.one_of(
    ext_dicts.map(bencode.encode),
    ext_dicts.map(bencode.encode).flatmap(mutated),
    st.sampled_from((b"xyz", b"", b"d", b"de", b"le", b"i1e", b"d1:ai1e", b"d1:b0:1:a0:e")),
    st.builds(deep, st.sampled_from((b"l", b"d")), st.integers(50, 5000)),
)


@st.composite
def wire_message(draw: st.DrawFn, geo: Geometry) -> bytes:
    n, plen, total = geo
    last_size = total - plen * (n - 1)
    index = draw(st.one_of(st.integers(0, n - 1), st.sampled_from((n, n + 1, 2**31, 2**32 - 1))))
    size = last_size if index == n - 1 else plen
    begin = draw(st.one_of(st.sampled_from((0, 16384, max(0, size - 16384), size, 2**32 - 1)), st.integers(0, size)))
    length = draw(st.sampled_from((16384, 1, max(1, size - begin), 0, 16385, 2**32 - 1)))
    kind = draw(st.integers(0, 13))
    if kind == 0:
        return frame(draw(st.sampled_from((0, 1, 2, 3, 0x0E, 0x0F))))
    if kind == 1:
        return frame(4, U32.pack(index % 2**32))
    if kind == 2:
        nbytes = (n + 7) // 8
        bits = bytearray(draw(st.binary(min_size=nbytes, max_size=nbytes)))
        if n % 8 and draw(st.booleans()):
            bits[-1] &= (0xFF << (8 - n % 8)) & 0xFF  # spare bits zero (valid)
        return frame(5, bytes(bits))
    if kind in (3, 4, 5):
        mid = (6, 8, 0x10)[kind - 3]
        return frame(mid, struct.pack(">III", index % 2**32, begin % 2**32, length % 2**32))
    if kind == 6:
        blen = draw(st.sampled_from((1, 100, 16384, min(16384, max(1, size - begin)))))
        return frame(7, struct.pack(">II", index % 2**32, begin % 2**32) + bytes(blen))
    if kind == 7:
        return frame(9, struct.pack(">H", draw(st.integers(0, 0xFFFF))))
    if kind in (8, 9):
        return frame(draw(st.sampled_from((0x0D, 0x11))), U32.pack(index % 2**32))
    if kind == 10:
        return frame(20, b"\x00" + draw(ext_payloads))
    if kind == 11:
        return frame(20, bytes((draw(st.integers(1, 255)),)) + draw(st.binary(max_size=200)))
    if kind == 12:  # unknown ids are skipped
        return frame(draw(st.sampled_from((10, 11, 12, 21, 0x80, 0xFF))), draw(st.binary(max_size=40)))
    return U32.pack(0)  # keep-alive


@st.composite
def bad_tail(draw: st.DrawFn) -> bytes:
    """One hostile message to end a feed of valid ones with (the pattern that once killed us)."""
    return draw(st.sampled_from((
        frame(20, b"\x00xyz"),  # extended handshake that is not bencode
        frame(20, b"\x00" + deep(b"l", 2000)),
        U32.pack(0xFFFFFFFF) + b"\x14\x00",  # length prefix near 2**32
        U32.pack(0xFFFFFFFE) + b"\x07",
        U32.pack(0x100002) + b"\x14\x01",  # just over the extended cap
        frame(7, b"\x00" * 8),  # piece without a block
        frame(5, b"\xff" * 300),  # bitfield of the wrong size
        frame(20),  # extended without an id
        frame(6, b"\x00" * 11),  # request of the wrong size
    )))


@st.composite
def wire_streams(draw: st.DrawFn, geo: Geometry) -> bytes:
    msgs = draw(st.lists(wire_message(geo), max_size=12))
    stream = b"".join(msgs)
    if draw(st.booleans()):
        stream += draw(bad_tail())
    if draw(st.integers(0, 2)) == 0:
        stream = draw(mutated(stream))
    return stream


@st.composite
def wire_inputs(draw: st.DrawFn) -> tuple[Geometry, bool, bool, bytes, tuple[int, ...]]:
    geo = draw(geometries())
    fast = draw(st.sampled_from((True, True, False)))
    ext = draw(st.sampled_from((True, True, False)))
    return (geo, fast, ext, draw(wire_streams(geo)), draw(feed_plans))


def _spelled_out(events: list[Any]) -> list[Any]:
    """Runs mode's events as the plain mode gives them (one message per block or request)."""
    out: list[Any] = []
    for ev in events:
        if isinstance(ev, BlocksReceived):
            out += [wire_codec.Piece(i, b, bytes(d)) for i, b, d in ev.blocks]
        elif isinstance(ev, RequestsReceived):
            out += [wire_codec.Request(i, b, n) for i, b, n in ev.requests]
        else:
            out.append(ev)
    return out


def _feed_wire(name: str, wire: PeerWire, chunks: list[bytes], *,
               runs: bool = False) -> tuple[list[Any], BaseException | None]:
    events: list[Any] = []
    for i, chunk in enumerate(chunks):
        evs, err = call(name, "PeerWire.receive_data", RemoteProtocolError, wire.receive_data, chunk, now=float(i),
                        runs=runs)
        if err is not None:
            check(name, "closed after error", wire.closed, "a RemoteProtocolError left the wire open")
            _, again = call(name, "receive after close", LocalProtocolError, wire.receive_data, b"\x00", now=float(i))
            check(name, "closed after error", again is not None, "a closed wire accepted more input")
            return events, err
        events.extend(_spelled_out(evs) if runs else evs)
    return events, None


def _codec_frames(name: str, stream: bytes) -> None:
    """Every complete frame in the stream through the stateless codec; known ones round-trip."""
    pos = 0
    while len(stream) - pos >= 4:
        (length,) = U32.unpack_from(stream, pos)
        if pos + 4 + length > len(stream):
            break
        frame = stream[pos : pos + 4 + length]
        msg, err = call(name, "wire_codec.decode", RemoteProtocolError, wire_codec.decode, frame)
        if err is None and msg is not None:
            enc, _ = call(name, "wire_codec.encode", (), wire_codec.encode, msg)
            check(name, "codec round trip", enc == frame, f"{msg!r} re-encodes differently")
        pos += 4 + length


def _run_wire(inp: tuple[Geometry, bool, bool, bytes, tuple[int, ...]]) -> None:
    name = "wire"
    (n, plen, total), fast, ext, stream, plan = inp

    def new() -> PeerWire:
        return PeerWire(num_pieces=n, piece_length=plen, total_length=total, fast=fast, extension=ext, now=0.0)

    whole = _feed_wire(name, new(), split(stream, WHOLE))
    parts = _feed_wire(name, new(), split(stream, plan))
    check(name, "split invariance", (whole[1] is None) == (parts[1] is None),
          f"whole feed error {whole[1]!r} but split feed error {parts[1]!r}")
    if whole[1] is None:
        check(name, "split invariance", whole[0] == parts[0], "events differ between whole and split feeds")
    else:
        assert parts[1] is not None
        check(name, "split invariance", type(whole[1]) is type(parts[1]), f"{whole[1]!r} vs {parts[1]!r}")
    # The session's mode (runs of blocks and of requests): the same messages and the same error.
    runs = _feed_wire(name, new(), split(stream, plan), runs=True)
    check(name, "runs mode", (parts[1] is None) == (runs[1] is None),
          f"plain feed error {parts[1]!r} but runs feed error {runs[1]!r}")
    check(name, "runs mode", parts[0] == runs[0], "runs mode, spelled out, differs from the plain mode")
    check(name, "runs mode", str(parts[1]) == str(runs[1]), f"{parts[1]!r} vs {runs[1]!r}")
    _codec_frames(name, stream)


register(Target(
    "wire", wire_inputs(), _run_wire,
    from_bytes=lambda d, plan: (DEFAULT_GEO, True, True, d, plan),
    to_bytes=lambda inp: inp[3] if inp[0] == DEFAULT_GEO and inp[1] and inp[2] else None,
))

# ------------------------------------------------------------------------------- handshake (+ wire after it)


def handshake_bytes(reserved: bytes, info_hash: bytes = INFO_HASH, peer_id: bytes = THEIR_ID) -> bytes:
    return bytes((len(PSTR),)) + PSTR + reserved + info_hash + peer_id


@st.composite
def handshake_inputs(draw: st.DrawFn) -> tuple[bool, bytes, tuple[int, ...]]:
    reserved = draw(st.one_of(
        st.sampled_from((make_reserved(), make_reserved(fast=False), make_reserved(extension=False), bytes(8))),
        st.binary(min_size=8, max_size=8),
    ))
    ih = draw(st.sampled_from((INFO_HASH, INFO_HASH, bytes(20))))
    pid = draw(st.sampled_from((THEIR_ID, THEIR_ID, OUR_ID)))
    stream = handshake_bytes(reserved, ih, pid) + draw(wire_streams(DEFAULT_GEO))
    if draw(st.integers(0, 3)) == 0:
        stream = draw(mutated(stream))
    return (draw(st.booleans()), stream, draw(feed_plans))


def _run_handshake(inp: tuple[bool, bytes, tuple[int, ...]]) -> None:
    name = "handshake"
    outgoing, stream, plan = inp
    hs = Handshake(peer_id=OUR_ID, reserved=make_reserved(), info_hash=INFO_HASH if outgoing else None, now=0.0)
    if outgoing:
        hs.start()
    wire: PeerWire | None = None
    for i, chunk in enumerate(split(stream, plan)):
        now = float(i)
        if wire is not None:
            _, err = call(name, "PeerWire.receive_data", RemoteProtocolError, wire.receive_data, chunk, now=now)
            if err is not None:
                return
            continue
        events, err = call(name, "Handshake.receive_data", RemoteProtocolError, hs.receive_data, chunk, now=now)
        if err is not None:
            _, again = call(name, "receive after close", LocalProtocolError, hs.receive_data, b"x", now=now)
            check(name, "closed after error", again is not None, "a closed handshake accepted more input")
            return
        for ev in events:
            if isinstance(ev, InfoHashReceived) and not outgoing:
                if ev.info_hash != INFO_HASH:
                    return  # the session drops unknown torrents
                hs.accept(ev.info_hash)
            elif isinstance(ev, HandshakeReceived):
                check(name, "handshake", len(ev.reserved) == 8 and len(ev.peer_id) == 20, f"{ev!r}")
        if hs.done:
            remote = hs.remote
            assert remote is not None
            ours = make_reserved()
            wire = PeerWire(
                num_pieces=DEFAULT_GEO[0], piece_length=DEFAULT_GEO[1], total_length=DEFAULT_GEO[2],
                fast=supports_fast(ours) and supports_fast(remote.reserved),
                extension=supports_extension(ours) and supports_extension(remote.reserved), now=now,
            )
            _, err = call(name, "PeerWire.receive_data", RemoteProtocolError, wire.receive_data, hs.leftover(), now=now)
            if err is not None:
                return


register(Target(
    "handshake", handshake_inputs(), _run_handshake,
    from_bytes=lambda d, plan: (False, d, plan), to_bytes=lambda inp: None if inp[0] else inp[1],
))

# ------------------------------------------------------------------------------- ut_metadata (BEP 9) via FetchLink

META_INFO = bencode.encode({
    b"length": 40000, b"name": b"fuzz.bin", b"piece length": 16384,
    b"pieces": hashlib.sha1(b"p").digest() * 3, b"padding": b"x" * 20000,
})
META_HASH = hashlib.sha1(META_INFO).digest()
META_SIZE = len(META_INFO)


@st.composite
def metadata_message(draw: st.DrawFn) -> bytes:
    npieces = -(-META_SIZE // METADATA_PIECE_LEN)
    kind = draw(st.integers(0, 6))
    if kind == 0:  # a BEP 10 handshake offering ut_metadata
        hs = {b"m": {b"ut_metadata": draw(st.sampled_from((3, 3, 0, 256, -1)))},
              b"metadata_size": draw(st.sampled_from((META_SIZE, META_SIZE, META_SIZE + 1, 0, 2**40)))}
        return ext_frame(0, bencode.encode(hs) if draw(st.booleans()) else draw(ext_payloads))
    piece = draw(st.sampled_from((*range(npieces), *range(npieces), npieces, -1, 2**20, 2**64)))
    if kind <= 3:  # data, mostly right
        start = piece * METADATA_PIECE_LEN if 0 <= piece < npieces else 0
        body = META_INFO[start : start + METADATA_PIECE_LEN]
        if draw(st.integers(0, 3)) == 0:
            body = draw(mutated(body))
        total = draw(st.sampled_from((META_SIZE,) * 6 + (META_SIZE - 1, 0, -5, 2**40)))
        head = {b"msg_type": MSG_DATA, b"piece": piece, b"total_size": total}
        return ext_frame(LOCAL_UT_METADATA_ID, bencode.encode(head) + body)
    if kind == 4:
        head = {b"msg_type": draw(st.sampled_from((MSG_REQUEST, MSG_REJECT, 7, -1))), b"piece": piece}
        return ext_frame(LOCAL_UT_METADATA_ID, bencode.encode(head))
    if kind == 5:
        return ext_frame(LOCAL_UT_METADATA_ID, draw(mutated_from(bvalues.map(bencode.encode))))
    return draw(wire_message(DEFAULT_GEO))  # other messages are skipped (kept for the hand-over)


@st.composite
def metadata_inputs(draw: st.DrawFn) -> tuple[bool, bytes, tuple[int, ...]]:
    msgs = draw(st.lists(metadata_message(), max_size=10))
    if draw(st.booleans()):  # a peer that serves the whole info dict, among other messages
        hs = bencode.encode({b"m": {b"ut_metadata": 3}, b"metadata_size": META_SIZE})
        good = [ext_frame(LOCAL_UT_METADATA_ID, bencode.encode({b"msg_type": MSG_DATA, b"piece": i, b"total_size": META_SIZE})
                           + META_INFO[i * METADATA_PIECE_LEN : (i + 1) * METADATA_PIECE_LEN])
                for i in range(-(-META_SIZE // METADATA_PIECE_LEN))]
        msgs = [ext_frame(0, hs)] + msgs[: len(msgs) // 2] + good + msgs[len(msgs) // 2 :]
    stream = b"".join(msgs)
    if draw(st.integers(0, 3)) == 0:
        stream = draw(mutated(stream))
    return (draw(st.booleans()), stream, draw(feed_plans))


def _run_metadata(inp: tuple[bool, bytes, tuple[int, ...]]) -> None:
    """The route magnetfetch.MagnetFetch.on_data takes, driven without a session."""
    name = "metadata"
    right_hash, stream, plan = inp
    now = 0.0
    link = FetchLink(now=now)
    fetcher = MetadataFetcher(META_HASH if right_hash else INFO_HASH)
    server = MetadataServer(None)
    hs = Handshake(peer_id=OUR_ID, reserved=make_reserved(), info_hash=INFO_HASH, now=now)
    conn = PeerConnection(1, ("192.0.2.1", 6881), outgoing=True, source=PeerSource.TRACKER, handshake=hs, now=now)
    for chunk in split(stream, plan):
        now += 1.0
        msgs, err = call(name, "FetchLink.receive_data", RemoteProtocolError, link.receive_data, chunk)
        if err is not None:
            return
        for ext_id, payload in msgs:
            if ext_id == 0:
                d, bad = call(name, "ext handshake", BencodeError, bencode.decode, payload,
                              max_depth=EXT_HANDSHAKE_MAX_DEPTH, max_tokens=EXT_HANDSHAKE_MAX_TOKENS)
                if bad is not None or not isinstance(d, dict):
                    continue
                call(name, "apply_peer_handshake", (), apply_peer_handshake, conn, d)
                usable, _ = call(name, "add_peer", (), fetcher.add_peer, conn.cid,
                                 ut_metadata=conn.ext_ids.get("ut_metadata"), metadata_size=d.get(b"metadata_size"))
                if usable:
                    call(name, "next_requests", (), fetcher.next_requests, conn.cid, now=now)
                continue
            if ext_id != LOCAL_UT_METADATA_ID:
                continue
            res, err = call(name, "decode_metadata_msg", RemoteProtocolError, decode_metadata_msg, payload)
            if err is not None:
                return
            msg, data = res
            if msg.piece is None:
                continue
            if msg.msg_type == MSG_REQUEST:
                call(name, "server.on_request", (), server.on_request, conn.cid, msg.piece, now=now)
            elif msg.msg_type == MSG_REJECT:
                call(name, "on_reject", (), fetcher.on_reject, conn.cid, msg.piece, now=now)
            elif msg.msg_type == MSG_DATA and msg.total_size is not None:
                events, err = call(name, "on_data", RemoteProtocolError, fetcher.on_data, conn.cid, msg.piece,
                                   msg.total_size, data, now=now)
                if err is not None:
                    return
                for ev in events:
                    if isinstance(ev, MetadataComplete):
                        call(name, "metainfo_from_info", MetainfoError, metainfo_from_info, ev.info_bytes)
                call(name, "next_requests", (), fetcher.next_requests, conn.cid, now=now)
        if msgs:
            call(name, "handle_timeout", (), fetcher.handle_timeout, now=now + 60.0)
    call(name, "hand_over", (), link.hand_over)


register(Target(
    "metadata", metadata_inputs(), _run_metadata,
    from_bytes=lambda d, plan: (True, d, plan), to_bytes=lambda inp: inp[1] if inp[0] else None,
))

# ------------------------------------------------------------------------------- ut_pex (BEP 11)

v4_entries = st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 65535)), max_size=60)


@st.composite
def pex_payload(draw: st.DrawFn) -> bytes:
    def compact(entries: list[tuple[int, int, int]], v6: bool) -> bytes:
        if v6:
            return b"".join(bytes(14) + bytes((a, b)) + struct.pack(">H", p) for a, b, p in entries)
        return b"".join(bytes((10, 0, a, b)) + struct.pack(">H", p) for a, b, p in entries)

    d: dict[bytes, Any] = {}
    for key, v6 in ((b"added", False), (b"added6", True), (b"dropped", False), (b"dropped6", True)):
        if draw(st.booleans()):
            entries = draw(v4_entries)
            d[key] = compact(entries, v6)
            if not key.startswith(b"dropped") and draw(st.booleans()):
                d[key + b".f"] = draw(st.one_of(st.binary(min_size=len(entries), max_size=len(entries)), bvalues))
    if d and draw(st.integers(0, 5)) == 0:  # one field of the wrong type or length
        key = draw(st.sampled_from(sorted(d)))
        d[key] = draw(st.one_of(bvalues, st.binary(max_size=7)))
    if draw(st.integers(0, 4)) == 0:
        d[draw(st.binary(max_size=8))] = draw(bvalues)
    payload = bencode.encode(d)
    if draw(st.integers(0, 5)) == 0:
        payload = draw(mutated(payload))
    return payload


pex_inputs = st.lists(
    st.tuples(st.sampled_from((61.0, 61.0, 120.0, 600.0, 0.0, 1.0, 59.0, 60.0)),
              st.one_of(pex_payload(), pex_payload(), pex_payload(), st.binary(max_size=64))),
    min_size=1, max_size=8,
)


def _run_pex(inp: list[tuple[float, bytes]]) -> None:
    name = "pex"
    recv = PexReceiver(own_addrs=[("10.0.1.1", 6881)])
    now = 1000.0
    for gap, payload in inp:
        now += gap
        call(name, "decode_pex", RemoteProtocolError, decode_pex, payload)
        _, err = call(name, "PexReceiver.receive", RemoteProtocolError, recv.receive, payload, now=now)
        if err is not None:
            check(name, "closed after error", recv.closed, "a PexError left the receiver open")
            return
        check(name, "cap", len(recv.learned()) <= 200, "more peers learned than any cap allows")


register(Target(
    "pex", pex_inputs, _run_pex,
    from_bytes=lambda d, plan: [(0.0, d)], to_bytes=lambda inp: inp[0][1] if len(inp) == 1 else None,
))

# ------------------------------------------------------------------------------- uTP codec (BEP 29)


@st.composite
def utp_packets(draw: st.DrawFn) -> bytes:
    u16, u32 = st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)
    sack = draw(st.one_of(st.none(), st.binary(min_size=1, max_size=8).map(lambda b: b + bytes(-len(b) % 4))))
    header = UtpHeader(type=draw(st.integers(0, 4)), extension=EXT_NONE if sack is None else 1,
                       connection_id=draw(u16), timestamp_us=draw(u32), timestamp_diff_us=draw(u32),
                       wnd_size=draw(u32), seq_nr=draw(u16), ack_nr=draw(u16))
    data = encode_packet(header, sack, draw(st.binary(max_size=64)))
    if draw(st.booleans()):  # an extension chain: unknown types, lengths past the end
        ext = draw(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255)), min_size=1, max_size=4))
        chain = b"".join(bytes((nxt, ln)) + bytes(min(ln, 8)) for nxt, ln in ext)
        data = data[:1] + bytes((draw(st.integers(1, 255)),)) + data[2:20] + chain
    if draw(st.integers(0, 2)) == 0:
        data = draw(mutated(data))
    return data


def _run_utp_codec(data: bytes) -> None:
    name = "utp_codec"
    res, err = call(name, "decode_packet", RemoteProtocolError, decode_packet, data)
    if err is None and res[0].extension == EXT_NONE:
        header, _, payload = res
        again, _ = call(name, "encode_packet", (), encode_packet, header, None, payload)
        check(name, "round trip", again == bytes(data), "decode/encode changed the datagram")


register(Target(
    "utp_codec", st.one_of(utp_packets(), st.binary(max_size=64)), _run_utp_codec,
    from_bytes=lambda d, plan: d, to_bytes=lambda d: d,
))

# ------------------------------------------------------------------------------- uTP mux + connections

ADDR_A = ("192.0.2.1", 6881)
ADDR_B = ("192.0.2.2", 6882)
# Link mutations, applied to successive datagrams of a pump: (kind, arg).
# 0 deliver, 1 drop, 2 duplicate, 3 flip byte arg, 4 truncate to arg, 5 set header field arg to an edge value.
link_mutation = st.tuples(st.sampled_from((0, 0, 0, 0, 1, 2, 3, 4, 5)), st.integers(0, 0xFFFF))
FIELD_OFFSETS = ((0, 1), (1, 1), (2, 2), (4, 4), (8, 4), (12, 4), (16, 2), (18, 2))
utp_ops = st.one_of(
    st.tuples(st.just("pump"), st.lists(link_mutation, max_size=6).map(tuple)),
    st.tuples(st.just("advance"), st.sampled_from((0.001, 0.05, 0.5, 1.0, 3.0, 20.0, 70.0))),
    st.tuples(st.just("send"), st.booleans(), st.sampled_from((1, 100, 1400, 5000, 70000))),
    st.tuples(st.just("close"), st.booleans()),
    st.tuples(
        st.just("inject"), st.booleans(), st.integers(0, 4), st.integers(-2, 2),
        st.integers(-3, 3), st.integers(-3, 3), st.binary(max_size=12), st.binary(max_size=32),
    ),
    st.tuples(st.just("raw"), st.booleans(), mutated_from(utp_packets())),
)
utp_mux_inputs = st.tuples(st.integers(0, 2**16), st.lists(utp_ops, max_size=40))


def _mangle(dgram: bytes, mut: tuple[int, int]) -> list[bytes]:
    kind, arg = mut
    if kind == 1:
        return []
    if kind == 2:
        return [dgram, dgram]
    if kind == 3 and dgram:
        b = bytearray(dgram)
        b[arg % len(b)] ^= 1 << (arg % 8)
        return [bytes(b)]
    if kind == 4:
        return [dgram[: arg % (len(dgram) + 1)]]
    if kind == 5 and len(dgram) >= 20:
        off, size = FIELD_OFFSETS[arg % len(FIELD_OFFSETS)]
        edge = (0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)[(arg >> 3) % 8]
        return [dgram[:off] + (edge % (1 << (8 * size))).to_bytes(size, "big") + dgram[off + size :]]
    return [dgram]


def _run_utp_mux(inp: tuple[int, list[tuple[Any, ...]]]) -> None:
    name = "utp_mux"
    seed_, ops = inp
    mux = {True: UtpMux(random.Random(seed_)), False: UtpMux(random.Random(seed_ + 1))}
    addr = {True: ADDR_A, False: ADDR_B}
    now = 1000.0
    conns: dict[bool, Any] = {True: call(name, "connect", (), mux[True].connect, ADDR_B, now=now)[0], False: None}
    collect = bool(seed_ & 1)  # in-order payload into conn.received (utp_peers.py's way): the mux's short path
    if collect:
        conns[True].received = bytearray()

    def handle(to_a: bool, events: list[Any]) -> None:
        for _key, ev in events:
            if isinstance(ev, IncomingConnection):
                conns[to_a] = ev.conn
                if collect:
                    ev.conn.received = bytearray()
            elif isinstance(ev, DataReceived):
                check(name, "data", len(ev.data) > 0, "empty DataReceived")

    def deliver(to_a: bool, dgram: bytes) -> None:
        events, _ = call(name, "receive_datagram", (), mux[to_a].receive_datagram, dgram, addr[not to_a], now=now)
        handle(to_a, events)

    def deliver_read(to_a: bool, dgrams: list[bytes]) -> None:
        """One read's datagrams, as utp_peers.UtpPeers.receive_batch hands them over."""
        srcs = [addr[not to_a]] * len(dgrams)
        i = 0
        while i < len(dgrams):
            events: list[Any] = []
            j, _ = call(name, "receive_run", (), mux[to_a].receive_run, dgrams, srcs, i, events, now=now)
            check(name, "receive_run", isinstance(j, int) and i < j <= len(dgrams), f"run {i} -> {j}")
            handle(to_a, events)
            i = j

    for op in ops:
        if op[0] == "pump":
            muts = list(op[1]) or [(0, 0)]
            i = 0
            for from_a in (True, False):
                out, _ = call(name, "datagrams_to_send", (), mux[from_a].datagrams_to_send, now=now)
                read: list[bytes] = []
                for dgram in out:
                    read += _mangle(dgram.data, muts[i % len(muts)])
                    i += 1
                deliver_read(not from_a, read)
            for side in (True, False):
                c = conns[side]
                if c is not None and c.received:
                    c.received = bytearray()  # utp_peers.py takes a read's bytes after each read
                call(name, "socket_drained", (), mux[side].socket_drained, now=now)
        elif op[0] == "advance":
            now += op[1]
            for side in (True, False):
                deadline = mux[side].next_deadline()
                if deadline is not None and now >= deadline:
                    call(name, "handle_timeout", (), mux[side].handle_timeout, now=now)
        elif op[0] == "send":
            c = conns[op[1]]
            if c is not None and c.state is not UtpState.CLOSED and c.send_room() > 0:
                call(name, "send", (), c.send, bytes(op[2]))
        elif op[0] == "close":
            c = conns[op[1]]
            if c is not None:
                call(name, "close", (), c.close)
        elif op[0] == "inject":
            _, to_a, typ, cid_delta, seq_delta, ack_delta, ext, payload = op
            c = conns[to_a]
            base = c.recv_id if c is not None else 0
            hdr = HEADER_STRUCT.pack((typ << 4) | 1, 1 if ext else 0, (base + cid_delta) & 0xFFFF, int(now * 1e6) & 0xFFFFFFFF,
                                     0, 1 << 20, (1 + seq_delta) & 0xFFFF, (1 + ack_delta) & 0xFFFF)
            chain = bytes((0, len(ext))) + ext if ext else b""
            deliver(to_a, hdr + chain + payload)
        else:
            deliver(op[1], op[2])
    for side in (True, False):
        call(name, "stats", (), mux[side].stats)


register(Target("utp_mux", utp_mux_inputs, _run_utp_mux,
                from_bytes=lambda d, plan: (0, [("pump", ()), ("raw", True, d), ("raw", False, d), ("pump", ())])))
