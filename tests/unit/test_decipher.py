"""decipher.py: received RC4 bytes deciphered on one worker thread, in order, bounded."""

from __future__ import annotations

import random
import threading

from minibt.decipher import MAX_PENDING, Decipher
from minibt.mse import Rc4Stream


def test_bytes_come_back_deciphered_in_order_and_the_worker_is_bounded() -> None:
    woke = threading.Event()
    d: Decipher[str] = Decipher(woke.set)
    send, recv = Rc4Stream(b"a" * 20, b"b" * 20), Rc4Stream(b"b" * 20, b"a" * 20)
    rc4 = recv.in_place_decryptor()
    assert rc4 is not None
    plain = [random.Random(i).randbytes(70_000 + i) for i in range(3 * MAX_PENDING)]
    wire = [bytearray(send.encrypt(p)) for p in plain]
    got: list[bytes] = []
    keys: list[str] = []
    i = 0
    while len(got) < len(plain):
        while i < len(wire) and not d.full():
            d.submit(f"k{i}", rc4, wire[i])
            i += 1
        assert d.full() or i == len(wire)
        woke.wait(10)
        woke.clear()
        for key, buf, err in d.done():
            assert err is None
            keys.append(key)
            got.append(bytes(buf))
    d.close()
    assert got == plain and keys == [f"k{j}" for j in range(len(plain))]


def test_an_error_comes_back_with_its_key() -> None:
    woke = threading.Event()
    d: Decipher[int] = Decipher(woke.set)

    def boom(view: memoryview) -> None:
        raise ValueError("bad")

    d.submit(7, boom, bytearray(b"x"))
    assert woke.wait(10)
    ((key, _, err),) = d.done()
    d.close()
    assert key == 7 and isinstance(err, ValueError)
