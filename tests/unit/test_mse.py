"""minibt.mse: MSE/PE handshake machines and streams (PROTOCOL.md 2.12).

The spec helpers below (pure-Python RC4, DH, SHA-1 formulas) are independent of minibt.mse: the
known-answer tests compare the machines' wire bytes with them, and tests/integration/
test_mse_handshake_lt.py checks the same formulas against a live libtorrent.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minibt.errors import CloseReason, LocalProtocolError, MseError
from minibt.mse import (
    CRYPTO_PLAIN,
    CRYPTO_RC4,
    DH_PRIME,
    MAX_IA_BYTES,
    REQ1_SYNC_BYTES,
    VC_SYNC_BYTES,
    MseDone,
    MseFailure,
    MseInitiator,
    MseResponder,
    MseState,
    PlainStream,
    Rc4Stream,
    looks_plaintext,
    rc4_available,
    req2_hash,
)

IH = bytes.fromhex("0123456789abcdef0123456789abcdef01234567")
OTHER_IH = bytes(range(20))
IA = b"\x13BitTorrent protocol" + bytes(8) + IH + b"-MB0001-000000000000"
XA = 0x1234567890ABCDEF1234567890ABCDEF12345678  # fixed 160-bit private keys
XB = 0xFEDCBA0987654321FEDCBA0987654321FEDCBA09
PAD_A, PAD_B, PAD_C, PAD_D = b"\xaa" * 7, b"\xbb" * 13, b"\xcc" * 3, b"\xdd" * 5
VC8 = bytes(8)
LOOKUP = {req2_hash(IH): IH, req2_hash(OTHER_IH): OTHER_IH}.get
P = int("FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
        "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A63A36210000000000090563", 16)

pytestmark = pytest.mark.skipif(not rc4_available(), reason="needs RC4 (nettle, OpenSSL libcrypto or the mse extra)")


# -- independent spec helpers -------------------------------------------------------------------
def spec_rc4(key: bytes, n: int, skip: int = 1024) -> bytes:
    """Textbook RC4 keystream (KSA + PRGA), the first ``skip`` bytes dropped."""
    s = list(range(256))
    j = 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) & 0xFF
        s[i], s[j] = s[j], s[i]
    out = bytearray()
    i = j = 0
    for _ in range(skip + n):
        i = (i + 1) & 0xFF
        j = (j + s[i]) & 0xFF
        s[i], s[j] = s[j], s[i]
        out.append(s[(s[i] + s[j]) & 0xFF])
    return bytes(out[skip:])


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def sha1(*parts: bytes) -> bytes:
    return hashlib.sha1(b"".join(parts)).digest()


def pub(x: int) -> bytes:
    return pow(2, x, P).to_bytes(96, "big")


def shared(x: int, y: bytes) -> bytes:
    return pow(int.from_bytes(y, "big"), x, P).to_bytes(96, "big")


def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def spec_step3(s: bytes, ih: bytes, plain: bytes, *, skey_for_req2: bytes | None = None) -> bytes:
    """A->B: HASH('req1',S) | HASH('req2',SKEY)^HASH('req3',S) | RC4_keyA(plain)."""
    key_a = sha1(b"keyA", s, ih)
    req2 = sha1(b"req2", ih if skey_for_req2 is None else skey_for_req2)
    return sha1(b"req1", s) + xor(req2, sha1(b"req3", s)) + xor(plain, spec_rc4(key_a, len(plain)))


def spec_step4(s: bytes, ih: bytes, plain: bytes) -> bytes:
    key_b = sha1(b"keyB", s, ih)
    return xor(plain, spec_rc4(key_b, len(plain)))


def test_spec_rc4_matches_published_vector() -> None:
    # Wikipedia RC4 test vector: key "Key", plaintext "Plaintext" (no discard)
    assert xor(b"Plaintext", spec_rc4(b"Key", 9, skip=0)).hex() == "bbf316e8d940af0ad3"


# -- fixtures -----------------------------------------------------------------------------------
def initiator(provide: int = CRYPTO_RC4 | CRYPTO_PLAIN, ia: bytes = IA, ih: bytes = IH) -> MseInitiator:
    return MseInitiator(ih, ia=ia, rng=random.Random(1), now=0.0, provide=provide, private_key=XA,
                        pads=(PAD_A, PAD_C))


def responder(allow: int = CRYPTO_RC4 | CRYPTO_PLAIN, prefer_rc4: bool = True) -> MseResponder:
    return MseResponder(LOOKUP, rng=random.Random(2), now=0.0, allow=allow, prefer_rc4=prefer_rc4,
                        private_key=XB, pads=(PAD_B, PAD_D))


def run_pair(a: MseInitiator, b: MseResponder, *, b_payload: bytes = b"") -> tuple[list[MseDone], list[MseDone],
                                                                                  bytes, bytes]:
    """Drive both sides to completion; returns (A's events, B's events, A->B bytes, B->A bytes)."""
    a_out = a.data_to_send()
    ev_b = b.receive_data(a_out, now=0.0)
    b_out = b.data_to_send()
    ev_a = a.receive_data(b_out, now=0.0)
    a3 = a.data_to_send()
    ev_b = b.receive_data(a3, now=0.0)
    b4 = b.data_to_send() + (b.stream().encrypt(b_payload) if ev_b else b"")
    ev_a = a.receive_data(b4, now=0.0)
    return ev_a, ev_b, a_out + a3, b_out + b4


# -- known answers ------------------------------------------------------------------------------
@pytest.mark.parametrize("provide, select, digest", [
    (CRYPTO_RC4 | CRYPTO_PLAIN, CRYPTO_RC4, "e7690a9ee800965189554d6ac5f69c4fb9a6bfdd"),
    (CRYPTO_PLAIN, CRYPTO_PLAIN, "0c434d3502d05fd6308aefdfe5f09fdb9e042bee"),
])
def test_wire_bytes_match_spec_formulas(provide: int, select: int, digest: str) -> None:
    a, b = initiator(provide), responder()
    ya, yb = pub(XA), pub(XB)
    s = shared(XA, yb)
    assert s == shared(XB, ya)
    assert a.data_to_send() == ya + PAD_A  # step 1
    assert b.receive_data(ya + PAD_A, now=0.0) == []
    assert b.data_to_send() == yb + PAD_B  # step 2
    assert a.receive_data(yb + PAD_B, now=0.0) == []
    step3 = a.data_to_send()
    plain3 = VC8 + u32(provide) + u16(len(PAD_C)) + PAD_C + u16(len(IA)) + IA
    assert step3 == spec_step3(s, IH, plain3)
    (done_b,) = b.receive_data(step3, now=0.0)
    assert done_b == MseDone(select, IH, IA, b"")
    step4 = b.data_to_send()
    assert step4 == spec_step4(s, IH, VC8 + u32(select) + u16(len(PAD_D)) + PAD_D)
    (done_a,) = a.receive_data(step4, now=0.0)
    assert done_a == MseDone(select, IH, b"", b"")
    # SHA-1 of the whole transcript, pinned once from the formulas above (a change on either side shows)
    transcript = ya + PAD_A + yb + PAD_B + step3 + step4
    assert len(transcript) == 96 + 7 + 96 + 13 + 40 + 8 + 4 + 2 + 3 + 2 + 68 + 8 + 4 + 2 + 5
    assert sha1(transcript).hex() == digest


def test_rc4_keys_derived_with_1024_bytes_discarded() -> None:
    a, b = initiator(), responder()
    run_pair(a, b)
    s = shared(XA, pub(XB))
    key_a, key_b = sha1(b"keyA", s, IH), sha1(b"keyB", s, IH)
    # after the handshake: A has used len(step 3 plaintext) bytes of keyA, B len(step 4 plaintext) of keyB
    used_a = 8 + 4 + 2 + len(PAD_C) + 2 + len(IA)
    used_b = 8 + 4 + 2 + len(PAD_D)
    zeros = bytes(64)
    assert a.stream().encrypt(zeros) == spec_rc4(key_a, used_a + 64)[used_a:]
    assert b.stream().encrypt(zeros) == spec_rc4(key_b, used_b + 64)[used_b:]
    assert Rc4Stream(key_a, key_b).encrypt(zeros) == spec_rc4(key_a, 64)
    assert Rc4Stream(key_a, key_b).decrypt(zeros) == spec_rc4(key_b, 64)


# -- happy paths --------------------------------------------------------------------------------
@pytest.mark.parametrize("provide, allow, prefer, method", [
    (CRYPTO_RC4 | CRYPTO_PLAIN, CRYPTO_RC4 | CRYPTO_PLAIN, True, CRYPTO_RC4),
    (CRYPTO_RC4 | CRYPTO_PLAIN, CRYPTO_RC4 | CRYPTO_PLAIN, False, CRYPTO_PLAIN),
    (CRYPTO_RC4, CRYPTO_RC4 | CRYPTO_PLAIN, False, CRYPTO_RC4),
    (CRYPTO_PLAIN, CRYPTO_RC4 | CRYPTO_PLAIN, True, CRYPTO_PLAIN),
    (CRYPTO_RC4 | CRYPTO_PLAIN, CRYPTO_PLAIN, True, CRYPTO_PLAIN),
])
def test_pair_selects_method_and_streams_interoperate(provide: int, allow: int, prefer: bool, method: int) -> None:
    a, b = initiator(provide), responder(allow, prefer)
    ev_a, ev_b, _, b_wire = run_pair(a, b, b_payload=b"B's handshake")
    assert ev_a == [MseDone(method, IH, b"", b"B's handshake")]
    assert ev_b == [MseDone(method, IH, IA, b"")]
    assert a.done and b.done and a.next_deadline() is None
    sa, sb = a.stream(), b.stream()
    assert type(sa) is type(sb) is (Rc4Stream if method == CRYPTO_RC4 else PlainStream)
    for n in (1, 100, 5000):
        msg = random.Random(n).randbytes(n)
        wire = sa.encrypt(msg)
        assert (wire == msg) == (method == CRYPTO_PLAIN)
        assert sb.decrypt(wire) == msg
        assert sa.decrypt(sb.encrypt(msg)) == msg
    if method == CRYPTO_PLAIN:
        assert b_wire.endswith(b"B's handshake")


def test_random_keys_and_pads_complete() -> None:
    for seed in range(5):
        a = MseInitiator(IH, ia=IA, rng=random.Random(seed), now=0.0)
        b = MseResponder(LOOKUP, rng=random.Random(seed + 100), now=0.0)
        ev_a, ev_b, _, _ = run_pair(a, b)
        assert ev_a and ev_b and ev_b[0].ia == IA


def test_responder_finds_the_right_torrent_among_several() -> None:
    a = MseInitiator(OTHER_IH, ia=b"", rng=random.Random(3), now=0.0, private_key=XA, pads=(b"", b""))
    _, ev_b, _, _ = run_pair(a, responder())
    assert ev_b == [MseDone(CRYPTO_RC4, OTHER_IH, b"", b"")]


def test_initiator_leftover_after_zero_length_pad_d() -> None:
    a = initiator()
    b = MseResponder(LOOKUP, rng=random.Random(2), now=0.0, private_key=XB, pads=(b"", b""))
    ev_a, _, _, _ = run_pair(a, b, b_payload=b"after")
    assert ev_a == [MseDone(CRYPTO_RC4, IH, b"", b"after")]


# -- split invariance ---------------------------------------------------------------------------
def transcript(b_payload: bytes = b"\x00\x00\x00\x01\x02", a_payload: bytes = b"") -> tuple[bytes, bytes]:
    """(A->B, B->A) byte streams of a fixed handshake, each followed by some payload."""
    a, b = initiator(), responder()
    _, _, a_wire, b_wire = run_pair(a, b, b_payload=b_payload)
    return a_wire + a.stream().encrypt(a_payload), b_wire


def feed(m: MseInitiator | MseResponder, chunks: list[bytes]) -> tuple[list[MseDone], bytes, bytes]:
    """(events, bytes m sent, payload decrypted by m's stream after the done call)."""
    events: list[MseDone] = []
    out = bytearray(m.data_to_send())
    rest = b""
    for c in chunks:
        if m.done:
            rest += m.stream().decrypt(c)
            continue
        events += m.receive_data(c, now=0.0)
        out += m.data_to_send()
        assert m.buffered_bytes <= MAX_IA_BYTES
    return events, bytes(out), rest


def splits(data: bytes) -> list[list[bytes]]:
    plans = [[data], [data[i:i + 1] for i in range(len(data))]]
    plans += [[data[:i], data[i:]] for i in range(1, len(data))]
    return plans


def check_splits(m_new: object, wire: bytes, want: MseDone) -> None:
    whole = feed(m_new(), [wire])  # type: ignore[operator]
    assert whole[0] == [want] and whole[2] == b""
    for chunks in splits(wire):
        events, out, rest = feed(m_new(), [c for c in chunks if c])  # type: ignore[operator]
        (done,) = events
        assert done.method == want.method and done.info_hash == want.info_hash and done.ia == want.ia
        assert done.leftover + rest == want.leftover  # in the done call or later: never lost or doubled
        assert out == whole[1]


def test_responder_split_at_every_byte_boundary() -> None:
    a_wire, _ = transcript(a_payload=b"interested")
    check_splits(responder, a_wire, MseDone(CRYPTO_RC4, IH, IA, b"interested"))


def test_initiator_split_at_every_byte_boundary() -> None:
    _, b_wire = transcript(b_payload=b"bitfield!")
    check_splits(initiator, b_wire, MseDone(CRYPTO_RC4, IH, b"", b"bitfield!"))


def test_plaintext_method_split_at_every_byte_boundary() -> None:
    a, b = initiator(), responder(prefer_rc4=False)
    _, _, a_wire, b_wire = run_pair(a, b, b_payload=b"plain!")
    check_splits(lambda: responder(prefer_rc4=False), a_wire + b"more", MseDone(CRYPTO_PLAIN, IH, IA, b"more"))
    check_splits(initiator, b_wire, MseDone(CRYPTO_PLAIN, IH, b"", b"plain!"))


# -- violations ---------------------------------------------------------------------------------
def expect_failure(m: MseInitiator | MseResponder, data: bytes, failure: MseFailure) -> None:
    with pytest.raises(MseError) as ei:
        m.receive_data(data, now=0.0)
    assert ei.value.reason is CloseReason.ENCRYPTION_FAILED
    assert ei.value.detail == failure.value
    assert m.state is MseState.CLOSED and m.buffered_bytes == 0
    with pytest.raises(LocalProtocolError):
        m.receive_data(b"x", now=0.0)


def key_bytes(y: int) -> bytes:
    return y.to_bytes(96, "big")


@pytest.mark.parametrize("y", [0, 1, DH_PRIME - 1, DH_PRIME, 2**768 - 1])
def test_bad_key_rejected_by_both_sides(y: int) -> None:
    expect_failure(responder(), key_bytes(y), MseFailure.BAD_KEY)
    i = initiator()
    i.data_to_send()
    expect_failure(i, key_bytes(y), MseFailure.BAD_KEY)


@pytest.mark.parametrize("y", [2, DH_PRIME - 2])
def test_edge_keys_accepted(y: int) -> None:
    b = responder()
    assert b.receive_data(key_bytes(y), now=0.0) == []
    assert b.state is MseState.SYNC_REQ1


def test_short_key_then_timeout() -> None:
    b = responder()
    assert b.receive_data(pub(XA)[:50], now=0.0) == []
    assert b.next_deadline() == 30.0
    assert b.handle_timeout(now=29.9) == []
    with pytest.raises(MseError) as ei:
        b.handle_timeout(now=30.0)
    assert ei.value.reason is CloseReason.HANDSHAKE_TIMEOUT and ei.value.detail == MseFailure.TIMEOUT.value


def test_responder_garbage_after_key_sync_not_found() -> None:
    b = responder()
    b.receive_data(pub(XA), now=0.0)
    garbage = random.Random(5).randbytes(REQ1_SYNC_BYTES - 1)
    assert b.receive_data(garbage, now=0.0) == []  # the hash could still come
    expect_failure(b, b"\x00", MseFailure.SYNC_NOT_FOUND)


def test_responder_hash_at_window_edge_accepted() -> None:
    s = shared(XB, pub(XA))
    pad = b"\x01" * 512
    plain = VC8 + u32(CRYPTO_RC4) + u16(0) + u16(0)
    b = responder()
    (done,) = b.receive_data(pub(XA) + pad + spec_step3(s, IH, plain), now=0.0)
    assert done == MseDone(CRYPTO_RC4, IH, b"", b"")


def test_initiator_garbage_vc_not_found() -> None:
    a = initiator()
    a.data_to_send()
    a.receive_data(pub(XB), now=0.0)
    assert a.receive_data(bytes(VC_SYNC_BYTES - 1), now=0.0) == []
    expect_failure(a, b"\x00", MseFailure.VC_NOT_FOUND)


def evil_responder_reply(plain4: bytes, pad_b: bytes = b"") -> bytes:
    s = shared(XB, pub(XA))
    return pub(XB) + pad_b + spec_step4(s, IH, plain4)


def test_initiator_vc_after_512_byte_pad_accepted() -> None:
    a = initiator()
    (done,) = a.receive_data(evil_responder_reply(VC8 + u32(CRYPTO_RC4) + u16(0), b"\x07" * 512), now=0.0)
    assert done.method == CRYPTO_RC4


@pytest.mark.parametrize("select", [CRYPTO_RC4 | CRYPTO_PLAIN, 0, 0x04, CRYPTO_PLAIN])
def test_initiator_bad_crypto_select(select: int) -> None:
    a = initiator(provide=CRYPTO_RC4)  # plaintext was not offered: selecting it is a violation too
    expect_failure(a, evil_responder_reply(VC8 + u32(select) + u16(0)), MseFailure.BAD_SELECT)


def test_initiator_pad_d_of_513() -> None:
    expect_failure(initiator(), evil_responder_reply(VC8 + u32(CRYPTO_RC4) + u16(513)), MseFailure.BAD_PAD)


def evil_initiator(plain3: bytes, skey: bytes | None = None) -> bytes:
    s = shared(XA, pub(XB))
    return pub(XA) + spec_step3(s, IH, plain3, skey_for_req2=skey)


def test_responder_pad_c_of_513() -> None:
    expect_failure(responder(), evil_initiator(VC8 + u32(CRYPTO_RC4) + u16(513) + bytes(513)), MseFailure.BAD_PAD)


def test_responder_missing_vc() -> None:
    expect_failure(responder(), evil_initiator(b"\x01" * 8 + u32(CRYPTO_RC4) + u16(0) + u16(0)),
                   MseFailure.VC_NOT_FOUND)


@pytest.mark.parametrize("provide, allow", [(0, CRYPTO_RC4 | CRYPTO_PLAIN), (CRYPTO_PLAIN, CRYPTO_RC4),
                                            (CRYPTO_RC4, CRYPTO_PLAIN), (0x0C, CRYPTO_RC4 | CRYPTO_PLAIN)])
def test_responder_no_common_method(provide: int, allow: int) -> None:
    expect_failure(responder(allow), evil_initiator(VC8 + u32(provide) + u16(0) + u16(0)),
                   MseFailure.NO_COMMON_METHOD)


def test_responder_unknown_info_hash() -> None:
    expect_failure(responder(), evil_initiator(VC8 + u32(CRYPTO_RC4) + u16(0) + u16(0), skey=b"\x99" * 20),
                   MseFailure.UNKNOWN_INFO_HASH)


def test_responder_ia_too_large() -> None:
    expect_failure(responder(), evil_initiator(VC8 + u32(CRYPTO_RC4) + u16(0) + u16(MAX_IA_BYTES + 1)),
                   MseFailure.IA_TOO_LARGE)


def test_responder_ia_at_limit_accepted() -> None:
    ia = random.Random(9).randbytes(MAX_IA_BYTES)
    (done,) = responder().receive_data(evil_initiator(VC8 + u32(CRYPTO_RC4) + u16(0) + u16(len(ia)) + ia), now=0.0)
    assert done.ia == ia


def test_constructor_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        initiator(ia=bytes(MAX_IA_BYTES + 1))
    with pytest.raises(ValueError):
        initiator(provide=0)
    with pytest.raises(ValueError):
        MseInitiator(IH, ia=b"", rng=random.Random(), now=0.0, pads=(bytes(513), b""))
    with pytest.raises(LocalProtocolError):
        initiator().stream()


# -- garbage (STYLE.md section 9, invariant 3) ----------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(1, 700), max_size=8), st.booleans())
def test_garbage_only_raises_mse_error_and_stays_bounded(data: bytes, cuts: list[int], as_initiator: bool) -> None:
    m: MseInitiator | MseResponder = initiator() if as_initiator else responder()
    pos = 0
    try:
        for n in [*cuts, len(data)]:
            chunk, pos = data[pos:pos + n], pos + n
            if not chunk:
                continue
            m.receive_data(chunk, now=0.0)
            m.data_to_send()
            assert m.buffered_bytes <= max(REQ1_SYNC_BYTES, VC_SYNC_BYTES, 96)
            if m.done:
                break
    except MseError as e:
        assert e.reason is CloseReason.ENCRYPTION_FAILED
        assert e.detail in {f.value for f in MseFailure}


# -- helpers and the optional extra ------------------------------------------------------------------
def test_looks_plaintext() -> None:
    assert looks_plaintext(b"") is None
    assert looks_plaintext(b"\x13Bit") is None
    assert looks_plaintext(b"\x13BitT") is True
    assert looks_plaintext(b"\x13BitTorrent protocol") is True
    assert looks_plaintext(IA) is True
    assert looks_plaintext(b"\x14") is False
    assert looks_plaintext(b"\x13Bix") is False
    # a damaged protocol string further on is still a plaintext attempt: the BT parser reports it
    assert looks_plaintext(b"\x13BitTorrent protocoX") is True
    assert looks_plaintext(pub(XA)) is False


def test_module_imports_without_any_rc4_and_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['cryptography'] = None\n"
        "import random\n"
        "from minibt import mse, rc4\n"
        "rc4.BACKENDS.clear()\n"
        "from minibt.errors import EncryptionUnavailable\n"
        "assert not mse.rc4_available()\n"
        "assert mse.looks_plaintext(b'\\x13BitTorrent protocol')\n"
        "try:\n"
        "    mse.MseInitiator(bytes(20), ia=b'', rng=random.Random(), now=0.0)\n"
        "except EncryptionUnavailable as e:\n"
        "    print(e)\n"
    )
    root = str(Path(__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                         env={"PYTHONPATH": root}, check=True)
    assert "pip install 'minibt[mse]'" in out.stdout


def test_decrypt_view_works_in_place_on_a_writable_view_and_copies_otherwise() -> None:
    a_send, a_recv = Rc4Stream(b"k" * 20, b"j" * 20), Rc4Stream(b"j" * 20, b"k" * 20)
    msgs = [random.Random(i).randbytes(5000) for i in range(3)]
    wire = [a_send.encrypt(m) for m in msgs]
    buf = bytearray(wire[0])
    view = memoryview(buf)
    out = a_recv.decrypt_view(view)
    assert out is view and bytes(buf) == msgs[0]  # the loop's receive buffer, decrypted where it is
    assert a_recv.decrypt_view(wire[1]) == msgs[1]  # bytes (uTP): a copy, same keystream position
    ro = memoryview(wire[2])
    assert a_recv.decrypt_view(ro) == msgs[2] and bytes(ro) == wire[2]  # read-only: untouched


@pytest.mark.parametrize("cut", [1, 4, 5, 30, len(IA)])
def test_initiator_answered_in_plaintext_fails_at_once(cut: int) -> None:
    a = initiator()
    a.data_to_send()
    got: list[MseError] = []
    try:
        a.receive_data(IA[:cut], now=0.0)  # a plaintext-only peer's BT handshake instead of Yb
        if cut < 5:
            a.receive_data(IA[cut:], now=0.0)
    except MseError as e:
        got.append(e)
    assert got and got[0].detail == MseFailure.PLAINTEXT_ANSWER.value
