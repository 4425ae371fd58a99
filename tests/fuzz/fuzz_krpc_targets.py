"""Fuzz target for what DHT nodes send: KRPC datagrams (BEP 5, BEP 32, BEP 42 'ip').

Contract: krpc.decode raises only KrpcError, for any bytes; is_krpc() holds for whatever it accepts;
a decoded message encodes back without error (LocalProtocolError would mean a rule that decode and
encode disagree on) and decodes to itself; no call over fuzzkit.TIME_LIMIT_S.
"""

from __future__ import annotations

from typing import Any

from fuzzkit import EDGE_INTS, Target, bvalues, call, check, deep, mutated, register
from hypothesis import strategies as st

from minibt import bencode, krpc
from minibt.errors import LocalProtocolError

IDS = (b"abcdefghij0123456789", bytes(20), b"\xff" * 20, bytes(19), bytes(21), b"")
PORTS = (0, 1, 6881, 65535, 65536, -1, 2**32)
COMPACT = st.one_of(st.integers(0, 12).map(lambda n: bytes(range(26)) * n), st.integers(0, 8).map(lambda n: bytes(38) * n),
                    st.binary(max_size=80))
VALUES = st.lists(st.one_of(st.binary(min_size=6, max_size=6), st.binary(min_size=18, max_size=18), st.binary(max_size=20),
                            bvalues), max_size=12)
METHODS = (b"ping", b"find_node", b"get_peers", b"announce_peer", b"get", b"put", b"sample_infohashes", b"", b"\xff")


@st.composite
def krpc_dicts(draw: st.DrawFn) -> dict[bytes, Any]:
    """A well-formed query, response or error; half the time one field is replaced, deleted or hostile."""
    ident = st.one_of(st.binary(min_size=20, max_size=20), st.binary(min_size=20, max_size=20), st.sampled_from(IDS))
    kind = draw(st.sampled_from((b"q", b"r", b"e")))
    tid = st.one_of(st.binary(min_size=1, max_size=4), st.binary(min_size=1, max_size=4), st.binary(max_size=20))
    d: dict[bytes, Any] = {b"t": draw(tid), b"y": kind}
    if kind == b"q":
        method = draw(st.sampled_from(METHODS))
        args: dict[bytes, Any] = {b"id": draw(ident)}
        if method in (b"find_node", b"sample_infohashes"):
            args[b"target"] = draw(ident)
        if method in (b"get_peers", b"announce_peer"):
            args[b"info_hash"] = draw(ident)
        if method == b"announce_peer":
            args[b"port"] = draw(st.one_of(st.integers(1, 65535), st.sampled_from(PORTS)))
            args[b"token"] = draw(st.binary(max_size=70))
            if draw(st.booleans()):
                args[b"implied_port"] = draw(st.sampled_from((0, 1, 2, -1)))
        if draw(st.integers(0, 3)) == 0:
            args[b"want"] = draw(st.lists(st.sampled_from((b"n4", b"n6", b"n5", 4)), max_size=3))
        d[b"q"], d[b"a"] = method, args
    elif kind == b"r":
        r: dict[bytes, Any] = {b"id": draw(ident)}
        for key, strat in ((b"nodes", COMPACT), (b"nodes6", COMPACT), (b"values", VALUES), (b"token", st.binary(max_size=70))):
            if draw(st.booleans()):
                r[key] = draw(strat)
        d[b"r"] = r
        if draw(st.booleans()):
            d[b"ip"] = draw(st.one_of(st.binary(min_size=6, max_size=6), st.binary(min_size=18, max_size=18), bvalues))
    else:
        code = st.one_of(st.sampled_from((201, 202, 203, 204) + EDGE_INTS), st.sampled_from((201, 202, 203, 204)), bvalues)
        d[b"e"] = [draw(code), draw(st.one_of(st.binary(max_size=60), st.binary(max_size=60), bvalues))]
        if draw(st.integers(0, 4)) == 0:
            d[b"e"] = d[b"e"][: draw(st.integers(0, 1))] + draw(st.lists(bvalues, max_size=2))
    if draw(st.booleans()):
        d[b"v"] = draw(st.sampled_from((krpc.KRPC_VERSION, b"LT\x01\x00", b"")))
    if draw(st.booleans()):  # one field of the wrong type, missing or hostile, at the top or one level down
        inner: list[dict[bytes, Any]] = [v for v in d.values() if isinstance(v, dict)]
        one_down: bool = draw(st.booleans())
        where = inner[0] if inner and one_down else d
        key = draw(st.sampled_from(sorted(where)))
        if draw(st.booleans()):
            where[key] = draw(st.one_of(bvalues, st.sampled_from(EDGE_INTS)))
        else:
            del where[key]
    return d


krpc_inputs = st.one_of(
    krpc_dicts().map(bencode.encode),
    krpc_dicts().map(bencode.encode).flatmap(mutated),
    st.builds(lambda d: b"d1:t2:aa1:y1:r1:r" + d + b"e", st.builds(deep, st.sampled_from((b"l", b"d")), st.integers(2, 3000))),
    st.builds(lambda n: b"d1:t2:aa1:y1:r1:rd2:id20:" + bytes(20) + b"1:x" + str(n).encode() + b":" + bytes(n) + b"ee",
              st.integers(2900, 3100)),
    st.binary(max_size=256),
)


def _run_krpc(data: bytes) -> None:
    name = "krpc"
    msg, err = call(name, "decode", krpc.KrpcError, krpc.decode, data)
    if err is not None:
        return
    check(name, "is_krpc", krpc.is_krpc(data), "decode accepted a datagram is_krpc() would not route to the DHT")
    out, enc_err = call(name, "encode", LocalProtocolError, krpc.encode, msg)
    check(name, "re-encode", enc_err is None, f"a decoded {type(msg).__name__} does not encode: {enc_err!r}")
    again, dec_err = call(name, "decode again", krpc.KrpcError, krpc.decode, out)
    check(name, "round trip", dec_err is None and again == msg, f"{msg!r} comes back as {again!r} ({dec_err!r})")


register(Target("krpc", krpc_inputs, _run_krpc, from_bytes=lambda d, plan: d, to_bytes=lambda d: d))
