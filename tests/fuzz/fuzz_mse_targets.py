"""Fuzz target for MSE/PE (minibt.mse): what an initiator sends to our listening port.

Contract (STYLE.md section 6): MseResponder.receive_data raises only MseError; afterwards the machine
refuses input with LocalProtocolError; its buffer never exceeds MAX_IA_BYTES; at most one MseDone.
"""

from __future__ import annotations

import hashlib
import random

from fuzzkit import Target, call, check, feed_plans, mutated, register, split
from hypothesis import strategies as st

from minibt.errors import LocalProtocolError, MseError
from minibt.mse import (
    CRYPTO_PLAIN,
    CRYPTO_RC4,
    DH_GENERATOR,
    DH_KEY_BYTES,
    DH_PRIME,
    MAX_IA_BYTES,
    MseDone,
    MseInitiator,
    MseResponder,
    req2_hash,
)

INFO_HASH = hashlib.sha1(b"minibt fuzz").digest()
XA = 0x1234567890ABCDEF1234567890ABCDEF12345678  # fixed private keys: a stream built for the fixed
XB = 0xFEDCBA0987654321FEDCBA0987654321FEDCBA09  # responder stays valid when replayed from the corpus
YB = pow(DH_GENERATOR, XB, DH_PRIME).to_bytes(DH_KEY_BYTES, "big")
LOOKUP = {req2_hash(INFO_HASH): INFO_HASH}.get


def initiator_stream(provide: int, pad_a: int, pad_c: int, ia: bytes, payload: bytes) -> bytes:
    """Steps 1 and 3 of a valid initiator talking to the fixed responder, then some payload."""
    a = MseInitiator(INFO_HASH, ia=ia, rng=random.Random(0), now=0.0, provide=provide, private_key=XA,
                     pads=(b"\x5a" * pad_a, b"\xa5" * pad_c))
    step1 = a.data_to_send()
    a.receive_data(YB, now=0.0)
    return step1 + a.data_to_send() + payload


@st.composite
def mse_inputs(draw: st.DrawFn) -> tuple[bytes, tuple[int, ...]]:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        stream = draw(st.binary(max_size=1200))
    else:
        stream = initiator_stream(
            draw(st.sampled_from((CRYPTO_RC4, CRYPTO_PLAIN, CRYPTO_RC4 | CRYPTO_PLAIN))),
            draw(st.sampled_from((0, 1, 19, 512))), draw(st.sampled_from((0, 3, 512))),
            draw(st.binary(max_size=80)), draw(st.binary(max_size=40)))
        if kind >= 3:
            stream = draw(mutated(stream))
    return stream, draw(feed_plans)


def _run_mse(inp: tuple[bytes, tuple[int, ...]]) -> None:
    name = "mse_responder"
    stream, plan = inp
    b = MseResponder(LOOKUP, rng=random.Random(1), now=0.0, private_key=XB, pads=(b"", b""))
    dones = 0
    for chunk in split(stream, plan):
        if b.done:
            b.stream().decrypt(chunk)
            continue
        events, err = call(name, "MseResponder.receive_data", MseError, b.receive_data, chunk, now=0.0)
        if err is not None:
            _, again = call(name, "receive after close", LocalProtocolError, b.receive_data, b"x", now=0.0)
            check(name, "closed after error", again is not None, "a closed MSE machine accepted more input")
            return
        check(name, "bounded", b.buffered_bytes <= MAX_IA_BYTES, f"{b.buffered_bytes} bytes buffered")
        b.data_to_send()
        dones += sum(isinstance(e, MseDone) for e in events)
    check(name, "one MseDone", dones == (1 if b.done else 0), f"{dones} MseDone events, done={b.done}")


register(Target("mse_responder", mse_inputs(), _run_mse, from_bytes=lambda d, plan: (d, plan),
                to_bytes=lambda inp: inp[0]))
