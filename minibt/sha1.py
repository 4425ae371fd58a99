"""SHA-1 (piece checks, info-hashes, MSE keys, DHT tokens): OpenSSL's libcrypto called directly.

hashlib would do, but importing its C module ``_hashlib`` initialises OpenSSL as a whole (its
configuration file, error strings, the provider and algorithm tables): on this project's x86-64 VM
that touched 3.5 MiB of pages (measured with /proc/self/status, 2026-12-06), a tenth of a download's
peak RSS.  The low-level ``SHA1_Init``/``SHA1_Update``/``SHA1_Final`` of the same library need none of
it: ctypes, the ``dlopen`` and the first hash cost 2.1 MiB, 0.5 of it ctypes, which uTP and encryption
load anyway.  It is the same code: OpenSSL's assembly, picked by ``OPENSSL_cpuid_setup``, which runs
as the library's constructor (SHA-NI on x86-64, the ARMv8 crypto extensions on a Pi 5); 2.1 GB/s
here, as hashlib.  ctypes lets the GIL go during each call, so the hash threads run beside the loop
as they do with hashlib.

These functions are deprecated in OpenSSL 3 but still exported (Debian and Raspberry Pi OS build
with them); the back end hashes a published test vector before it is used.  Where the library or the
functions are missing, or give a wrong answer, :func:`sha1` is ``hashlib.sha1``, imported then.

:func:`libcrypto` is the loaded library, shared with ``rc4.py`` (RC4 for MSE/PE) so both map it once
and neither initialises OpenSSL.
"""

from __future__ import annotations

from typing import Any, Protocol

LIBCRYPTO_NAMES = ("libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.so", "libcrypto.dylib")
_CTX_BYTES = 128  # sizeof(SHA_CTX) is 96 (5 + 2 + 16 + 1 ints): room to spare
_VECTORS = (  # FIPS 180-2 appendix A.1 and A.2
    (b"abc", "a9993e364706816aba3e25717850c26c9cd0d89d"),
    (b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", "84983e441c3bd26ebaae4aa1f95129e5e54670f1"),
)


class Hash(Protocol):
    """A running SHA-1: hashlib's ``sha1`` object, as far as minibt uses it."""

    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...

    def digest(self) -> bytes:
        """The digest of everything so far; the object can go on taking data."""
        ...

    def hexdigest(self) -> str: ...


_lib: Any = None  # the CDLL once loaded; False: looked for and not found
_factory: Any = None  # data -> Hash, chosen on first use


def libcrypto() -> Any:
    """OpenSSL's libcrypto through ctypes (loaded once), or None where there is none to load."""
    global _lib
    if _lib is None:
        import ctypes

        _lib = False
        for name in LIBCRYPTO_NAMES:
            try:
                _lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
    return _lib or None


class _LibcryptoSha1:
    """SHA-1 through ``SHA1_Init``/``SHA1_Update``/``SHA1_Final`` on a private context buffer."""

    __slots__ = ("_ctx",)

    def __init__(self, data: bytes | bytearray | memoryview = b"") -> None:
        self._ctx = _api.buffer(_CTX_BYTES)
        _api.init(self._ctx)
        if len(data):
            self.update(data)

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        if isinstance(data, bytes):
            _api.update(self._ctx, data, len(data))
            return
        view = data if isinstance(data, memoryview) else memoryview(data)
        n = view.nbytes
        if not n:
            return
        if view.readonly or not view.c_contiguous:
            _api.update(self._ctx, bytes(view), n)  # rare (every caller passes bytes or a writable buffer)
            return
        ptr = (_api.char * n).from_buffer(view)
        _api.update(self._ctx, ptr, n)
        del ptr  # release the export

    def digest(self) -> bytes:
        ctx = _api.buffer(self._ctx.raw)  # SHA1_Final ends a context: finish a copy, as hashlib does
        out = _api.buffer(20)
        _api.final(out, ctx)
        raw: bytes = out.raw
        return raw[:20]

    def hexdigest(self) -> str:
        return self.digest().hex()


class _Api:
    """The three functions and the ctypes helpers the hash objects call."""

    __slots__ = ("buffer", "char", "final", "init", "update")

    def __init__(self, lib: Any) -> None:
        import ctypes

        self.init, self.update, self.final = lib.SHA1_Init, lib.SHA1_Update, lib.SHA1_Final
        self.init.argtypes = [ctypes.c_void_p]
        self.update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        self.final.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.init.restype = self.update.restype = self.final.restype = ctypes.c_int
        self.buffer = ctypes.create_string_buffer
        self.char = ctypes.c_char


_api: Any = None


def _passes(factory: Any) -> bool:
    """The vectors, whole, split and through a writable view, and digest() not ending the hash."""
    for data, want in _VECTORS:
        h = factory(data[:1])
        h.update(memoryview(bytearray(data[1:5])))
        first = h.digest()
        h.update(bytearray(data[5:]))
        if factory(data).hexdigest() != want or h.hexdigest() != want or first != factory(data[:5]).digest():
            return False
    return True


def _choose() -> Any:
    """The libcrypto back end if it loads and passes; else hashlib's."""
    global _api
    lib = libcrypto()
    if lib is not None:
        try:
            _api = _Api(lib)
        except AttributeError:  # an OpenSSL built without the deprecated functions
            _api = None
        if _api is not None and _passes(_LibcryptoSha1):
            return _LibcryptoSha1
        _api = None
    import hashlib

    return hashlib.sha1


def implementation() -> str:
    """Which SHA-1 this process uses: "libcrypto" or "hashlib" (chosen on first use)."""
    sha1()
    return "libcrypto" if _factory is _LibcryptoSha1 else "hashlib"


def sha1(data: bytes | bytearray | memoryview = b"") -> Hash:
    """A new SHA-1, fed ``data``: the drop-in for ``hashlib.sha1``."""
    global _factory
    if _factory is None:
        _factory = _choose()
    h: Hash = _factory(data)
    return h
