"""sha1.py: nettle's and OpenSSL's SHA-1 through ctypes give hashlib's digests, the back end follows the
CPU, and a download never loads _hashlib."""

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


KINDS = ("nettle", "libcrypto")


def test_both_libraries_ship_with_debian_and_the_cpu_picks_the_first() -> None:
    # Debian / Raspberry Pi OS (and this CI) install libnettle8 (apt needs it) and libssl3 (python3 does)
    for kind in KINDS:
        assert sha1.hash_class(kind) is not None, kind
    assert sha1.implementation() == sha1.preference()[0]
    assert sha1.library() == (sha1.implementation(), sha1._libs[sha1.implementation()])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [0, 1, 55, 56, 63, 64, 65, 1000, 16384, 262144 + 7])
def test_every_kind_of_buffer_hashes_as_hashlib(kind: str, size: int) -> None:
    cls = sha1.hash_class(kind)
    data = random.Random(size).randbytes(size)
    want = hashlib.sha1(data).digest()
    kinds = [data, bytearray(data), memoryview(bytearray(data)), memoryview(data)]  # the last is read-only
    for buf in kinds:
        assert cls(buf).digest() == want
        assert sha1.sha1(buf).digest() == want
        assert cls(buf).hexdigest() == want.hex()


@pytest.mark.parametrize("kind", KINDS)
def test_split_updates_and_digests_along_the_way(kind: str) -> None:
    rng = random.Random(5)
    data = rng.randbytes(300_000)
    cuts = sorted(rng.sample(range(1, len(data)), 40))
    h, ref = sha1.hash_class(kind)(), hashlib.sha1()
    buf = bytearray(data)
    view = memoryview(buf)
    for i, (a, b) in enumerate(zip([0, *cuts], [*cuts, len(data)], strict=True)):
        part = (data[a:b], view[a:b], bytearray(data[a:b]), memoryview(data)[a:b])[i % 4]
        h.update(part)
        ref.update(data[a:b])
        assert h.digest() == ref.digest()  # digest() does not end the hash
    assert h.hexdigest() == hashlib.sha1(data).hexdigest()


@pytest.mark.parametrize("kind", KINDS)
def test_a_view_that_is_not_bytes_or_not_contiguous(kind: str) -> None:
    cls = sha1.hash_class(kind)
    words = memoryview(bytearray(range(256)) * 4).cast("I")  # itemsize 4: the byte count is nbytes
    assert cls(words).digest() == hashlib.sha1(words).digest()
    strided = memoryview(bytearray(range(256)))[::2]
    assert cls(strided).digest() == hashlib.sha1(bytes(strided)).digest()


@pytest.mark.parametrize(("text", "has"), [
    (b"processor\t: 0\nflags\t\t: fpu sse2 avx2 sha_ni vaes\n\nprocessor\t: 1\n", True),  # x86-64 with SHA-NI
    (b"processor\t: 0\nflags\t\t: fpu sse2 avx2 vaes\n", False),
    (b"processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32\n", True),  # Pi 5
    (b"processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n", False),  # Pi 4
    (b"processor\t: 0\nflags\t\t: sha1x\n\nprocessor\t: 1\nflags\t\t: sha_ni\n", False),  # the first CPU only
    (b"", False),
])
def test_cpu_has_sha1_reads_the_first_processor(tmp_path: Path, text: bytes, has: bool) -> None:
    f = tmp_path / "cpuinfo"
    f.write_bytes(text)
    assert sha1.cpu_has_sha1(str(f)) is has


def test_cpu_has_sha1_is_false_without_cpuinfo(tmp_path: Path) -> None:
    assert sha1.cpu_has_sha1(str(tmp_path / "missing")) is False


def test_preference_follows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(sha1, "cpu_has_sha1", lambda: True)
    assert sha1.preference() == ("nettle", "libcrypto")
    monkeypatch.setattr(sha1, "cpu_has_sha1", lambda: False)  # e.g. a Raspberry Pi 4: OpenSSL's assembly is faster
    assert sha1.preference() == ("libcrypto", "nettle")


def test_a_nettle_older_than_3_8_is_not_used() -> None:
    class Lib:
        def __init__(self, major: int, minor: int) -> None:
            self.nettle_version_major = lambda: major
            self.nettle_version_minor = lambda: minor

    assert sha1._nettle_recent(Lib(3, 8)) and sha1._nettle_recent(Lib(4, 0))
    assert not sha1._nettle_recent(Lib(3, 7)) and not sha1._nettle_recent(Lib(2, 9))
    assert not sha1._nettle_recent(object())  # before 3.1: no version functions


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


def test_falls_back_to_hashlib_without_either_library() -> None:
    code = (
        "from minibt import sha1\n"
        "sha1.LIBCRYPTO_NAMES = ('libcrypto-that-is-not-there.so',)\n"
        "sha1.NETTLE_NAMES = ('libnettle-that-is-not-there.so',)\n"
        "assert sha1.libcrypto() is None and sha1.libnettle() is None\n"
        "print(sha1.implementation(), sha1.sha1(b'abc').hexdigest(), sha1.library())\n"
    )
    assert _run(code) == "hashlib a9993e364706816aba3e25717850c26c9cd0d89d None"


@pytest.mark.parametrize("kind", KINDS)
def test_without_one_library_the_other_is_used(kind: str) -> None:
    names = "LIBCRYPTO_NAMES" if kind == "libcrypto" else "NETTLE_NAMES"
    code = (
        "from minibt import sha1, rc4\n"
        f"sha1.{names} = ('not-there.so',)\n"
        "print(sha1.implementation(), rc4.backend()[0], sha1.sha1(b'abc').hexdigest())\n"
    )
    other = "nettle" if kind == "libcrypto" else "libcrypto"
    assert _run(code) == f"{other} {other} a9993e364706816aba3e25717850c26c9cd0d89d"


def test_a_library_with_a_wrong_answer_is_not_used() -> None:
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
        "assert minibt.rc4.backend()[0] == sha1.implementation() != 'hashlib'\n"
        "print(sorted(m for m in ('_hashlib', 'hashlib', 'hmac', 'ssl', '_ssl') if m in sys.modules))\n"
    )
    assert _run(code) == "[]"


def test_one_library_serves_sha1_and_rc4() -> None:
    # MSE/PE's RC4 comes from the library SHA-1 loaded, so a process maps only one of them
    code = (
        "import minibt.mse\n"
        "from minibt import sha1, rc4\n"
        "assert rc4.backend()[0] == sha1.implementation()\n"
        "maps = open('/proc/self/maps').read()\n"
        "print(sha1.implementation(), 'libcrypto.so' in maps, 'libnettle.so' in maps)\n"
    )
    kind = sha1.implementation()
    assert _run(code) == f"{kind} {kind == 'libcrypto'} {kind == 'nettle'}"
