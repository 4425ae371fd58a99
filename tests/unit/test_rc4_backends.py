"""rc4.py: every RC4 back end gives the published keystream and the same bytes as the others."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from test_mse import spec_rc4

from minibt import rc4, sha1

ROOT = str(Path(__file__).resolve().parents[2])


def loaded() -> dict[str, rc4.Factory]:
    got = {name: load() for name, load in rc4.BACKENDS.items()}
    return {name: f for name, f in got.items() if f is not None}


def test_both_libraries_give_rc4_and_sha1s_comes_first() -> None:
    # Debian / Raspberry Pi OS: nettle and libcrypto (one of them loaded by sha1.py) export RC4, so no
    # package is needed
    assert {"nettle", "libcrypto"} <= set(loaded())
    chosen = rc4.backend()
    assert chosen is not None and chosen[0] == sha1.implementation()


@pytest.mark.parametrize("name", list(rc4.BACKENDS))
def test_back_end_matches_the_textbook_keystream_across_split_updates(name: str) -> None:
    factory = loaded().get(name)
    if factory is None:
        pytest.skip(f"{name} back end not installed here")
    rng = random.Random(7)
    key = rng.randbytes(20)
    data = rng.randbytes(5000)
    want = bytes(a ^ b for a, b in zip(data, spec_rc4(key, len(data), skip=0), strict=True))
    ks = factory(key)
    cuts = sorted(rng.sample(range(1, len(data)), 12))
    parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    got = b"".join(ks.update(memoryview(p) if i % 2 else bytearray(p)) for i, p in enumerate(parts))
    assert got == want
    assert ks.update(b"") == b""


@pytest.mark.parametrize("name", list(rc4.BACKENDS))
def test_in_place_update_continues_the_same_keystream(name: str) -> None:
    factory = loaded().get(name)
    if factory is None:
        pytest.skip(f"{name} back end not installed here")
    key, data = bytes(range(1, 21)), random.Random(8).randbytes(3000)
    want = factory(key).update(data)
    ks = factory(key)
    buf = bytearray(data)
    view = memoryview(buf)
    head = ks.update(view[:1000])  # copying, then in place where the back end can
    if ks.update_in_place(view[1000:]):
        assert head + bytes(buf[1000:]) == want
    else:
        assert name == "cryptography" and bytes(buf) == data  # untouched: the caller copies instead
    assert ks.update_in_place(memoryview(bytearray())) is (name != "cryptography")


def test_back_ends_agree_on_a_long_stream() -> None:
    factories = loaded()
    if len(factories) < 2:
        pytest.skip("only one back end installed")
    key = bytes(range(20))
    data = random.Random(3).randbytes(1 << 20)
    outs = {name: f(key).update(data) for name, f in factories.items()}
    assert len(set(outs.values())) == 1 and next(iter(outs.values())) != data


def test_a_back_end_with_a_wrong_answer_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    # a library whose RC4 gave other bytes than the published vector is skipped, not trusted
    assert rc4._libcrypto() is not None and rc4._nettle() is not None
    monkeypatch.setattr(rc4, "_VECTOR", (b"Key", b"Plaintext", bytes(9)))
    assert rc4._libcrypto() is None and rc4._nettle() is None


def test_no_back_end_means_no_rc4_and_a_clear_error() -> None:
    code = (
        "import sys; sys.modules['cryptography'] = None\n"
        "from minibt import rc4, mse\n"
        "rc4.BACKENDS['libcrypto'] = rc4.BACKENDS['nettle'] = lambda: None\n"
        "assert rc4.backend() is None and not mse.rc4_available()\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                         env={"PYTHONPATH": ROOT}, check=True)
    assert out.stdout.strip() == "ok"
