"""Message Stream Encryption (MSE/PE) handshake, both sides, and the RC4 stream it yields.

Not a BEP: numbers from libtorrent ``bt_peer_connection.cpp`` / ``pe_crypto.cpp`` (PROTOCOL.md 2.12).
A = initiator (:class:`MseInitiator`), B = responder (:class:`MseResponder`); S = DH shared secret,
SKEY = info-hash, E() = RC4 (A sends with keyA, B with keyB, first 1024 keystream bytes discarded)::

    1 A->B  Ya | PadA                       3 A->B  HASH('req1',S) | HASH('req2',SKEY)^HASH('req3',S)
    2 B->A  Yb | PadB                              | E(VC, crypto_provide, len(PadC), PadC, len(IA)) | E(IA)
                                            4 B->A  E(VC, crypto_select, len(PadD), PadD) | payload

    A: AWAIT_YB --96--> SYNC_VC (<= 512+8) --> AWAIT_SELECT --6--> AWAIT_PAD --len(PadD)--> DONE
    B: AWAIT_YA --96--> SYNC_REQ1 (<= 512+20) --> AWAIT_SKEY --20--> AWAIT_PROVIDE --14-->
       AWAIT_PAD --len(PadC)+2--> AWAIT_IA --len(IA)--> DONE

Every check that fails raises :class:`~minibt.errors.MseError` (ENCRYPTION_FAILED; ``detail`` is a
:class:`MseFailure` value) and closes the machine.  Pure: no I/O, no clock; keys and pads come from an
injected ``random.Random`` (``secrets.SystemRandom()`` in production).  Wiring into the session is
out of scope here.

RC4 comes from a C library (rc4.py: the nettle or libcrypto sha1.py already maps, else the
``cryptography`` package of the optional extra ``minibt[mse]``).  SHA-1 is sha1.py's, DH is ``pow()`` with a 160-bit exponent (the Vuze spec asks for >= 128 bits;
libtorrent uses 768 bits, which only costs time).
"""

from __future__ import annotations

import abc
import enum
import random
from collections.abc import Callable
from dataclasses import dataclass

from minibt import rc4
from minibt.errors import CloseReason, EncryptionUnavailable, LocalProtocolError, MseError
from minibt.sha1 import sha1

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class CipherStream(Protocol):
        """What a connection uses for every byte after the handshake."""

        method: int

        def encrypt(self, data: bytes | bytearray | memoryview) -> bytes: ...

        def decrypt(self, data: bytes | bytearray | memoryview) -> bytes: ...

        def decrypt_view(self, data: bytes | memoryview) -> bytes | memoryview:
            """``decrypt``, in place when ``data`` is a writable memoryview (the loop's receive buffer)."""
            ...

# MSE constants (libtorrent pe_crypto.cpp, bt_peer_connection.cpp; PROTOCOL.md 2.12)
DH_PRIME = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A63A36210000000000090563",
    16,
)
DH_GENERATOR = 2
DH_KEY_BYTES = 96  # public keys and S are 768-bit big-endian, zero-padded
DH_SECRET_BITS = 160  # private exponent; Vuze spec: >= 128 bits (minibt choice, libtorrent uses 768)
VC = bytes(8)  # verification constant: 8 zero bytes
CRYPTO_PLAIN = 0x01  # crypto_provide / crypto_select bits
CRYPTO_RC4 = 0x02
MAX_PAD_BYTES = 512  # PadA..PadD are 0..512 bytes; libtorrent: invalid_pad_size beyond
RC4_DISCARD_BYTES = 1024  # both RC4 streams drop their first 1024 keystream bytes
_SHA1_LEN = 20
REQ1_SYNC_BYTES = MAX_PAD_BYTES + _SHA1_LEN  # B looks for HASH('req1',S) within PadA + 20 bytes
VC_SYNC_BYTES = MAX_PAD_BYTES + len(VC)  # A looks for E(VC) within PadB + 8 bytes
MAX_IA_BYTES = 8192  # minibt convention: IA holds a 68-byte BT handshake (libtorrent sends exactly that
# and refuses len(IA) > 32767, read as a signed 16-bit int); 8 KiB leaves room for a bitfield
MSE_TIMEOUT_S = 30.0  # minibt convention, as handshake.DEFAULT_TIMEOUT_S
PLAIN_SIGNATURE = b"\x13BitT"  # BEP 3 pstrlen + the start of pstr "BitTorrent protocol"


class MseFailure(enum.StrEnum):
    """Which check failed: the ``detail`` of an :class:`MseError`."""

    BAD_KEY = "bad DH key"
    SYNC_NOT_FOUND = "sync hash not found"
    VC_NOT_FOUND = "VC not found"
    BAD_PAD = "bad pad length"
    NO_COMMON_METHOD = "no common crypto method"
    BAD_SELECT = "bad crypto_select"
    UNKNOWN_INFO_HASH = "unknown info-hash"
    IA_TOO_LARGE = "IA too large"
    TIMEOUT = "handshake timed out"
    PLAINTEXT_ANSWER = "answered with a plaintext BT handshake"


def rc4_available() -> bool:
    """True when an RC4 back end works here (rc4.py: nettle or libcrypto, else the ``mse`` extra)."""
    return rc4.backend() is not None


def _require_rc4() -> rc4.Factory:
    got = rc4.backend()
    if got is None:
        raise EncryptionUnavailable(
            "MSE/PE encryption needs RC4: neither nettle nor OpenSSL here has it; pip install 'minibt[mse]' (cryptography)"
        )
    return got[1]


def _sha1(*parts: bytes) -> bytes:
    h = sha1()
    for p in parts:
        h.update(p)
    return h.digest()


def req2_hash(info_hash: bytes) -> bytes:
    """``HASH('req2', SKEY)``: the key a responder looks a torrent up by."""
    return _sha1(b"req2", bytes(info_hash))


def looks_plaintext(first_bytes: bytes) -> bool | None:
    """Do these first bytes of a connection start a plaintext BT handshake (True) or MSE (False)?
    None: need more bytes.  Decided on ``PLAIN_SIGNATURE`` (5 bytes): a DH key starts so once in
    2**40, and a handshake with a damaged protocol string further on is still a plaintext one (the
    handshake parser says what is wrong with it)."""
    n = min(len(first_bytes), len(PLAIN_SIGNATURE))
    if bytes(first_bytes[:n]) != PLAIN_SIGNATURE[:n]:
        return False
    return True if n == len(PLAIN_SIGNATURE) else None


def _valid_key(y: int) -> bool:
    return 2 <= y <= DH_PRIME - 2  # PROTOCOL.md 2.12: reject a key outside [2, P-2]


class PlainStream:
    """crypto_select = plaintext: bytes after the handshake pass unchanged."""

    method = CRYPTO_PLAIN

    def encrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        return bytes(data)

    def decrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        return bytes(data)

    def decrypt_view(self, data: bytes | memoryview) -> bytes | memoryview:
        return data


class Rc4Stream:
    """Two RC4 keystreams (send, receive), each with its first 1024 bytes discarded."""

    method = CRYPTO_RC4

    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        factory = _require_rc4()
        self._enc = factory(bytes(send_key))
        self._dec = factory(bytes(recv_key))
        discard = bytes(RC4_DISCARD_BYTES)
        self._enc.update(discard)
        self._dec.update(discard)

    def encrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        return self._enc.update(data)

    def decrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        return self._dec.update(data)

    def decrypt_view(self, data: bytes | memoryview) -> bytes | memoryview:
        if isinstance(data, memoryview) and not data.readonly and data.contiguous and data.format == "B" \
                and self._dec.update_in_place(data):
            return data
        return self._dec.update(data)


def derive_keys(shared_secret: bytes, info_hash: bytes) -> tuple[bytes, bytes]:
    """(keyA, keyB) = (HASH('keyA', S, SKEY), HASH('keyB', S, SKEY)); A sends with keyA."""
    return _sha1(b"keyA", shared_secret, info_hash), _sha1(b"keyB", shared_secret, info_hash)


@dataclass(frozen=True, slots=True)
class MseDone:
    """The MSE handshake finished; take ``machine.stream()`` for everything after it.

    ``ia``: the initiator's initial payload, decrypted (responder side; b"" on the initiator), to be
    fed to the BT handshake parser first.  ``leftover``: payload bytes that came after the handshake in
    the same input, already decrypted by the stream (feed them after ``ia``).
    """

    method: int
    info_hash: bytes
    ia: bytes
    leftover: bytes


Event = MseDone


class MseState(enum.Enum):
    AWAIT_YB = enum.auto()  # initiator
    SYNC_VC = enum.auto()
    AWAIT_SELECT = enum.auto()
    AWAIT_YA = enum.auto()  # responder
    SYNC_REQ1 = enum.auto()
    AWAIT_SKEY = enum.auto()
    AWAIT_PROVIDE = enum.auto()
    AWAIT_IA = enum.auto()
    AWAIT_PAD = enum.auto()  # both: PadD (initiator) / PadC + len(IA) (responder)
    DONE = enum.auto()
    CLOSED = enum.auto()


def _check_provide(provide: int) -> int:
    if provide & ~(CRYPTO_PLAIN | CRYPTO_RC4) or not provide:
        raise ValueError(f"crypto methods must be a non-empty subset of 0x03, got {provide:#x}")
    return provide


def _pad(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randint(0, MAX_PAD_BYTES))


class _MseHandshake(abc.ABC):
    """Shared framing: need-N and sync-search readers over a bounded buffer (STYLE.md P1)."""

    def __init__(self, *, rng: random.Random, now: float, timeout_s: float, private_key: int | None,
                 state: MseState) -> None:
        _require_rc4()  # the handshake itself is RC4 even when plaintext is selected
        x = rng.getrandbits(DH_SECRET_BITS) | (1 << (DH_SECRET_BITS - 1)) if private_key is None else private_key
        if not 1 < x < DH_PRIME - 1:
            raise ValueError("private_key out of range")
        self._rng = rng
        self._x = x
        self.public_key = pow(DH_GENERATOR, x, DH_PRIME).to_bytes(DH_KEY_BYTES, "big")
        self._timeout_s = timeout_s
        self._deadline = now + timeout_s
        self._state = state
        self._buf = bytearray()  # bytes of the current step; never above the step's need or sync window
        self._outbox = bytearray()
        self._secret = b""  # S, 96 bytes once known
        self._rc4: Rc4Stream | None = None
        self._stream: CipherStream | None = None
        self._info_hash = b""
        self._method = 0
        self._pad_len = 0

    @property
    def state(self) -> MseState:
        return self._state

    @property
    def done(self) -> bool:
        return self._state is MseState.DONE

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for an incomplete step (bounded by the sync window / MAX_IA_BYTES)."""
        return len(self._buf)

    def stream(self) -> CipherStream:
        """The cipher for all bytes after the handshake (after :class:`MseDone`)."""
        if self._stream is None:
            raise LocalProtocolError(CloseReason.ENCRYPTION_FAILED, "MSE handshake not done")
        return self._stream

    def data_to_send(self) -> bytes:
        """Drain the handshake bytes queued so far."""
        out = bytes(self._outbox)
        self._outbox.clear()
        return out

    def next_deadline(self) -> float | None:
        return self._deadline if self._state not in (MseState.DONE, MseState.CLOSED) else None

    def restart_timer(self, *, now: float) -> None:
        """The connection came up only now (a slow connect): the handshake has its full time from here."""
        self._deadline = now + self._timeout_s

    def handle_timeout(self, *, now: float) -> list[Event]:
        """Raises MseError(HANDSHAKE_TIMEOUT) when the handshake is not done by the deadline."""
        self._check_open()
        if self._state is not MseState.DONE and now >= self._deadline:
            self._state = MseState.CLOSED
            raise MseError(MseFailure.TIMEOUT.value, CloseReason.HANDSHAKE_TIMEOUT)
        return []

    def receive_data(self, data: bytes | bytearray | memoryview, *, now: float) -> list[Event]:
        """Feed bytes from the peer; returns [MseDone] once, then nothing (use ``stream()``).

        Raises:
            MseError: a check failed (detail: an MseFailure value); the machine is then closed.
        """
        self._check_open()
        if self._state is MseState.DONE:
            raise LocalProtocolError(CloseReason.ENCRYPTION_FAILED, "MSE done: use stream().decrypt()")
        try:
            rest = memoryview(bytes(data))
            while len(rest) and not self.done:
                rest = self._step(rest)
        except MseError:
            self._state = MseState.CLOSED
            self._buf.clear()
            raise
        if not self.done:
            return []
        stream = self.stream()
        return [MseDone(self._method, self._info_hash, self._ia(), stream.decrypt(rest))]

    # -- framing helpers --------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._state is MseState.CLOSED:
            raise LocalProtocolError(CloseReason.ENCRYPTION_FAILED, "MSE machine is closed")

    def _need(self, rest: memoryview, n: int) -> tuple[bytes | None, memoryview]:
        """Collect exactly n bytes for this step: (the n bytes or None, what is left of rest)."""
        take = min(n - len(self._buf), len(rest))
        self._buf += rest[:take]
        if len(self._buf) < n:
            return None, rest[take:]
        chunk = bytes(self._buf)
        self._buf.clear()
        return chunk, rest[take:]

    def _sync(self, rest: memoryview, pattern: bytes, window: int,
              failure: MseFailure) -> tuple[bool, memoryview]:
        """Search for pattern within the first ``window`` bytes; on a hit, the bytes after it are returned."""
        take = min(window - len(self._buf), len(rest))
        self._buf += rest[:take]
        rest = rest[take:]
        i = self._buf.find(pattern)
        if i >= 0:
            tail = bytes(self._buf[i + len(pattern):]) + bytes(rest)
            self._buf.clear()
            return True, memoryview(tail)
        if len(self._buf) >= window:
            raise MseError(failure.value)
        return False, rest

    def _take_key(self, chunk: bytes) -> None:
        y = int.from_bytes(chunk, "big")
        if not _valid_key(y):
            raise MseError(MseFailure.BAD_KEY.value)
        self._secret = pow(y, self._x, DH_PRIME).to_bytes(DH_KEY_BYTES, "big")

    def _decrypt(self, chunk: bytes) -> bytes:
        assert self._rc4 is not None
        return self._rc4.decrypt(chunk)

    def _finish(self) -> None:
        assert self._rc4 is not None
        self._stream = self._rc4 if self._method == CRYPTO_RC4 else PlainStream()
        self._state = MseState.DONE

    @abc.abstractmethod
    def _step(self, rest: memoryview) -> memoryview:
        """Consume what the current state needs from ``rest``; return what is left (each side's own)."""

    def _ia(self) -> bytes:
        return b""


class MseInitiator(_MseHandshake):
    """Side A: dials out for one torrent.  ``Ya | PadA`` is queued at construction."""

    def __init__(
        self,
        info_hash: bytes,
        *,
        ia: bytes,
        rng: random.Random,
        now: float,
        provide: int = CRYPTO_RC4 | CRYPTO_PLAIN,
        timeout_s: float = MSE_TIMEOUT_S,
        private_key: int | None = None,
        pads: tuple[bytes, bytes] | None = None,
    ) -> None:
        """``ia``: initial payload (our BT handshake), sent RC4-encrypted in step 3.
        ``private_key`` / ``pads`` (PadA, PadC) fix the random parts for known-answer tests."""
        if len(info_hash) != 20:
            raise ValueError("info_hash must be 20 bytes")
        if len(ia) > MAX_IA_BYTES:
            raise ValueError(f"ia is {len(ia)} bytes; at most {MAX_IA_BYTES}")
        if pads is not None and any(len(p) > MAX_PAD_BYTES for p in pads):
            raise ValueError(f"pads are at most {MAX_PAD_BYTES} bytes")
        super().__init__(rng=rng, now=now, timeout_s=timeout_s, private_key=private_key,
                         state=MseState.AWAIT_YB)
        self._info_hash = bytes(info_hash)
        self._provide = _check_provide(provide)
        self._ia_out = bytes(ia)
        pad_a, self._pad_c = (_pad(rng), _pad(rng)) if pads is None else pads
        self._outbox += self.public_key + pad_a  # step 1
        self._vc_pattern = b""

    def _step(self, rest: memoryview) -> memoryview:
        st = self._state
        if st is MseState.AWAIT_YB:
            chunk, rest = self._need(rest, DH_KEY_BYTES)
            if looks_plaintext(bytes(self._buf if chunk is None else chunk)[:len(PLAIN_SIGNATURE)]):
                raise MseError(MseFailure.PLAINTEXT_ANSWER.value)  # a plaintext-only peer sent its BT handshake
            if chunk is not None:
                self._take_key(chunk)
                self._send_step3()
                self._state = MseState.SYNC_VC
            return rest
        if st is MseState.SYNC_VC:
            found, rest = self._sync(rest, self._vc_pattern, VC_SYNC_BYTES, MseFailure.VC_NOT_FOUND)
            if found:
                self._decrypt(self._vc_pattern)  # advance keyB past VC
                self._state = MseState.AWAIT_SELECT
            return rest
        if st is MseState.AWAIT_SELECT:
            chunk, rest = self._need(rest, 6)
            if chunk is not None:
                plain = self._decrypt(chunk)
                select = int.from_bytes(plain[:4], "big")
                if select not in (CRYPTO_PLAIN, CRYPTO_RC4) or not select & self._provide:
                    raise MseError(MseFailure.BAD_SELECT.value)
                self._method = select
                self._pad_len = int.from_bytes(plain[4:6], "big")
                if self._pad_len > MAX_PAD_BYTES:
                    raise MseError(MseFailure.BAD_PAD.value)
                self._state = MseState.AWAIT_PAD
                if self._pad_len == 0:
                    self._finish()
            return rest
        if st is MseState.AWAIT_PAD:
            chunk, rest = self._need(rest, self._pad_len)
            if chunk is not None:
                self._decrypt(chunk)  # PadD: content ignored
                self._finish()
            return rest
        raise AssertionError(st)  # pragma: no cover

    def _send_step3(self) -> None:
        s, skey = self._secret, self._info_hash
        key_a, key_b = derive_keys(s, skey)
        self._rc4 = Rc4Stream(key_a, key_b)
        self._vc_pattern = Rc4Stream(key_b, key_a).encrypt(VC)  # what B's E(VC) looks like
        obfuscated = bytes(a ^ b for a, b in zip(req2_hash(skey), _sha1(b"req3", s), strict=True))
        plain = (VC + self._provide.to_bytes(4, "big") + len(self._pad_c).to_bytes(2, "big") + self._pad_c
                 + len(self._ia_out).to_bytes(2, "big") + self._ia_out)
        self._outbox += _sha1(b"req1", s) + obfuscated + self._rc4.encrypt(plain)


class MseResponder(_MseHandshake):
    """Side B: an incoming connection for any of our torrents.

    ``lookup`` maps ``req2_hash(info_hash)`` to the info-hash (a dict's ``.get`` will do), so one
    listening port serves every torrent.  ``allow``: methods we accept; RC4 wins when both are common
    and ``prefer_rc4`` (else plaintext wins).
    """

    def __init__(
        self,
        lookup: Callable[[bytes], bytes | None],
        *,
        rng: random.Random,
        now: float,
        allow: int = CRYPTO_RC4 | CRYPTO_PLAIN,
        prefer_rc4: bool = True,
        timeout_s: float = MSE_TIMEOUT_S,
        private_key: int | None = None,
        pads: tuple[bytes, bytes] | None = None,
    ) -> None:
        """``private_key`` / ``pads`` (PadB, PadD) fix the random parts for known-answer tests."""
        if pads is not None and any(len(p) > MAX_PAD_BYTES for p in pads):
            raise ValueError(f"pads are at most {MAX_PAD_BYTES} bytes")
        super().__init__(rng=rng, now=now, timeout_s=timeout_s, private_key=private_key,
                         state=MseState.AWAIT_YA)
        self._lookup = lookup
        self._allow = _check_provide(allow)
        self._prefer_rc4 = prefer_rc4
        self._pads = pads
        self._req1 = b""
        self._ia_len = 0
        self._ia_in = b""

    def _ia(self) -> bytes:
        return self._ia_in

    def _step(self, rest: memoryview) -> memoryview:
        st = self._state
        if st is MseState.AWAIT_YA:
            chunk, rest = self._need(rest, DH_KEY_BYTES)
            if chunk is not None:
                self._take_key(chunk)
                pad_b = _pad(self._rng) if self._pads is None else self._pads[0]
                self._outbox += self.public_key + pad_b  # step 2
                self._req1 = _sha1(b"req1", self._secret)
                self._state = MseState.SYNC_REQ1
            return rest
        if st is MseState.SYNC_REQ1:
            found, rest = self._sync(rest, self._req1, REQ1_SYNC_BYTES, MseFailure.SYNC_NOT_FOUND)
            if found:
                self._state = MseState.AWAIT_SKEY
            return rest
        if st is MseState.AWAIT_SKEY:
            chunk, rest = self._need(rest, _SHA1_LEN)
            if chunk is not None:
                self._find_torrent(chunk)
                self._state = MseState.AWAIT_PROVIDE
            return rest
        if st is MseState.AWAIT_PROVIDE:
            chunk, rest = self._need(rest, len(VC) + 4 + 2)
            if chunk is not None:
                plain = self._decrypt(chunk)
                if plain[:8] != VC:
                    raise MseError(MseFailure.VC_NOT_FOUND.value)
                self._select(int.from_bytes(plain[8:12], "big"))
                self._pad_len = int.from_bytes(plain[12:14], "big")
                if self._pad_len > MAX_PAD_BYTES:
                    raise MseError(MseFailure.BAD_PAD.value)
                self._state = MseState.AWAIT_PAD
            return rest
        if st is MseState.AWAIT_PAD:
            chunk, rest = self._need(rest, self._pad_len + 2)  # PadC, then len(IA)
            if chunk is not None:
                self._ia_len = int.from_bytes(self._decrypt(chunk)[-2:], "big")
                if self._ia_len > MAX_IA_BYTES:
                    raise MseError(MseFailure.IA_TOO_LARGE.value)
                self._state = MseState.AWAIT_IA
                if self._ia_len == 0:
                    self._reply()
            return rest
        if st is MseState.AWAIT_IA:
            chunk, rest = self._need(rest, self._ia_len)
            if chunk is not None:
                self._ia_in = self._decrypt(chunk)  # IA is RC4 whatever the selection
                self._reply()
            return rest
        raise AssertionError(st)  # pragma: no cover

    def _find_torrent(self, chunk: bytes) -> None:
        req3 = _sha1(b"req3", self._secret)
        wanted = bytes(a ^ b for a, b in zip(chunk, req3, strict=True))
        info_hash = self._lookup(wanted)
        if info_hash is None or len(info_hash) != 20 or req2_hash(info_hash) != wanted:
            raise MseError(MseFailure.UNKNOWN_INFO_HASH.value)
        self._info_hash = bytes(info_hash)
        key_a, key_b = derive_keys(self._secret, self._info_hash)
        self._rc4 = Rc4Stream(key_b, key_a)

    def _select(self, provide: int) -> None:
        common = provide & self._allow
        if common & CRYPTO_RC4 and (self._prefer_rc4 or not common & CRYPTO_PLAIN):
            self._method = CRYPTO_RC4
        elif common & CRYPTO_PLAIN:
            self._method = CRYPTO_PLAIN
        else:
            raise MseError(MseFailure.NO_COMMON_METHOD.value)

    def _reply(self) -> None:
        assert self._rc4 is not None
        pad_d = _pad(self._rng) if self._pads is None else self._pads[1]
        self._outbox += self._rc4.encrypt(VC + self._method.to_bytes(4, "big")
                                          + len(pad_d).to_bytes(2, "big") + pad_d)  # step 4
        self._finish()
