"""sha1.py: OpenSSL's SHA-1 through ctypes gives hashlib's digests, and a download never loads _hashlib."""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from minibt import sha1

ROOT = str(Path(__file__).resolve().parents[2])


def test_libcrypto_is_the_back_end_where_python_links_openssl() -> None:
    # Debian / Raspberry Pi OS (and this CI) ship libcrypto with the low-level SHA-1 functions
    assert sha1.implementation() == "libcrypto"


@pytest.mark.parametrize("size", [0, 1, 55, 56, 63, 64, 65, 1000, 16384, 262144 + 7])
def test_every_kind_of_buffer_hashes_as_hashlib(size: int) -> None:
    data = random.Random(size).randbytes(size)
    want = hashlib.sha1(data).digest()
    kinds = [data, bytearray(data), memoryview(bytearray(data)), memoryview(data)]  # the last is read-only
    for kind in kinds:
        assert sha1.sha1(kind).digest() == want
        assert sha1.sha1(kind).digest() == want
        assert sha1.sha1(kind).hexdigest() == want.hex()


def test_split_updates_and_digests_along_the_way() -> None:
    rng = random.Random(5)
    data = rng.randbytes(300_000)
    cuts = sorted(rng.sample(range(1, len(data)), 40))
    h, ref = sha1.sha1(), hashlib.sha1()
    buf = bytearray(data)
    view = memoryview(buf)
    for i, (a, b) in enumerate(zip([0, *cuts], [*cuts, len(data)], strict=True)):
        part = (data[a:b], view[a:b], bytearray(data[a:b]), memoryview(data)[a:b])[i % 4]
        h.update(part)
        ref.update(data[a:b])
        assert h.digest() == ref.digest()  # digest() does not end the hash
    assert h.hexdigest() == hashlib.sha1(data).hexdigest()


def test_a_view_that_is_not_bytes_or_not_contiguous() -> None:
    words = memoryview(bytearray(range(256)) * 4).cast("I")  # itemsize 4: the byte count is nbytes
    assert sha1.sha1(words).digest() == hashlib.sha1(words).digest()
    strided = memoryview(bytearray(range(256)))[::2]
    assert sha1.sha1(strided).digest() == hashlib.sha1(bytes(strided)).digest()


def test_hash_threads_share_nothing() -> None:
    # each hash object has its own context: the hash pool's threads run at once, the GIL let go per call
    datas = [random.Random(i).randbytes(200_000 + i) for i in range(8)]
    got: dict[int, bytes] = {}

    def work(i: int) -> None:
        h = sha1.sha1()
        for o in range(0, len(datas[i]), 4096):
            h.update(memoryview(datas[i])[o : o + 4096])
        got[i] = h.digest()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(datas))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == {i: hashlib.sha1(d).digest() for i, d in enumerate(datas)}


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": ROOT}, check=True)
    return out.stdout.strip()


def test_falls_back_to_hashlib_without_a_libcrypto() -> None:
    code = (
        "from minibt import sha1\n"
        "sha1.LIBCRYPTO_NAMES = ('libcrypto-that-is-not-there.so',)\n"
        "assert sha1.libcrypto() is None\n"
        "print(sha1.implementation(), sha1.sha1(b'abc').hexdigest())\n"
    )
    assert _run(code) == "hashlib a9993e364706816aba3e25717850c26c9cd0d89d"


def test_a_libcrypto_with_a_wrong_answer_is_not_used() -> None:
    # the back end hashes the published vectors first; one that disagrees is never trusted
    code = (
        "from minibt import sha1\n"
        "sha1._VECTORS = ((b'abc', '00' * 20),)\n"
        "print(sha1.implementation())\n"
    )
    assert _run(code) == "hashlib"


def test_a_download_never_initialises_openssl() -> None:
    # importing _hashlib (hashlib, hmac, secrets, ssl) costs 3.5 MiB of RSS: the download path,
    # its piece checks, the info-hash and MSE's keys must not pull it in
    want = hashlib.sha1(bytes(range(256)) * 1024).hexdigest()
    code = (
        "import sys\n"
        "import minibt.cli, minibt.client, minibt.session, minibt.workers, minibt.mse, minibt.rc4, minibt.dhtstore\n"
        "from minibt import sha1\n"
        "data = bytes(range(256)) * 1024\n"
        f"assert sha1.sha1(data).digest() == bytes.fromhex('{want}')\n"
        "assert minibt.rc4.backend()[0] == 'libcrypto'\n"
        "print(sorted(m for m in ('_hashlib', 'hashlib', 'hmac', 'ssl', '_ssl') if m in sys.modules))\n"
    )
    assert _run(code) == "[]"
