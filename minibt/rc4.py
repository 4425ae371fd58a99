"""RC4 keystreams for MSE/PE (mse.py), from OpenSSL: never a Python loop.

Two back ends, tried in this order on first use:

1. ``libcrypto``: OpenSSL's library (python3 on Debian and Raspberry Pi OS depends on libssl3),
   called through ctypes (``RC4_set_key``, ``RC4``), loaded once by ``sha1.libcrypto`` and shared
   with SHA-1.  No package to install and almost no memory: SHA-1 has already mapped the library
   (880 MiB/s on x86-64; the ``cryptography`` package costs +9.9 MiB for the same cipher).  The
   low-level RC4 functions are deprecated in OpenSSL 3 but still exported by Debian's build; the
   back end checks a published test vector before it is used.
2. ``cryptography`` (``hazmat.decrepit`` ARC4), the optional extra ``pip install 'minibt[mse]'``,
   for an OpenSSL built without RC4 (``no-rc4``/``no-deprecated``).

A back end is a factory: key -> a function that encrypts (or decrypts: RC4 is its own inverse) the
next bytes of that keystream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .sha1 import libcrypto


class Keystream(Protocol):
    """One RC4 keystream: XOR the next bytes of it into data (encrypt and decrypt are the same)."""

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        """A new buffer: ``data`` XOR the next ``len(data)`` keystream bytes."""
        ...

    def update_in_place(self, buf: memoryview) -> bool:
        """XOR the keystream into the writable ``buf`` itself; False (nothing done) if this back end cannot."""
        ...


Factory = Callable[[bytes], Keystream]

_RC4_KEY_BYTES = 2048  # sizeof(RC4_KEY) is 2 + 256 RC4_INTs: 1032 bytes with 4-byte ints; room to spare
_VECTOR = (b"Key", b"Plaintext", bytes.fromhex("bbf316e8d940af0ad3"))  # the published RC4 test vector


class _LibcryptoRc4:
    """RC4_set_key / RC4 of OpenSSL's libcrypto.  ctypes releases the GIL during each call."""

    __slots__ = ("_char", "_rc4", "_state")

    def __init__(self, set_key: Any, rc4: Any, key: bytes) -> None:
        ctypes = _ctypes()
        self._char = ctypes.c_char
        self._rc4 = rc4
        self._state = ctypes.create_string_buffer(_RC4_KEY_BYTES)
        set_key(self._state, len(key), key)

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        n = len(data)
        if not n:
            return b""
        out = bytearray(n)
        dst = (self._char * n).from_buffer(out)
        src = data if isinstance(data, bytes) else bytes(data)
        self._rc4(self._state, n, src, dst)
        del dst  # release the export before the bytearray is copied and freed
        return bytes(out)

    def update_in_place(self, buf: memoryview) -> bool:
        n = len(buf)
        if n:
            ptr = (self._char * n).from_buffer(buf)  # buf is writable and contiguous (else TypeError)
            self._rc4(self._state, n, ptr, ptr)
            del ptr
        return True


def _ctypes() -> Any:
    """The ctypes module, imported on first use (0.26 MiB of RSS after the download path's imports)."""
    import ctypes

    return ctypes


def _libcrypto() -> Factory | None:
    """RC4 from OpenSSL's libcrypto through ctypes, or None (not found, no RC4, wrong answer)."""
    ctypes = _ctypes()
    lib = libcrypto()
    if lib is None:
        return None
    try:
        set_key, rc4 = lib.RC4_set_key, lib.RC4
    except AttributeError:
        return None
    set_key.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p]
    set_key.restype = None
    rc4.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p]
    rc4.restype = None

    def factory(key: bytes, set_key: Any = set_key, rc4: Any = rc4) -> Keystream:
        return _LibcryptoRc4(set_key, rc4, bytes(key))

    key, plain, cipher = _VECTOR
    buf = bytearray(plain)
    factory(key).update_in_place(memoryview(buf))
    if factory(key).update(plain) == cipher and bytes(buf) == cipher:
        return factory
    return None


class _CryptographyRc4:
    __slots__ = ("_ctx",)

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        return bytes(self._ctx.update(data)) if len(data) else b""

    def update_in_place(self, buf: memoryview) -> bool:
        return False


def _cryptography() -> Factory | None:
    """RC4 from the ``cryptography`` package (extra minibt[mse]), or None without it."""
    try:
        from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4
        from cryptography.hazmat.primitives.ciphers import Cipher
    except ImportError:
        return None

    def factory(key: bytes) -> Keystream:
        return _CryptographyRc4(Cipher(ARC4(bytes(key)), mode=None).encryptor())

    return factory


BACKENDS: dict[str, Callable[[], Factory | None]] = {"libcrypto": _libcrypto, "cryptography": _cryptography}
_chosen: tuple[str, Factory] | None = None
_tried = False


def backend() -> tuple[str, Factory] | None:
    """(name, factory) of the first back end that works here, chosen once; None: no RC4 at all."""
    global _chosen, _tried
    if not _tried:
        _tried = True
        for name, load in BACKENDS.items():
            factory = load()
            if factory is not None:
                _chosen = (name, factory)
                break
    return _chosen
