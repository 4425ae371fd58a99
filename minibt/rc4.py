"""RC4 keystreams for MSE/PE (mse.py), from a C library: never a Python loop.

Three back ends.  The first tried is the library sha1.py loaded for SHA-1 (``sha1.library``), so a
process maps one of them; then the other; then the package:

- ``nettle``: ``nettle_arcfour_set_key``/``nettle_arcfour_crypt`` of libnettle8, which Debian and
  Raspberry Pi OS always install (apt needs it through GnuTLS).
- ``libcrypto``: OpenSSL's library (python3 on Debian and Raspberry Pi OS depends on libssl3),
  through ctypes (``RC4_set_key``, ``RC4``).  The low-level RC4 functions are deprecated in OpenSSL 3
  but still exported by Debian's build.
- ``cryptography`` (``hazmat.decrepit`` ARC4), the optional extra ``pip install 'minibt[mse]'``, for
  a system with neither (it costs +9.9 MiB for the same cipher).

The two libraries are loaded and shared by sha1.py: no package to install and almost no memory
(880 MiB/s on x86-64 for OpenSSL's RC4).  Each back end checks a published test vector before it is
used.

A back end is a factory: key -> a function that encrypts (or decrypts: RC4 is its own inverse) the
next bytes of that keystream.
"""

from __future__ import annotations

from collections.abc import Callable

from . import sha1

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol

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


class _LibraryRc4:
    """RC4 of a C library: OpenSSL's RC4_set_key / RC4 or nettle's arcfour_set_key / arcfour_crypt
    (``nettle``: its argument order).  ctypes releases the GIL during each call."""

    __slots__ = ("_char", "_nettle", "_rc4", "_state")

    def __init__(self, set_key: Any, rc4: Any, key: bytes, nettle: bool) -> None:
        ctypes = _ctypes()
        self._char = ctypes.c_char
        self._rc4 = rc4
        self._nettle = nettle
        self._state = ctypes.create_string_buffer(_RC4_KEY_BYTES)
        set_key(self._state, len(key), key)  # (state, length, key) in both

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        n = len(data)
        if not n:
            return b""
        out = bytearray(n)
        dst = (self._char * n).from_buffer(out)
        src = data if isinstance(data, bytes) else bytes(data)
        if self._nettle:
            self._rc4(self._state, n, dst, src)
        else:
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


def _library(kind: str) -> Factory | None:
    """RC4 of library ``kind`` ("nettle" or "libcrypto", sha1.py loads it), or None (not found, no
    RC4, wrong answer)."""
    ctypes = _ctypes()
    lib = sha1.libnettle() if kind == "nettle" else sha1.libcrypto()
    if lib is None:
        return None
    nettle = kind == "nettle"
    try:
        set_key, rc4 = (lib.nettle_arcfour_set_key, lib.nettle_arcfour_crypt) if nettle else (lib.RC4_set_key, lib.RC4)
    except AttributeError:
        return None
    set_key.argtypes = [ctypes.c_void_p, ctypes.c_size_t if nettle else ctypes.c_int, ctypes.c_char_p]
    set_key.restype = None
    rc4.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p]
    rc4.restype = None

    def factory(key: bytes, set_key: Any = set_key, rc4: Any = rc4) -> Keystream:
        return _LibraryRc4(set_key, rc4, bytes(key), nettle)

    key, plain, cipher = _VECTOR
    buf = bytearray(plain)
    factory(key).update_in_place(memoryview(buf))
    if factory(key).update(plain) == cipher and bytes(buf) == cipher:
        return factory
    return None


def _nettle() -> Factory | None:
    return _library("nettle")


def _libcrypto() -> Factory | None:
    return _library("libcrypto")


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


BACKENDS: dict[str, Callable[[], Factory | None]] = {
    "nettle": _nettle, "libcrypto": _libcrypto, "cryptography": _cryptography,
}
_chosen: tuple[str, Factory] | None = None
_tried = False


def backend() -> tuple[str, Factory] | None:
    """(name, factory) of the first back end that works here, chosen once; None: no RC4 at all."""
    global _chosen, _tried
    if not _tried:
        _tried = True
        loaded = sha1.library()
        names = sorted(BACKENDS, key=lambda name: loaded is None or name != loaded[0])  # SHA-1's library first
        for name in names:
            factory = BACKENDS[name]()
            if factory is not None:
                _chosen = (name, factory)
                break
    return _chosen
